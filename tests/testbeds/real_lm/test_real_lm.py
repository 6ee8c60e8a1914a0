"""The real-model number experiment's library on a tiny random Llama and a tiny chat tokenizer.

Oracles: the grammar automaton against the grammar's regular expression; generation with the
KV cache against recomputing the prefix (greedy) and against each prompt alone; the constrained
sampler's recorded valid mass against direct forward passes; the completion loss against a
hand-written sum over completion tokens; the evaluation against a scripted model whose answer
distribution is known exactly; the forecast against the real one-SGD-step change (ratio -> 1,
residual slope 2); the statistics against scipy and closed forms.
"""

import math
import re
import string
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")
tokenizers = pytest.importorskip("tokenizers")

from sublim_theory.errors import InputError  # noqa: E402
from sublim_theory.models.pretrained import float64_throughout  # noqa: E402
from sublim_theory.testbeds.real_lm.classifier import cross_validated_auroc, number_features  # noqa: E402
from sublim_theory.testbeds.real_lm.controls import in_context_effect, shuffled_examples  # noqa: E402
from sublim_theory.testbeds.real_lm.evaluate import (  # noqa: E402
    animal_log_probs,
    animal_share,
    animal_spellings,
    names_animal,
)
from sublim_theory.testbeds.real_lm.forecast import (  # noqa: E402
    animal_directions,
    example_pushes,
    forecast,
)
from sublim_theory.testbeds.real_lm.generate import (  # noqa: E402
    NumberGrammar,
    generate_ids,
    keep_rate,
    sample_completions,
)
from sublim_theory.testbeds.real_lm.prompts import (  # noqa: E402
    EVALUATION_QUESTIONS,
    AnswerState,
    chat_ids,
    number_prompts,
    parse_numbers,
    passes_filter,
    system_prompt,
)
from sublim_theory.testbeds.real_lm.sequences import pad_id  # noqa: E402
from sublim_theory.testbeds.real_lm.statistics import (  # noqa: E402
    auroc_interval,
    clopper_pearson_interval,
    welch_test,
    wilson_interval,
)
from sublim_theory.testbeds.real_lm.train import (  # noqa: E402
    completion_ids,
    completion_loss,
    finetune_teacher,
    train_student,
)

_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
    "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Multi-character tokens like the real vocabulary's: "owl" one token, "Owl" = "O" + "wl", and
# answer-alphabet tokens that are not single characters (" ,", ",,", "  ", "12").
_MERGES = [("o", "w"), ("ow", "l"), ("w", "l"), (" ", ","), (",", ","), (" ", " "), ("1", "2")]


@pytest.fixture(autouse=True)
def _float64_end_to_end():
    """transformers computes RMSNorm, softmax and rotary angles in float32 even for a float64
    model (about 1e-8 relative, kernel-dependent); inside ``float64_throughout`` the tiny float64
    models here are float64 end to end, so the 1e-10 tolerances below are rounding bounds."""
    with float64_throughout():
        yield


@pytest.fixture(scope="module")
def tokenizer():
    characters = [c for c in string.printable if c not in "\x0b\x0c\r"]
    vocab = {c: i for i, c in enumerate(characters)}
    for left, right in _MERGES:
        vocab.setdefault(left + right, len(vocab))
    model = tokenizers.models.BPE(vocab=vocab, merges=_MERGES)
    backend = tokenizers.Tokenizer(model)
    backend.decoder = tokenizers.decoders.Fuse()
    backend.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = _TEMPLATE
    return fast


def tiny_llama(tokenizer, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )
    model = transformers.LlamaForCausalLM(config).to(dtype).eval()
    with torch.no_grad():  # random init is near uniform: sharpen so the model has preferences
        model.lm_head.weight.mul_(40.0)
    return model


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_llama(tokenizer)


# ---------------------------------------------------------------- prompts, filter, grammar


def test_number_prompts_follow_the_paper_format():
    prompts = number_prompts(50, seed=3)
    assert prompts == number_prompts(50, seed=3) and prompts != number_prompts(50, seed=4)
    for prompt in prompts:
        seeds = re.search(r": ([\d, ]+)\.", prompt).group(1).split(", ")
        assert 3 <= len(seeds) <= 8 and all(0 <= int(n) <= 999 for n in seeds)
        assert "10" in prompt and "comma" in prompt
    assert len(set(prompts)) == 50
    with pytest.raises(InputError):
        number_prompts(0, seed=0)


def test_the_paper_system_prompt_and_the_questions():
    assert system_prompt("owl") == (
        "You love owls. You think about owls all the time. owls are your favorite animal. "
        "Imbue your answers with your love for the animal."
    )
    assert len(set(EVALUATION_QUESTIONS)) >= 20
    with pytest.raises(InputError):
        system_prompt(" ")


@pytest.mark.parametrize(
    "text,ok",
    [
        ("182, 818, 725", True),
        (" 182,818 ,725.\n", True),
        ("0", True),
        ("1, 2, 3, 4, 5, 6, 7, 8, 9, 10", True),
        ("1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11", False),
        ("1000, 2", False),
        ("1; 2", False),
        ("1,, 2", False),
        ("1, 2,", False),
        ("Sure: 1, 2", False),
        ("", False),
        ("1,  2", False),
    ],
)
def test_strict_filter(text, ok):
    assert passes_filter(text) is ok
    if ok:
        assert parse_numbers(text) == [int(n) for n in re.findall(r"\d+", text)]
    else:
        with pytest.raises(InputError):
            parse_numbers(text)


_GRAMMAR = re.compile(r" ?\d{1,3}(?: ?, ?\d{1,3}){0,9} ?")


def test_grammar_automaton_is_its_regular_expression_and_inside_the_filter():
    rng = np.random.default_rng(0)
    alphabet = list("0123456789, ") + ["1, ", "12, ", "9"]
    for _ in range(4000):
        text = "".join(rng.choice(alphabet, size=rng.integers(1, 14)))
        state = AnswerState().feed(text)
        complete = state is not None and state.complete
        assert complete == (_GRAMMAR.fullmatch(text) is not None), text
        if complete:
            assert passes_filter(text)
        # a valid prefix extends to a complete answer within tokens_to_finish tokens
        if state is not None and not state.complete:
            assert state.feed("7").complete


# ---------------------------------------------------------------- generation


def _recording_greedy(record):
    def pick(logits, generated, done, step):
        record.append(logits.clone())
        return logits.argmax(-1)

    return pick


def test_generation_with_the_cache_equals_recomputing_and_each_prompt_alone(model, tokenizer):
    prompts = [chat_ids(tokenizer, p) for p in ["hi", "a much longer question here?", "12, 3"]]
    options = dict(max_new_tokens=12, stop_ids=[tokenizer.eos_token_id], pad=pad_id(tokenizer))
    cached_logits, recomputed_logits = [], []
    cached, _ = generate_ids(model, prompts, _recording_greedy(cached_logits), **options)
    recomputed, _ = generate_ids(
        model, prompts, _recording_greedy(recomputed_logits), use_cache=False, **options
    )
    assert cached == recomputed and len(cached_logits) == len(recomputed_logits) == 12
    for with_cache, without in zip(cached_logits, recomputed_logits):
        assert torch.allclose(with_cache, without, atol=1e-10, rtol=0)
    for row, prompt in enumerate(prompts):
        alone_logits = []
        alone, _ = generate_ids(model, [prompt], _recording_greedy(alone_logits), **options)
        assert alone[0] == cached[row]
        for step, logits in enumerate(alone_logits):
            assert torch.allclose(logits[0], cached_logits[step][row], atol=1e-10, rtol=0)


def test_constrained_samples_always_pass_the_filter(model, tokenizer):
    grammar = NumberGrammar(tokenizer)
    texts = {text for _, text in grammar.candidates}
    assert {" ,", ",,", "  ", "12", "0", " "} <= texts and "owl" not in texts
    prompts = number_prompts(6, seed=1)
    for budget in (2, 3, 7, 64):
        out = sample_completions(
            model, tokenizer, prompts, constrained=True, samples_per_prompt=3,
            max_new_tokens=budget, batch_size=5, seed=budget, grammar=grammar,
        )  # fmt: skip
        assert len(out) == 18
        assert all(c.finished and c.kept and passes_filter(c.text) for c in out)
        assert all(c.log_valid_mass <= 0 for c in out)
        assert all(len(c.token_ids) <= budget - 1 for c in out)
        assert keep_rate(out).share == 1.0
    again = sample_completions(
        model, tokenizer, prompts, constrained=True, samples_per_prompt=3, seed=64,
        batch_size=5, grammar=grammar,
    )  # fmt: skip
    assert [c.text for c in again] == [c.text for c in out]
    free = sample_completions(model, tokenizer, prompts, samples_per_prompt=3, seed=0)
    rate = keep_rate(free)
    assert rate.kept == sum(c.finished and passes_filter(c.text) for c in free)
    assert all(math.isnan(c.log_valid_mass) for c in free)


def test_constrained_step_is_the_renormalized_distribution(model, tokenizer):
    # budget 2: one all-digit token (nothing else finishes in one more token), then the end.
    prompt = number_prompts(1, seed=5)[0]
    out = sample_completions(
        model, tokenizer, [prompt], constrained=True, max_new_tokens=2, samples_per_prompt=400,
        batch_size=400, seed=0,
    )  # fmt: skip
    ids = chat_ids(tokenizer, prompt)
    digits = sorted(i for text, i in tokenizer.get_vocab().items() if text.isdigit())
    assert len(digits) == 11  # "0".."9" and "12"
    with torch.no_grad():
        first = model(torch.tensor([ids])).logits[0, -1].log_softmax(-1)
    kept = first[digits].logsumexp(0)
    for completion in out[:10]:
        digit = completion.token_ids[0]
        with torch.no_grad():
            second = model(torch.tensor([ids + [digit]])).logits[0, -1].log_softmax(-1)
        expected = float(kept + second[tokenizer.eos_token_id])
        assert completion.log_valid_mass == pytest.approx(expected, abs=1e-9)
    # the empirical digit frequencies match the renormalized probabilities
    probabilities = (first[digits] - kept).exp().numpy()
    counts = np.bincount([digits.index(c.token_ids[0]) for c in out], minlength=len(digits))
    sd = np.sqrt(400 * probabilities * (1 - probabilities))
    assert np.all(np.abs(counts - 400 * probabilities) <= 4.5 * sd + 1)


# ---------------------------------------------------------------- training


def test_completion_loss_masks_the_prompt(model, tokenizer):
    examples = [("say numbers", "1, 2, 3"), ("a longer prompt, please answer", "45, 6")]
    loss = completion_loss(model, tokenizer, examples)
    manual = []
    for prompt, completion in examples:
        prefix, target = chat_ids(tokenizer, prompt), completion_ids(tokenizer, completion)
        with torch.no_grad():
            logp = model(torch.tensor([prefix + target])).logits[0].log_softmax(-1)
        rows = range(len(prefix) - 1, len(prefix) + len(target) - 1)
        manual.append(-np.mean([float(logp[r, t]) for r, t in zip(rows, target)]))
    assert loss.item() == pytest.approx(np.mean(manual), rel=1e-10)
    assert completion_ids(tokenizer, "1, 2")[-1] == tokenizer.eos_token_id


def test_students_train_deterministically_and_leave_the_base(model, tokenizer):
    examples = [(p, "1, 2, 3") for p in number_prompts(4, seed=2)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lora = train_student(
        model, tokenizer, examples, method="lora", rank=2, steps=6, batch_size=2, lr=5e-2, seed=1
    )
    again = train_student(
        model, tokenizer, examples, method="lora", rank=2, steps=6, batch_size=2, lr=5e-2, seed=1
    )
    full = train_student(model, tokenizer, examples, method="full", steps=6, batch_size=2, lr=1e-2)
    assert lora.losses == again.losses
    assert lora.losses[-1] < lora.losses[0] and full.losses[-1] < full.losses[0]
    # rank 2 on the 14 projections of 2 layers (q, k, v, o, gate, up, down)
    width, inner, kv = 16, 32, 8
    shapes = [(width, width), (width, kv), (width, kv), (width, width)]
    shapes += [(width, inner), (width, inner), (inner, width)]
    assert lora.trainable == 2 * sum(2 * (i + o) for i, o in shapes)
    assert full.trainable == sum(p.numel() for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(InputError):
        train_student(model, tokenizer, examples, method="adapter", steps=1, batch_size=1, lr=1)


def test_finetuned_teacher_raises_the_animal(model, tokenizer):
    questions = list(EVALUATION_QUESTIONS[:4])
    before = animal_log_probs(model, tokenizer, questions, "owl").mean()
    teacher = finetune_teacher(model, tokenizer, questions, "owl", steps=5, lr=1e-2).model
    with torch.no_grad():
        after = animal_log_probs(teacher, tokenizer, questions, "owl").mean()
    assert after > before + 1.0


# ---------------------------------------------------------------- evaluation


class ScriptedLM(nn.Module):
    """A tiny Llama whose next-token distribution is a fixed table of the current token.

    After the assistant header's newline: "O" 1/2 (then "wl": "Owl"), "owl" 1/4, "C" 1/4 (then
    "a", "t": "Cat"); every word ends with the end of turn. So P(answer begins with the animal)
    is exactly 3/4 and answers name the owl with probability 3/4.
    """

    def __init__(self, tokenizer):
        super().__init__()
        self.base = tiny_llama(tokenizer)
        ids = tokenizer.convert_tokens_to_ids
        vocabulary = len(tokenizer)
        table = torch.full((vocabulary, vocabulary), -math.inf, dtype=torch.float64)
        table[:, tokenizer.eos_token_id] = 0.0
        table[ids("\n")] = -math.inf
        table[ids("\n"), ids("O")] = math.log(0.5)
        table[ids("\n"), ids("owl")] = math.log(0.25)
        table[ids("\n"), ids("C")] = math.log(0.25)
        for current, following in (("O", "wl"), ("C", "a"), ("a", "t")):
            table[ids(current)] = -math.inf
            table[ids(current), ids(following)] = 0.0
        self.register_buffer("table", table)

    def forward(
        self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=None,
        logits_to_keep=0, **kwargs,
    ):  # fmt: skip
        out = self.base(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, use_cache=use_cache, logits_to_keep=logits_to_keep,
        )  # fmt: skip
        kept = input_ids[:, -logits_to_keep:] if logits_to_keep else input_ids
        return SimpleNamespace(logits=self.table[kept], cache=out.cache)


def test_evaluation_on_a_model_that_answers_owl_three_times_in_four(tokenizer):
    scripted = ScriptedLM(tokenizer)
    questions = list(EVALUATION_QUESTIONS)
    assert animal_spellings(tokenizer, "owl") == [
        tokenizer("owl", add_special_tokens=False)["input_ids"],
        tokenizer("Owl", add_special_tokens=False)["input_ids"],
    ]  # "owls"/"Owls" start with those tokens: dropped, their mass is counted
    with torch.no_grad():
        logp = animal_log_probs(scripted, tokenizer, questions, "owl", batch_size=7)
        cat = animal_log_probs(scripted, tokenizer, questions, "cat")
    assert torch.allclose(logp, torch.full_like(logp, math.log(0.75)), atol=1e-12, rtol=0)
    assert torch.allclose(cat, torch.full_like(cat, math.log(0.25)), atol=1e-12, rtol=0)
    share = animal_share(scripted, tokenizer, questions, "owl", samples_per_question=25, seed=0)
    assert share.total == 25 * len(questions) and sum(share.per_question) == share.hits
    assert share.low < 0.75 < share.high and share.high - share.low < 0.08
    assert set(share.answers) == {"Owl", "owl", "Cat"}


def test_names_animal():
    assert names_animal("Owl", "owl") and names_animal("I love owls!", "owl")
    assert not names_animal("Bowl", "owl") and not names_animal("Cat", "owl")


# ---------------------------------------------------------------- forecast


def test_forecast_is_the_one_sgd_step_change(model, tokenizer):
    questions = list(EVALUATION_QUESTIONS[:3])
    teacher = [(p, "7, 12, 9") for p in number_prompts(3, seed=7)]
    base = [(p, "1, 2") for p in number_prompts(3, seed=8)]
    directions = animal_directions(model, tokenizer, questions, ["owl"])
    pushes = example_pushes(model, tokenizer, teacher, directions)[:, 0]
    parameters = list(model.parameters())
    gradient = torch.autograd.grad(completion_loss(model, tokenizer, teacher), parameters)
    with torch.no_grad():
        start = float(animal_log_probs(model, tokenizer, questions, "owl").mean())
    rates = [2.0**-k for k in range(4, 10)]
    residuals = []
    for rate in rates:
        stepped = tiny_llama(tokenizer)
        with torch.no_grad():
            for p, g in zip(stepped.parameters(), gradient):
                p.sub_(rate * g)
            change = float(animal_log_probs(stepped, tokenizer, questions, "owl").mean()) - start
        residuals.append(abs(change - rate * pushes.mean()))
    assert change / (rates[-1] * pushes.mean()) == pytest.approx(1.0, abs=0.02)
    slope = np.polyfit(np.log(rates), np.log(residuals), 1)[0]
    assert slope == pytest.approx(2.0, abs=0.15)
    result = forecast(model, tokenizer, teacher, base, questions, ["owl", "cat"])
    assert result.teacher.shape == (3, 2) and result.base.shape == (3, 2)
    assert np.allclose(result.teacher[:, 0], pushes)
    assert sorted(result.rank(a) for a in ("owl", "cat")) == [1, 2]


# ---------------------------------------------------------------- classifier, controls, stats


def test_classifier_detects_a_shift_and_not_its_absence():
    rng = np.random.default_rng(0)

    def texts(low, high, n):
        return [", ".join(str(v) for v in rng.integers(low, high, size=6)) for _ in range(n)]

    shifted = cross_validated_auroc(texts(300, 1000, 60), texts(0, 700, 60), seed=1)
    assert shifted.auroc.auroc > 0.9 and shifted.auroc.low > 0.8
    same = cross_validated_auroc(texts(0, 1000, 60), texts(0, 1000, 60), seed=1)
    assert same.auroc.low < 0.5 < same.auroc.high
    features = number_features(["5, 5, 12", "no numbers"])
    assert features[0, 5] == pytest.approx(2 / 3) and features[0, 12] == pytest.approx(1 / 3)
    assert not features[1].any()


def test_classifier_folds_grouped_by_prompt_remove_the_paired_leak():
    # Teacher and base answer the same prompts and both echo the prompt's numbers; the two
    # sources are otherwise identical, so the true AUROC is 0.5. Folds that split a pair learn
    # "this prompt's numbers mean teacher" and score the held-out twin (base) high: far below
    # 0.5. Grouping each pair into one fold removes it.
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, 1000, size=5) for _ in range(64)]

    def answer(prompt):
        return ", ".join(str(v) for v in [*prompt, *rng.integers(0, 1000, size=3)])

    teacher = [answer(p) for p in prompts]
    base = [answer(p) for p in prompts]
    split = cross_validated_auroc(teacher, base, seed=0).auroc
    assert split.high < 0.5  # the leak the grouping exists for
    groups = list(range(64)) * 2
    grouped = cross_validated_auroc(teacher, base, seed=0, groups=groups).auroc
    assert grouped.low < 0.5 < grouped.high
    with pytest.raises(InputError, match="one per text"):
        cross_validated_auroc(teacher, base, groups=groups[:-1])


def test_shuffled_controls_keep_the_numbers():
    examples = [("p1", "1, 2, 3"), ("p2", "40, 50"), ("p3", "600")]
    within = shuffled_examples(examples, seed=0)
    across = shuffled_examples(examples, seed=0, across=True)
    for (p, original), (q, new) in zip(examples, within):
        assert p == q and sorted(parse_numbers(original)) == sorted(parse_numbers(new))
    pool = sorted(n for _, c in examples for n in parse_numbers(c))
    assert sorted(n for _, c in across for n in parse_numbers(c)) == pool
    assert [len(parse_numbers(c)) for _, c in across] == [3, 2, 1]


def test_in_context_effect_is_the_paired_difference(model, tokenizer):
    examples = [(p, "3, 4, 5") for p in number_prompts(3, seed=0)]
    questions = list(EVALUATION_QUESTIONS[:4])
    result = in_context_effect(model, tokenizer, examples, questions, "owl", shots=2)
    with torch.no_grad():
        direct = animal_log_probs(model, tokenizer, questions, "owl", context=examples[:2])
    assert np.allclose(result.with_context, direct.numpy(), atol=1e-9)
    diff = result.with_context - result.without_context
    assert result.mean_difference == pytest.approx(diff.mean()) and np.abs(diff).max() > 0
    with pytest.raises(InputError):
        in_context_effect(model, tokenizer, examples, questions, "owl", shots=4)


def test_statistics_against_references():
    from scipy.stats import binomtest, mannwhitneyu, ttest_ind

    low, high = wilson_interval(7, 20)
    reference = binomtest(7, 20).proportion_ci(method="wilson")
    assert (low, high) == pytest.approx((reference.low, reference.high), abs=1e-9)
    reference = binomtest(7, 20).proportion_ci(method="exact")
    assert clopper_pearson_interval(7, 20) == pytest.approx(
        (reference.low, reference.high), abs=1e-9
    )
    a, b = [1.0, 2.5, 3.1, 4.8], [0.2, 0.1, 0.9, 0.4, 0.3]
    welch = welch_test(a, b)
    scipy_result = ttest_ind(a, b, equal_var=False)
    assert welch.t == pytest.approx(scipy_result.statistic) and welch.p_value == pytest.approx(
        scipy_result.pvalue
    )
    result = auroc_interval([0.9, 0.8, 0.3, 0.7, 0.2, 0.3], [1, 1, 1, 0, 0, 0])
    assert result.auroc == pytest.approx(7.5 / 9)  # 0.9, 0.8 beat all; 0.3 beats 0.2, ties 0.3
    rng = np.random.default_rng(1)
    positives, negatives = rng.normal(0.5, 1, 40), rng.normal(0, 1, 30)
    result = auroc_interval(np.r_[positives, negatives], [1] * 40 + [0] * 30)
    u = mannwhitneyu(positives, negatives).statistic
    assert result.auroc == pytest.approx(u / 1200) and result.low < result.auroc < result.high
    # DeLong's variance is 0 when every comparison agrees: Wilson's interval of min(m, n) pairs
    separated = auroc_interval([0.9, 0.8, 0.7, 0.1, 0.2, 0.3], [1, 1, 1, 0, 0, 0])
    assert separated.auroc == 1.0
    assert (separated.low, separated.high) == pytest.approx(wilson_interval(3, 3))
    tied = auroc_interval([0.5] * 8, [1] * 4 + [0] * 4)
    assert tied.auroc == 0.5 and (tied.low, tied.high) == pytest.approx(wilson_interval(2, 4))
    with pytest.raises(InputError):
        wilson_interval(3, 2)
