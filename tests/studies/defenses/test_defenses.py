"""Token-level defenses in the tiny LM (``numbers.defenses``, ``defenses`` command).

Each new code path is checked on what it does, at tiny size:

* the divergence mask keeps exactly the targets where the teacher's and the base's greedy
  choices agree (against a direct prefix-by-prefix argmax comparison);
* top-p / min-prob sampling never emits a dropped token and samples the kept ones in their
  renormalised proportions (a model with known, fixed logits);
* the poisoned mix holds exactly round(f n) teacher rows and n - round(f n) base rows;
* a weighted (masked) student's step is the gradient of the loss on the kept targets only
  (float64, one SGD step with lr 1, so the update IS the gradient);
* the command writes the tables from its rows and the plain setting reproduces ``numbers``'
  teacher numbers.
"""

import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sublim_theory.cli.main import main
from sublim_theory.engine.losses import SoftCrossEntropy
from sublim_theory.errors import InputError
from sublim_theory.harness.runs import CONFIG_DIR
from sublim_theory.studies.defenses import experiment as defenses
from sublim_theory.studies.defenses import report as defenses_report
from sublim_theory.studies.numbers.experiment import PROMPT_OFFSET, SAMPLING_OFFSET
from sublim_theory.studies.numbers.report import read_csv
from sublim_theory.testbeds.lm import corpus, training
from sublim_theory.testbeds.lm.config import StudentConfig

TINY = CONFIG_DIR / "defenses_tiny.toml"
EPS64 = torch.finfo(torch.float64).eps


@pytest.fixture(scope="module")
def tiny():
    config, setting = defenses.load_config(TINY)
    return config, setting


def _documents(config, n, seed):
    """Well-formed-looking number documents (prompt, continuation, EOS) from the corpus prompts."""
    prompts = corpus.number_prompts(config.corpus, n, seed)
    generator = torch.Generator().manual_seed(seed)
    tail = torch.randint(
        0, config.corpus.n_numbers, (n, config.corpus.continuation_len), generator=generator
    )
    vocab = corpus.vocabulary(config.corpus)
    eos = torch.full((n, 1), corpus.EOS)
    return torch.cat([prompts, vocab.number(tail), eos], 1)


def test_agreement_mask_is_the_direct_greedy_comparison_on_every_prefix(tiny):
    config, _ = tiny
    teacher, base = training.build_lm(config, 0), training.build_lm(config, 1)
    docs = _documents(config, 40, 3)
    mask = defenses.agreement_mask(teacher, base, docs, batch_size=7)  # several batches
    direct = torch.zeros_like(mask)
    with torch.no_grad():
        for t in range(docs.shape[1] - 1):
            prefix = docs[:, : t + 1]
            direct[:, t] = teacher(prefix)[:, -1].argmax(-1) == base(prefix)[:, -1].argmax(-1)
    assert torch.equal(mask, direct)
    assert mask.any() and (~mask).any()  # both kinds occur, so the comparison is not vacuous
    # a model agrees with itself everywhere
    assert defenses.agreement_mask(base, base, docs).all()


class FixedLogits(nn.Module):
    """A 'language model' whose next-token logits are the same at every position."""

    def __init__(self, probs):
        super().__init__()
        self.logits = probs.log()

    def forward(self, tokens):
        return self.logits.expand(tokens.shape[0], tokens.shape[1], -1)


# token id -> probability; deliberately not sorted by id, so the ranking is exercised
PROBS = torch.tensor([0.06, 0.25, 0.015, 0.40, 0.045, 0.12, 0.03, 0.08], dtype=torch.float64)
# top_p 0.8: mass above each token in rank order is 0, .40, .65, .77, .85, ... -> 4 tokens
KEPT = {"top_p": {3, 1, 5, 7}, "min_prob": {3, 1, 5, 7, 0}}  # min_prob: p > 0.05


@pytest.mark.parametrize("setting", ["top_p", "min_prob"])
def test_truncated_sampling_never_emits_a_dropped_token_and_keeps_proportions(tiny, setting):
    config, defense = tiny
    model = FixedLogits(PROBS)
    prompts = torch.zeros(4000, 1, dtype=torch.long)
    options = defenses.sampling_options(setting, defense)
    drawn = training.sample_continuations(model, prompts, config, 5, **options)[:, 1:].reshape(-1)
    counts = torch.bincount(drawn, minlength=PROBS.numel()).double()
    kept = sorted(KEPT[setting])
    dropped = [i for i in range(PROBS.numel()) if i not in KEPT[setting]]
    assert counts[dropped].sum() == 0
    # the kept tokens come in their renormalised proportions (5 binomial sds: a false alarm
    # about once in 10^6 per token)
    n = counts.sum()
    expected = PROBS[kept] / PROBS[kept].sum()
    sd = (n * expected * (1 - expected)).sqrt()
    assert ((counts[kept] - n * expected).abs() < 5 * sd).all()
    # without the defense the same sampler does emit those tokens
    plain = training.sample_continuations(model, prompts, config, 5)[:, 1:].reshape(-1)
    assert torch.isin(plain, torch.tensor(dropped)).any()


def test_truncated_distribution_keeps_the_top_token_and_refuses_bad_settings():
    probs = torch.tensor([[0.3, 0.3, 0.4]], dtype=torch.float64)
    # every token is below the threshold: the most probable one is kept rather than none
    assert torch.equal(
        training.truncated_distribution(probs, min_prob=0.5),
        torch.tensor([[0.0, 0, 1]], dtype=torch.float64),
    )
    assert training.truncated_distribution(probs) is probs
    with pytest.raises(InputError, match="top_p must be in"):
        training.truncated_distribution(probs, top_p=0.0)
    with pytest.raises(InputError, match="min_prob must be in"):
        training.truncated_distribution(probs, min_prob=1.0)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 0.75, 1.0])
def test_poisoned_mix_has_the_right_counts(fraction):
    n_teacher, n_base = 53, 41
    teacher = torch.stack([torch.arange(n_teacher), torch.full((n_teacher,), 1)], 1)
    base = torch.stack([torch.arange(n_base), torch.full((n_base,), 2)], 1)
    mix, k = defenses.poisoned_mix(teacher, base, fraction, seed=9)
    assert k == round(fraction * n_base)
    assert mix.shape[0] == n_base  # the same total size at every fraction
    assert int((mix[:, 1] == 1).sum()) == k and int((mix[:, 1] == 2).sum()) == n_base - k
    assert len({tuple(row) for row in mix.tolist()}) == n_base  # drawn without replacement
    with pytest.raises(InputError, match="fraction must be in"):
        defenses.poisoned_mix(teacher, base, 1.5, seed=9)


def _flat_grad(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("labels", ["sampled", "soft"])
def test_masked_student_step_is_the_gradient_on_the_kept_targets_only(tiny, labels):
    config, _ = tiny
    init = training.build_lm(config, 0).double()
    teacher = training.build_lm(config, 1).double()
    docs = _documents(config, 12, 4)
    generator = torch.Generator().manual_seed(2)
    keep = torch.rand(docs.shape[0], docs.shape[1] - 1, generator=generator) < 0.5
    sgd = StudentConfig(steps=1, lr=1.0, batch_size=6, optimizer="sgd")
    seed = 8
    run = training.train_student(
        init, docs, config, seed, labels=labels, teacher=teacher, student=sgd, target_weights=keep
    )
    step = training.flat(init) - training.flat(run.model)  # lr 1: the gradient itself

    # reference: the same batch draw, the loss summed over the kept continuation targets only
    rows = torch.randint(0, docs.shape[0], (6,), generator=torch.Generator().manual_seed(seed))
    batch = docs[rows]
    selected = corpus.continuation_mask(batch, config.corpus) & keep[rows]
    reference = training.build_lm(config, 0).double()
    reference.load_state_dict(init.state_dict())
    logits = reference(batch[:, :-1])[selected]
    if labels == "soft":
        with torch.no_grad():
            targets = teacher(batch[:, :-1])[selected]
        loss = SoftCrossEntropy().value(logits, targets).sum() / selected.sum()
    else:
        loss = F.cross_entropy(logits, batch[:, 1:][selected], reduction="sum") / selected.sum()
    loss.backward()
    gradient = _flat_grad(reference)
    # error model: theta1 = theta0 - g rounds at eps |theta0|; recovering g from the difference
    # and summing ~T terms in another order cost eps (|theta0| + T |g|) per entry
    terms = int(selected.sum())
    scale = training.flat(init).abs().max() + terms * gradient.abs().max()
    assert (step - gradient).abs().max() <= 8 * EPS64 * scale
    # the masked targets matter: the gradient over every target is a different vector
    full = training.train_student(
        init, docs, config, seed, labels=labels, teacher=teacher, student=sgd
    )
    unmasked_step = training.flat(init) - training.flat(full.model)
    assert (unmasked_step - gradient).abs().max() > 1e3 * EPS64 * scale
    # all-ones weights reproduce the default (unweighted) path
    ones = training.train_student(
        init,
        docs,
        config,
        seed,
        labels=labels,
        teacher=teacher,
        student=sgd,
        target_weights=torch.ones_like(keep),
    )
    assert (training.flat(ones.model) - training.flat(full.model)).abs().max() <= 8 * EPS64 * scale


def test_target_weights_of_the_wrong_shape_are_refused(tiny):
    config, _ = tiny
    docs = _documents(config, 5, 1)
    with pytest.raises(InputError, match="target_weights must have shape"):
        training.train_student(
            training.build_lm(config, 0), docs, config, 0, target_weights=torch.ones(5, 2)
        )


def test_config_needs_the_control_fraction(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[defenses]\nfractions = [0.5, 1.0]\n")
    with pytest.raises(InputError, match="include 0"):
        defenses.load_config(path)
    path.write_text("[defenses]\ntop_p = 1.5\n")
    with pytest.raises(InputError, match="top_p"):
        defenses.load_config(path)


def test_command_tables_come_from_its_rows_and_plain_sampling_is_the_numbers_sampling(
    tiny, tmp_path, capsys, tiny_config_run
):
    config, setting = tiny
    run = tiny_config_run("defenses_tiny")  # the session's one run (TINY_RUNS)
    assert run.code == 0, run.stderr
    out = tmp_path / "run"
    shutil.copytree(run.out, out)
    argv = ["defenses", "--config", str(TINY), "--seeds", "1", "--out", str(out), "--threads", "1"]
    rows = read_csv(out / "results.csv")
    value = {(r["condition"], r["metric"]): r["value"] for r in rows}
    # every student is paired with its control
    for s in defenses.SAMPLINGS:
        diff = value[(f"student_{s}", "p_trait")] - value[(f"control_{s}", "p_trait")]
        assert math.isclose(value[(f"student_{s}", "paired_diff")], diff, abs_tol=1e-15)
    # the plain setting is the numbers experiment's sampling: same prompts, seed, sampler
    base, _ = training.cached_base(config, training.BaseSpec(0, 0, 0), out / "cache")
    teacher = training.finetune_teacher(base, config)
    prompts = corpus.number_prompts(config.corpus, config.teacher.n_sequences, PROMPT_OFFSET)
    raw = training.sample_continuations(teacher, prompts, config, SAMPLING_OFFSET)
    kept, _ = corpus.filter_numbers(raw, config.corpus)
    assert value[("teacher_plain", "filter_kept")] == kept.shape[0]
    # the masked share is the disagreement share on those numbers' continuation targets
    keep = defenses.agreement_mask(teacher, base, kept)
    continuation = corpus.continuation_mask(kept, config.corpus)
    share = float((~keep & continuation).sum() / continuation.sum())
    assert value[("student_masked", "masked_share")] == pytest.approx(share, abs=1e-12)
    # the teacher's P(trait) under min_prob is its truncated answer distribution's
    answer = training.answer_distribution(teacher, config)[None]
    trait = corpus.vocabulary(config.corpus).animal(config.corpus.trait_animal)
    truncated = training.truncated_distribution(answer, min_prob=setting.min_prob)[0, trait]
    assert value[("teacher_min_prob", "p_trait")] == pytest.approx(float(truncated), abs=1e-12)
    # each defense's change is its paired diff minus the plain one, seed by seed
    change = {
        (r["condition"], r["metric"]): r["value"] for r in defenses_report.defense_changes(rows)
    }
    plain = value[("student_plain", "paired_diff")]
    for name in ("student_top_p", "student_min_prob", "student_masked"):
        assert change[(name, "change_vs_plain")] == value[(name, "paired_diff")] - plain
    table = (out / "table.md").read_text()
    assert f"{value[('student_plain', 'paired_diff')]:.3f}" in table
    assert (out / "defenses.png").stat().st_size > 0
    # a rerun resumes (the stored seed is skipped) and a changed setting is refused
    assert main(argv) == 0
    assert "skipped" in capsys.readouterr().err
    other = tmp_path / "other.toml"
    other.write_text(TINY.read_text().replace("top_p = 0.8", "top_p = 0.9"))
    assert main([*argv[:2], str(other), *argv[3:]]) == 2
