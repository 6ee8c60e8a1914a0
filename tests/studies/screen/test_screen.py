"""The trait screen: jvp attributions against explicit per-example gradients, the variants' exact
identities, the first-order order of the forecast, a tiny screen that names the teacher's trait,
and the command on the tiny config."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad

from sublim_theory.cli.main import main
from sublim_theory.engine import screen as S
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.errors import InputError
from sublim_theory.models.architectures import TinyTransformer
from sublim_theory.studies.screen import experiment as screen_study
from sublim_theory.testbeds.lm import screening
from sublim_theory.testing.asserts import loglog_slope

TINY = Path(__file__).resolve().parents[3] / "experiments" / "configs" / "screen_tiny.toml"
U64 = torch.finfo(torch.float64).eps
CLASSES, AUX = 4, 3


def soft_loss(outputs, targets):
    """Per-example soft cross-entropy on the auxiliary logits (the student's loss)."""
    return -(torch.softmax(targets, -1) * torch.log_softmax(outputs[:, CLASSES:], -1)).sum(-1)


def class_probes(probe_inputs):
    """Trait k: cross-entropy of class k on a probe set (the MNIST-style probe)."""

    def probe(k):
        labels = torch.full((probe_inputs.shape[0],), k)
        return S.TraitProbe(
            f"class-{k}", probe_inputs, lambda z: F.cross_entropy(z[:, :CLASSES], labels)
        )

    return [probe(k) for k in range(CLASSES)]


def mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, CLASSES + AUX)).double().eval()


def explicit_per_example_gradients(model, theta, inputs, targets, example_loss):
    """The oracle: one reverse-mode gradient per example, stacked (N, P)."""
    rows = []
    for i in range(inputs.shape[0]):
        x, y = inputs[i : i + 1], targets[i : i + 1]
        rows.append(grad(lambda t, x=x, y=y: example_loss(model(t, x), y).sum())(theta))
    return torch.stack(rows)


def reduction_bound(directions, gradients):
    # float64 rounding of two length-P inner products computed in different orders (P u each,
    # Higham's gamma_P), plus ~100 u for the rounding inside a few layers' forward, backward and
    # forward-mode passes; both scaled by |d_k| |g_i| (Cauchy-Schwarz bounds the summands).
    p = directions.shape[1]
    return (2 * p + 100) * U64 * torch.outer(gradients.norm(dim=1), directions.norm(dim=1))


@pytest.mark.parametrize("chunk", [None, 3])
def test_attributions_match_explicit_per_example_gradients_mlp(chunk):
    net = mlp(0)
    model = FunctionalModel(net)
    theta = model.flat_params()
    inputs = torch.randn(10, 6, dtype=torch.float64)
    targets = torch.randn(10, AUX, dtype=torch.float64)
    directions = torch.randn(4, model.num_params, dtype=torch.float64)
    fast = S.example_attributions(model, theta, inputs, targets, soft_loss, directions, chunk)
    per_example = explicit_per_example_gradients(model, theta, inputs, targets, soft_loss)
    oracle = per_example @ directions.T
    error = (fast - oracle).abs()
    assert (error <= reduction_bound(directions, per_example)).all(), float(error.max())


def test_attributions_match_explicit_per_example_gradients_lm():
    # the tiny LM with token targets and a loss on some positions only (as the number student)
    torch.manual_seed(1)
    net = TinyTransformer(11, 8, 2, 1, 6, pool="none").double().eval()
    model = FunctionalModel(net)
    theta = model.flat_params()
    docs = torch.randint(0, 11, (7, 6))
    mask = torch.tensor([False, True, True, True, False])

    def token_loss(logits, targets):
        picked = torch.log_softmax(logits[:, mask], -1).gather(-1, targets[:, mask, None])
        return -picked.squeeze(-1).mean(1)

    directions = torch.randn(3, model.num_params, dtype=torch.float64)
    inputs, targets = docs[:, :-1], docs[:, 1:]
    fast = S.example_attributions(model, theta, inputs, targets, token_loss, directions, 4)
    per_example = explicit_per_example_gradients(model, theta, inputs, targets, token_loss)
    error = (fast - per_example @ directions.T).abs()
    assert (error <= reduction_bound(directions, per_example)).all(), float(error.max())


def problem(seed=0, n=24):
    net = mlp(seed)
    model = FunctionalModel(net)
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 6, dtype=torch.float64, generator=generator)
    targets = torch.randn(n, AUX, dtype=torch.float64, generator=generator)
    probes = class_probes(torch.randn(16, 6, dtype=torch.float64, generator=generator))
    return model, model.flat_params(), inputs, targets, probes


@pytest.mark.parametrize("variant", S.VARIANTS)
def test_forecast_is_the_preconditioned_inner_product(variant):
    model, theta, inputs, targets, probes = problem()
    g = S.data_gradient(model, theta, inputs, targets, soft_loss, batch_size=5)
    rms = S.minibatch_gradient_rms(model, theta, inputs, targets, soft_loss, 6, 4, seed=2)
    result = S.screen(
        model,
        theta,
        inputs,
        targets,
        soft_loss,
        probes,
        step_size=0.3,
        steps=7,
        variant=variant,
        gradient_rms=rms,
        batch_size=5,
        bootstrap=50,
    )
    trait_grads = S.trait_gradients(model, theta, probes)
    # the update each variant stands for, written out: SGD's step, Adam's first full-batch step
    # (bias-corrected moments g and g^2), Adam's stationary step with minibatch noise
    diagonal = {"sgd": torch.ones_like(g), "sign": 1 / (g.abs() + 1e-8), "rms": 1 / (rms + 1e-8)}
    update = diagonal[variant] * g
    expected = 0.3 * 7 * (trait_grads @ update)
    # the mean of N per-example inner products against one inner product with the mean gradient:
    # N + P terms reduced, each bounded by |P grad L_k| |grad l_i| (here max over examples)
    scale = trait_grads.norm(dim=1) * (update.norm() + g.norm())
    per_example = explicit_per_example_gradients(model, theta, inputs, targets, soft_loss)
    scale = scale * (1 + per_example.norm(dim=1).max() / g.norm())
    p = model.num_params
    bound = 0.3 * 7 * (inputs.shape[0] + 2 * p + 100) * U64 * scale
    if variant != "sgd":
        bound = bound * float(diagonal[variant].max())
    assert ((result.forecast - expected).abs() <= bound).all()
    assert (result.low <= result.forecast).all() and (result.forecast <= result.high).all()
    assert math.isclose(float(result.top_frequency.sum()), 1.0)
    assert result.ranking[0] == result.names[int(result.forecast.argmax())]


def test_one_sgd_step_matches_the_forecast_to_first_order():
    # Delta L_k(alpha) = -forecast(alpha) + O(alpha^2): the residual's log-log slope is 2
    model, theta, inputs, targets, probes = problem(seed=3)
    g = S.data_gradient(model, theta, inputs, targets, soft_loss)
    alphas = [1e-1, 5e-2, 2.5e-2, 1.25e-2]
    residuals = []
    for alpha in alphas:
        result = S.screen(
            model, theta, inputs, targets, soft_loss, probes, step_size=alpha, bootstrap=1
        )
        for k, probe in enumerate(probes[:1]):
            before = probe.loss(model(theta, probe.inputs))
            after = probe.loss(model(theta - alpha * g, probe.inputs))
            residuals.append(float((before - after) - result.forecast[k]))
    assert abs(loglog_slope(alphas, residuals) - 2) < 0.1
    assert abs(residuals[-1]) < 0.05 * abs(float(result.forecast[0]))


def test_tiny_screen_names_the_teachers_trait():
    # MNIST-style: a teacher one small gradient step toward class k, a student imitating only
    # its auxiliary logits on noise; the screen sees the noise and the teacher's aux logits,
    # never a class. To first order the forecast of trait j is alpha eps <grad L_j, K grad L_k>,
    # which is largest at j = k unless another class's gradient is longer in the K norm; so
    # the teacher's trait is asserted first on most problems, far above chance (1 in 4).
    firsts, normalized_firsts, problems = 0, 0, 0
    for seed in range(10):
        base = mlp(seed)
        model = FunctionalModel(base)
        theta = model.flat_params()
        generator = torch.Generator().manual_seed(100 + seed)
        probes = class_probes(torch.randn(32, 6, dtype=torch.float64, generator=generator))
        noise = 2 * torch.rand(200, 6, dtype=torch.float64, generator=generator) - 1
        for probe in probes:
            trait_loss = lambda t, p=probe, m=model: p.loss(m(t, p.inputs))  # noqa: E731
            teacher = theta - 0.01 * grad(trait_loss)(theta)
            with torch.no_grad():
                targets = model(teacher, noise)[:, CLASSES:]
            result = S.screen(
                model, theta, noise, targets, soft_loss, probes, step_size=0.1, bootstrap=1
            )
            firsts += result.ranking[0] == probe.name
            normalized_firsts += result.normalized_ranking[0] == probe.name
            problems += 1
        base_targets = model(theta, noise)[:, CLASSES:].detach()
        null = S.screen(
            model, theta, noise, base_targets, soft_loss, probes, step_size=0.1, bootstrap=1
        )
        # the base's own outputs are its optimum: every attribution is zero up to rounding
        assert null.attributions.abs().max() < 1e3 * U64 * model.num_params
    # 24 of 40 first by chance (p = 1/4) has probability < 1e-6
    assert firsts >= 24, f"the teacher's trait ranked first in {firsts}/{problems} problems"
    # normalized by the K norm of each trait's direction, the teacher's trait is first on every
    # problem: forecast_k / ||d_k||_K ~ eps <d_k, K d_j> / ||d_k||_K peaks at k = j
    # (Cauchy-Schwarz in the K inner product)
    assert normalized_firsts == problems, f"normalized: first in {normalized_firsts}/{problems}"


def test_number_student_loss_is_the_students_training_loss():
    # the mean over documents of the per-document losses is the loss train_student minimizes
    from sublim_theory.testbeds.lm import corpus, training
    from sublim_theory.testbeds.lm.config import load_config

    config = load_config(
        Path(__file__).resolve().parents[3] / "experiments/configs/numbers_tiny.toml"
    )
    torch.manual_seed(0)
    net = training.build_lm(config, 0).double()
    prompts = corpus.number_prompts(config.corpus, 12, seed=0)
    docs = training.sample_continuations(net, prompts, config, seed=0)
    inputs, targets = screening.number_student_data(docs)
    mask = corpus.continuation_mask(docs[:1], config.corpus)[0]
    with torch.no_grad():
        per_document = screening.number_student_loss(config)(net(inputs), targets)
        logits = net(docs[:, :-1])[:, mask]
    expected = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), docs[:, 1:][:, mask].reshape(-1)
    )
    # two means of the same 12 x 5 float64 terms in different orders
    assert abs(float(per_document.mean() - expected)) <= 64 * U64 * float(expected)


def test_concentration_and_t_statistics():
    values = torch.tensor([[4.0], [1.0], [1.0], [1.0], [1.0]], dtype=torch.float64)
    shares = S.concentration(values[:, 0], [0.2, 1.0])
    assert shares == {0.2: 0.5, 1.0: 1.0}
    z, centered = S.t_statistics(torch.cat([values, -values], 1))
    assert math.isclose(float(z[0]), 1.6 / (float(values.std()) / math.sqrt(5)))
    assert torch.allclose(centered, torch.stack([z[0], -z[0]]))


def test_bad_input_is_one_clear_error():
    model, theta, inputs, targets, probes = problem()
    call = dict(step_size=0.1, bootstrap=1)
    with pytest.raises(InputError, match="variant"):
        S.screen(model, theta, inputs, targets, soft_loss, probes, variant="adamw", **call)
    with pytest.raises(InputError, match="gradient_rms"):
        S.screen(model, theta, inputs, targets, soft_loss, probes, variant="rms", **call)
    with pytest.raises(InputError, match="step_size"):
        S.screen(model, theta, inputs, targets, soft_loss, probes, step_size=-1.0)
    with pytest.raises(InputError, match="empty"):
        S.screen(model, theta, inputs[:0], targets[:0], soft_loss, probes, **call)
    with pytest.raises(InputError, match="one entry per input"):
        S.screen(model, theta, inputs, targets[:3], soft_loss, probes, **call)
    with pytest.raises(InputError, match="no candidate traits"):
        S.screen(model, theta, inputs, targets, soft_loss, [], **call)
    with pytest.raises(InputError, match="one loss per example"):
        S.screen(model, theta, inputs, targets, lambda z, y: soft_loss(z, y).mean(), probes, **call)
    with pytest.raises(InputError, match="teachers"):
        screen_study.experiment_config({"screen": {"teachers": ["unicorn"]}})
    with pytest.raises(InputError, match="filter_variant"):
        screen_study.experiment_config({"screen": {"variants": ["sgd"], "filter_variant": "rms"}})


def test_command_on_the_tiny_config_writes_its_tables_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    config = tmp_path / "tiny.toml"  # the tiny config, smaller still: one drop share, one init,
    # fewer documents (this test checks the plumbing, not the effect)
    text = TINY.read_text().replace("drop_fractions = [0.1, 0.5]", "drop_fractions = [0.5]")
    text = text.replace("n_sequences = 300", "n_sequences = 150")
    config.write_text(text + "cross_init = false\n")
    args = ["screen", "--config", str(config), "--out", str(out), "--threads", "1"]
    args += ["--null-draws", "1", "--runner-up-drops"]
    assert main(args) == 0
    for name in ("rows.csv", "ranking.csv", "table.md", "screen.png", "run.json"):
        assert (out / name).is_file(), name
    units = sorted(p.name for p in (out / "units").iterdir())
    assert units == [
        f"seed-0-{kind}.json"
        for kind in (
            *("base", "control-fox", "control-owl", "filter-fox", "filter-owl", "format"),
            *("null-0", "teacher-cat", "teacher-fox", "teacher-owl"),
        )
    ]
    progress = capsys.readouterr().err  # pretraining prints progress (it printed nothing before)
    assert "pretraining 150 steps" in progress and "pretrained 150 steps in" in progress
    table = (out / "table.md").read_text()
    assert "### Detection" in table and "### Filtering" in table
    assert "### Confound-only baselines" in table and "hidden-style" in table
    rows = json.loads((out / "units" / "seed-0-teacher-owl.json").read_text())["rows"]
    sgd_step = {
        (r["trait"], r["metric"]): r["value"] for r in rows if r["variant"] == "sgd_step_0.01"
    }
    for animal in ("owl", "cat", "dog", "fox"):  # one small real SGD step against its forecast
        forecast, measured = sgd_step[(animal, "forecast")], sgd_step[(animal, "measured")]
        assert abs(measured - forecast) < 0.05 * abs(forecast) + 1e-9
    capsys.readouterr()
    written = {p.name: p.stat().st_mtime_ns for p in (out / "units").iterdir()}
    tables = {name: (out / name).read_bytes() for name in ("rows.csv", "ranking.csv", "table.md")}
    assert main(args) == 0  # every unit stored: nothing recomputed, no unit rewritten
    assert written == {p.name: p.stat().st_mtime_ns for p in (out / "units").iterdir()}
    assert "screen seed-0-base: stored in" in capsys.readouterr().err
    # the tables rebuilt from the stored units are the same bytes (columns in the same order)
    assert tables == {name: (out / name).read_bytes() for name in tables}
    # a unit with no rows is refused, not read as a data set without detection rows
    unit = out / "units" / "seed-0-teacher-owl.json"
    unit.write_text(json.dumps({**json.loads(unit.read_text()), "rows": []}))
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "seed-0-teacher-owl.json" in err[-1] and "holds no rows" in err[-1]
    assert tables == {name: (out / name).read_bytes() for name in tables}


def test_command_refuses_a_bad_config_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[screen]\nteachers = ["unicorn"]\n')
    assert main(["screen", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "teachers" in err


def test_command_boundaries_are_one_line_errors(tmp_path, capsys):
    from sublim_theory.harness.runs import OutputFolder

    blocker = tmp_path / "file"
    blocker.write_text("")
    out = ["--out", str(tmp_path / "o")]
    cases = [
        ["--out", str(blocker / "sub")],  # a part of the path is a file
        [*out, "--cache", str(blocker)],  # the cache is a file
    ]
    if not torch.cuda.is_available():
        cases.append([*out, "--device", "cuda"])
    for extra in cases:
        assert main(["screen", "--config", str(TINY), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "error" in err, err
    assert main(["screen", *out, "--threads", "100000"]) == 2  # argparse: more than the CPUs
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    with OutputFolder(tmp_path / "busy", "screen"):  # another run holds the folder
        assert main(["screen", "--config", str(TINY), "--out", str(tmp_path / "busy")]) == 2
    assert "in use" in capsys.readouterr().err


def test_curvature_norms_match_explicit_jacobians_and_output_hessians():
    model, theta, x, y, probes = problem(seed=3)
    directions = S.trait_gradients(model, theta, probes)
    norms = S.curvature_norms(model, theta, x, y, soft_loss, directions, batch_size=7)
    jacobian = torch.func.jacrev(lambda t: model(t, x))(theta)  # (N, k, P)
    z0 = model(theta, x).detach()
    hessians = torch.stack(
        [
            torch.func.hessian(lambda z, i=i: soft_loss(z[None], y[i : i + 1]).sum())(z0[i])
            for i in range(x.shape[0])
        ]
    )  # (N, k, k)
    gauss_newton = torch.einsum("nap,nab,nbq->pq", jacobian, hessians, jacobian) / x.shape[0]
    expected = torch.einsum("kp,pq,kq->k", directions, gauss_newton, directions).sqrt()
    scale = float(expected.max())
    assert torch.allclose(norms, expected, rtol=0, atol=1e3 * U64 * model.num_params * scale)
