import math

import pytest
import torch
import torch.nn.functional as F

from sublim_theory.engine.alignment import TeacherTask, batched_cosine, distillation_targets
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.losses import make_loss
from sublim_theory.engine.report import alignment_report
from sublim_theory.engine.trajectories import (
    StackedOptimizer,
    map_over_seeds,
    student_trajectory,
)
from sublim_theory.errors import InputError
from sublim_theory.models.architectures import build_model, make_inputs

SEEDS = (0, 1, 2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is fastest, and much faster on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _problem(arch="mlp", eps=1e-3):
    """Stacked per-seed inits, teacher directions, targets and data for a tiny model."""
    models = [FunctionalModel(build_model(arch, 4, width=6, depth=1, seed=s)) for s in SEEDS]
    theta0 = torch.stack([m.flat_params() for m in models])
    x = torch.stack([make_inputs(arch, 12, seed=10 + s, distribution="uniform") for s in SEEDS])
    xt = torch.stack([make_inputs(arch, 12, seed=20 + s) for s in SEEDS])
    labels = torch.stack(
        [torch.randint(0, 4, (12,), generator=torch.Generator().manual_seed(s)) for s in SEEDS]
    )
    model = models[0]
    directions, targets = [], []
    for i in range(len(SEEDS)):
        task = TeacherTask(F.cross_entropy, xt[i], labels[i])
        v = task.update(model, theta0[i])
        directions.append(v)
        targets.append(distillation_targets(model, theta0[i] + eps * v, x[i]))
    return model, theta0, x, torch.stack(targets), torch.stack(directions), xt, labels


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_stacked_optimizer_matches_torch_optim(name):
    torch.manual_seed(0)
    target = torch.randn(3, 5, dtype=torch.float64)
    start = torch.randn(3, 5, dtype=torch.float64)
    ours = StackedOptimizer(name, 0.05)
    theta = start.clone()
    reference = start.clone().requires_grad_(True)
    optimizer = (torch.optim.SGD if name == "sgd" else torch.optim.Adam)([reference], lr=0.05)
    for _ in range(6):
        theta = ours.step(theta, 2 * (theta - target) ** 3 + (theta - target))
        optimizer.zero_grad()
        ((reference - target) ** 4 / 2 + (reference - target) ** 2 / 2).sum().backward()
        optimizer.step()
    torch.testing.assert_close(theta, reference.detach(), rtol=1e-12, atol=1e-12)


def test_map_over_seeds_vmap_equals_loop():
    def function(a, b):
        return {"inner": (a * b).sum(), "scaled": a * b.norm()}

    a, b = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    batched, looped = map_over_seeds(function, True)(a, b), map_over_seeds(function, False)(a, b)
    for key in batched:
        torch.testing.assert_close(batched[key], looped[key])


def test_batched_cosine_zero_vector_is_nan():
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    cos = batched_cosine(a, b)
    assert cos[0].item() == pytest.approx(1 / math.sqrt(2))
    assert math.isnan(cos[1].item())


@pytest.mark.parametrize("arch", ["mlp", "transformer"])
def test_first_sgd_step_is_the_engine_one_step_update(arch):
    """Oracle: step 1 of SGD is lr * dtheta_S, so its cosine with v is the engine's cos_exact."""
    model, theta0, x, y, v, xt, labels = _problem(arch)
    loss = make_loss("softmax_ce")
    records = student_trajectory(
        model, loss, theta0, x, y, v, F.cross_entropy, xt, labels, "sgd", 0.3, steps=2
    )
    for i in range(len(SEEDS)):
        report = alignment_report(model, v[i], x[i], loss, 1e-3, theta0=theta0[i])
        assert records["cos_step_teacher"][i, 1].item() == pytest.approx(
            report.cos_exact_teacher, abs=1e-9
        )
        assert records["cos_displacement_teacher"][i, 1].item() == pytest.approx(
            report.cos_exact_teacher, abs=1e-9
        )
        assert math.isnan(records["cos_step_teacher"][i, 0].item())
        teacher_loss = F.cross_entropy(model(theta0[i], xt[i]), labels[i]).item()
        assert records["teacher_loss"][i, 0].item() == pytest.approx(teacher_loss, rel=1e-12)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_vmap_and_loop_trajectories_agree(optimizer):
    model, theta0, x, y, v, xt, labels = _problem()
    loss = make_loss("softmax_ce")
    common = (model, loss, theta0, x, y, v, F.cross_entropy, xt, labels, optimizer, 1e-3, 4)
    batched = student_trajectory(*common, use_vmap=True)
    looped = student_trajectory(*common, use_vmap=False)
    for key in batched:
        assert batched[key].shape == (len(SEEDS), 5)
        torch.testing.assert_close(batched[key], looped[key], equal_nan=True)


def test_shared_init_sgd_stays_aligned_and_imitation_loss_falls():
    model, theta0, x, y, v, xt, labels = _problem()
    records = student_trajectory(
        model,
        make_loss("softmax_ce"),
        theta0,
        x,
        y,
        v,
        F.cross_entropy,
        xt,
        labels,
        "sgd",
        0.1,
        steps=5,
    )
    assert (records["cos_displacement_teacher"][:, 1:] > 0.3).all()
    assert (records["imitation_loss"][:, -1] < records["imitation_loss"][:, 0]).all()


@pytest.mark.parametrize(
    ("name", "lr", "steps", "message"),
    [
        ("rmsprop", 0.1, 3, "unknown optimizer"),
        ("sgd", -1.0, 3, "learning rate"),
        ("sgd", 0.1, 0, "steps"),
    ],
)
def test_bad_trajectory_arguments(name, lr, steps, message):
    model, theta0, x, y, v, xt, labels = _problem()
    with pytest.raises(InputError, match=message):
        student_trajectory(
            model,
            make_loss("squared"),
            theta0,
            x,
            y,
            v,
            F.cross_entropy,
            xt,
            labels,
            name,
            lr,
            steps,
        )
