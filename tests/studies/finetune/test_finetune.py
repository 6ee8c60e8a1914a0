"""Students across optimizers and LoRA ranks (sublim_theory.studies.finetune.variants, `finetune`)."""

import copy
import dataclasses
import json

import pytest
import torch

from sublim_theory.cli.main import main
from sublim_theory.engine.lora import adapter_names, add_lora
from sublim_theory.errors import InputError
from sublim_theory.harness.runs import CONFIG_DIR
from sublim_theory.studies.finetune import variants
from sublim_theory.testbeds.lm import corpus, training

TINY = CONFIG_DIR / "finetune_tiny.toml"
EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    config, ft = variants.load_config(TINY)
    cache = tmp_path_factory.mktemp("cache")
    return config, ft, variants.prepare_seed(config, ft, 0, cache, log=lambda *a, **k: None)


def _student(config, optimizer, lr, steps=None):
    changes = {"optimizer": optimizer, "lr": lr, "labels": "sampled"}
    if steps is not None:
        changes["steps"] = steps
    return dataclasses.replace(config.student, **changes)


def _snapshots(record):
    """A step callback that keeps the parameters (pre-step), their .grad and the batch."""

    def callback(model, batch):
        record.append(
            {
                "params": {n: p.detach().clone() for n, p in model.named_parameters()},
                "grads": {
                    n: p.grad.detach().clone()
                    for n, p in model.named_parameters()
                    if p.grad is not None
                },
                "batch": batch.clone(),
            }
        )

    return callback


def test_signsgd_step_is_minus_lr_sign_grad(setup):
    config, _, data = setup
    lr = 3e-3
    record = []
    run = training.train_student(
        data.base,
        data.teacher_numbers,
        config,
        7,
        student=_student(config, "signsgd", lr, steps=3),
        step_callback=_snapshots(record),
    )
    after = [r["params"] for r in record[1:]] + [dict(run.model.named_parameters())]
    for before, now in zip(record, after):
        for name, grad in before["grads"].items():
            expected = before["params"][name] - torch.tensor(lr, dtype=grad.dtype) * grad.sign()
            # one float32 rounding of p - lr*sign(g): within half an ulp of |expected|
            torch.testing.assert_close(
                now[name].detach(), expected, rtol=EPS32, atol=0, msg=f"parameter {name}"
            )
    assert len(record) == 3


@pytest.mark.parametrize("optimizer,lr", [("adam", 1e-2), ("sgd", 1.0), ("signsgd", 1e-2)])
def test_lora_student_moves_only_adapters(setup, optimizer, lr):
    config, _, data = setup
    init = add_lora(data.base, 2, seed=3)
    run = training.train_student(
        init, data.teacher_numbers, config, 0, student=_student(config, optimizer, lr)
    )
    adapters = set(adapter_names(init))
    before, after = dict(init.named_parameters()), dict(run.model.named_parameters())
    assert adapters and set(before) == set(after)
    for name in before:
        if name in adapters:
            continue
        assert torch.equal(before[name], after[name]), f"base weight {name} changed"
    moved = [n for n in adapters if "lora_B" in n and not torch.equal(before[n], after[n])]
    assert len(moved) == len([n for n in adapters if "lora_B" in n])


def test_student_and_control_share_the_adapter_init(setup, monkeypatch):
    config, ft, data = setup
    seen = []
    original = training.train_student

    def recording(init, *args, **kwargs):
        seen.append({n: p.detach().clone() for n, p in init.named_parameters()})
        return original(init, *args, **kwargs)

    monkeypatch.setattr(training, "train_student", recording)
    cell = variants.Cell("adam", 2)
    variants.train_pair(data, cell, 1e-2, config, ft)
    assert len(seen) == 2
    a_names = [n for n in seen[0] if "lora_A" in n]
    assert a_names
    for name in seen[0]:
        assert torch.equal(seen[0][name], seen[1][name]), name
    # the A_0 draw does depend on the seed (else the equality above would be vacuous)
    other = variants.cell_init(data.base, cell, data.seed + 1, ft)
    assert not torch.equal(dict(other.named_parameters())[a_names[0]], seen[0][a_names[0]])


def _oracle_cosine(model, params, batch, config):
    """cos(grad L_trait, grad L_distill) written out, in float64, from the raw parameters."""
    model = copy.deepcopy(model).double()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(params[name])
    trainable = [p for p in model.parameters() if p.requires_grad]
    mask = corpus.continuation_mask(batch[:1], config.corpus)[0]
    log_probs = torch.log_softmax(model(batch[:, :-1]), -1)[:, mask]
    targets = batch[:, 1:][:, mask]
    distill = -log_probs.gather(-1, targets.unsqueeze(-1)).mean()
    trait_id = corpus.vocabulary(config.corpus).animal(config.corpus.trait_animal)
    trait = -torch.log_softmax(model(torch.tensor([[corpus.BOS, corpus.Q]])), -1)[0, -1, trait_id]

    def flat(loss):
        grads = torch.autograd.grad(loss, trainable, allow_unused=True)
        return torch.cat(
            [
                (torch.zeros_like(p) if g is None else g).reshape(-1)
                for p, g in zip(trainable, grads)
            ]
        )

    a, b = flat(trait), flat(distill)
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("cell", [variants.Cell("adam", None), variants.Cell("signsgd", 2)])
def test_recorded_step_cosines_match_direct_autograd(setup, monkeypatch, cell):
    config, ft, data = setup
    snapshots = []
    original = training.train_student

    def recording(init, *args, step_callback=None, **kwargs):
        keep = _snapshots(snapshots)

        def both(model, batch):
            keep(model, batch)
            step_callback(model, batch)

        return original(init, *args, step_callback=both, **kwargs)

    monkeypatch.setattr(training, "train_student", recording)
    lr = 1e-2 if cell.optimizer == "adam" else 3e-3
    rows, steps = variants.train_pair(data, cell, lr, config, ft)
    init = variants.cell_init(data.base, cell, data.seed, ft)
    recorded = [s["trait_cos"] for s in steps]
    assert len(recorded) == len(snapshots) == 2 * config.student.steps
    # float32 gradients vs the float64 oracle: a gradient summed over n = batch x positions x
    # vocabulary terms carries a relative rounding error of about eps32 * sqrt(n), and a cosine
    # moves by at most twice its vectors' relative errors
    batch, length = snapshots[0]["batch"].shape
    n = batch * length * corpus.vocabulary(config.corpus).size
    tolerance = 2 * EPS32 * n**0.5
    for value, snapshot in zip(recorded, snapshots):
        expected = _oracle_cosine(init, snapshot["params"], snapshot["batch"], config)
        assert value == pytest.approx(expected, abs=tolerance)
    # the cosines are not all equal (they follow the trajectory)
    assert len({round(v, 6) for v in recorded}) > 1
    by_metric = {(r["role"], r["metric"]): r["value"] for r in rows}
    student = recorded[: config.student.steps]
    assert by_metric[("student", "mean_trait_cos")] == pytest.approx(sum(student) / len(student))


def test_third_means_and_config_errors(tmp_path):
    assert variants.third_means([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) == (1.5, 3.5, 5.5)
    with pytest.raises(InputError, match=">= 3 steps"):
        variants.third_means([1.0, 2.0])
    bad = tmp_path / "bad.toml"
    bad.write_text('[finetune]\noptimizers = ["adam", "rmsprop"]\n')
    with pytest.raises(InputError, match="optimizers must be distinct names"):
        variants.load_config(bad)
    bad.write_text("[finetune]\nranks = [4, 4]\n")
    with pytest.raises(InputError, match="ranks must be distinct"):
        variants.load_config(bad)
    bad.write_text("[finetune]\nranks = [0]\n")
    with pytest.raises(InputError, match="ranks"):
        variants.load_config(bad)


def test_finetune_command_tiny_run_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["finetune", "--config", str(TINY), "--seeds", "1", "--out", str(out)]
    assert main([*args, "--cache", str(tmp_path / "cache"), "--threads", "1"]) == 0
    for name in ("results.csv", "steps.csv", "lr_grid.csv", "table.md", "finetune.png"):
        assert (out / name).is_file(), name
    selection = json.loads((out / "selection.json").read_text())
    _, ft = variants.load_config(TINY)
    assert set(selection["lrs"]) == {c.name for c in variants.cells(ft)}
    for cell, lr in selection["lrs"].items():
        losses = {g["lr"]: g["heldout_loss"] for g in selection["grid"] if g["cell"] == cell}
        assert losses[lr] == min(losses.values())
    table = (out / "table.md").read_text()
    assert "adam/full" in table and "signsgd/r2" in table
    stored = (out / "seeds" / "seed-0.json").read_text()
    assert main([*args, "--cache", str(tmp_path / "cache")]) == 0  # resumes: nothing retrained
    assert (out / "seeds" / "seed-0.json").read_text() == stored
    assert "finetune 0: stored in" in capsys.readouterr().err


def test_adam_full_cell_is_the_numbers_student_and_control(tmp_path):
    # the same base, teacher, samples and batch order as experiment.run_seed: the cell's P(trait)
    # must equal the numbers experiment's student and control exactly (recording the per-step
    # cosines must not perturb training)
    from sublim_theory.studies.numbers import experiment

    config, ft = variants.load_config(TINY)
    config = dataclasses.replace(
        config, student=dataclasses.replace(config.student, shuffles=False, data_order=False)
    )
    rows, _, _ = experiment.run_seed(config, 0, tmp_path, log=lambda *a, **k: None)
    numbers = {(r["condition"], r["metric"]): r["value"] for r in rows}
    data = variants.prepare_seed(config, ft, 0, tmp_path, log=lambda *a, **k: None)
    cell_rows, _ = variants.train_pair(
        data, variants.Cell("adam", None), config.student.lr, config, ft
    )
    cell = {(r["role"], r["metric"]): r["value"] for r in cell_rows}
    assert cell[("student", "p_trait")] == numbers[("student", "p_trait")]
    assert cell[("control", "p_trait")] == numbers[("control", "p_trait")]
    assert cell[("student", "p_trait")] != cell[("control", "p_trait")]


def test_report_only_without_a_stored_selection_computes_nothing(tmp_path):
    from sublim_theory.harness.study import run_study
    from sublim_theory.studies.finetune.study import build

    study = build(CONFIG_DIR / "finetune_tiny.toml", 0, 1)
    with pytest.raises(InputError, match="nothing to report"):
        run_study(study, tmp_path / "out", log=lambda *a: None, report_only=True)
    assert not (tmp_path / "out" / "selection.json").exists()
