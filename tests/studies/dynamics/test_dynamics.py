"""Per-step trait alignment and the projection ablation (``sublim_theory.studies.dynamics.experiment``).

Tolerances come from float32 rounding: u32 = 2^-24 is the unit roundoff of one float32 rounding;
a vector rounded entrywise to float32 moves by at most u32 times its norm, so an inner product
with it changes by at most u32 * ||a|| * ||b|| (Cauchy-Schwarz). The float64 arithmetic of the
projection adds at most ~P * u64 relative to ||a|| ||b|| (P terms summed).
"""

import math

import pytest
import torch
import torch.nn.functional as F

import sublim_theory.studies.dynamics.study as dynamics_command
from sublim_theory.cli.main import main
from sublim_theory.engine.alignment import batched_cosine, batched_dot, batched_norm
from sublim_theory.errors import InputError
from sublim_theory.harness.runs import CONFIG_DIR, parse_config
from sublim_theory.studies.dynamics.experiment import (
    GROUPS,
    DynamicsConfig,
    ablate_trait_component,
    adam_rule,
    adam_start,
    remove_random_component,
    start_state,
    train_epoch,
    trait_batch,
    trait_loss,
)
from sublim_theory.studies.dynamics.report import read_rows
from sublim_theory.studies.mnist.experiment import noise_block, reference_init, stack, unflatten

U32, U64 = 2.0**-24, 2.0**-53
TINY = dict(
    models=3, hidden=(16, 16), batch_size=64, teacher_epochs=3, noise_images=64, trait_digits=128
)


def _steps_and_gradients(seed=0, models=6, size=400):
    generator = torch.Generator().manual_seed(seed)
    step = torch.randn(models, size, generator=generator)
    gradient = torch.randn(models, size, generator=generator)
    # rows 0, 2, 4 lower the trait loss (<s, g> < 0), the others raise it
    sign = torch.tensor([-1.0 if i % 2 == 0 else 1.0 for i in range(models)])
    step = step + (sign * 0.5).unsqueeze(1) * gradient
    return step, gradient


# --------------------------------------------------------------------------------------------
# the two step edits
# --------------------------------------------------------------------------------------------
def test_ablation_removes_exactly_the_positive_component():
    step, gradient = _steps_and_gradients()
    lowers = batched_dot(step, -gradient) > 0
    assert lowers.tolist() == [True, False] * 3
    edited, removed = ablate_trait_component(step, gradient)
    size = step.shape[1]
    # ablated rows: <s', -g> = 0 up to the float32 rounding of s' (and the float64 sums)
    cos_after = batched_cosine(edited, -gradient)
    ratio = batched_norm(step) / batched_norm(edited)
    bound = U32 * 1.01 + 4 * size * U64 * ratio
    assert bool((cos_after[lowers].abs() <= bound[lowers]).all()), cos_after[lowers]
    # ... and what was taken away is along g, of norm |<s, g>| / ||g||
    taken = step.double() - edited.double()
    assert bool((batched_cosine(taken[lowers], -gradient[lowers]).abs() > 1 - 1e-6).all())
    expected = batched_dot(step, gradient).abs() / batched_norm(gradient)
    torch.testing.assert_close(removed[lowers], expected[lowers], rtol=4 * U32, atol=0)
    torch.testing.assert_close(batched_norm(taken)[lowers], removed[lowers], rtol=4 * U32, atol=0)
    # rows that already raise the trait loss are untouched, bit for bit
    assert torch.equal(edited[~lowers], step[~lowers])
    assert bool((removed[~lowers] == 0).all())


def test_ablation_refuses_mismatched_shapes():
    with pytest.raises(InputError, match="models, parameters"):
        ablate_trait_component(torch.zeros(2, 3), torch.zeros(2, 4))


def test_random_control_removes_the_same_norm_in_a_random_direction():
    step, gradient = _steps_and_gradients(seed=1)
    _, removed = ablate_trait_component(step, gradient)
    generator = torch.Generator().manual_seed(3)
    edited, directions = remove_random_component(step, removed, generator)
    taken = step.double() - edited.double()
    # same norm as the ablation removed, up to the float32 rounding of s' (|e| <= u32 ||s'||)
    slack = 2 * U32 * batched_norm(edited)
    assert bool(((batched_norm(taken) - removed).abs() <= slack).all())
    # along the unit direction u, which shortens the step (<s, u> >= 0) ...
    torch.testing.assert_close(batched_norm(directions), torch.ones(len(step), dtype=torch.float64))
    assert bool((batched_dot(step, directions) >= 0).all())
    # ... and carries nothing of the trait gradient: |cos(u, g)| ~ 1/sqrt(P), not ~1
    assert bool((batched_cosine(directions, gradient).abs() < 5 / math.sqrt(step.shape[1])).all())
    # rows the ablation left alone are left alone here too
    assert torch.equal(edited[removed == 0], step[removed == 0])


def test_random_control_refuses_negative_norms():
    with pytest.raises(InputError, match=">= 0"):
        remove_random_component(torch.zeros(2, 3), -torch.ones(2), torch.Generator())


def test_adam_on_the_flattened_stack_is_torch_adam_per_model():
    """The run's Adam (update_rules.Adam on all models' flat vectors at once) is torch.optim.Adam."""
    generator = torch.Generator().manual_seed(0)
    params = torch.randn(3, 50, generator=generator)
    lr = 1e-2
    rule = adam_rule(DynamicsConfig(lr=lr, weight_decay=0.01))
    state, ours = adam_start(rule, params), params.clone()
    theirs = params.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theirs], lr=lr, weight_decay=0.01)
    n_steps = 5
    for _ in range(n_steps):
        gradient = torch.randn(3, 50, generator=generator)
        step, state = rule(gradient.reshape(-1), ours.reshape(-1), state)
        ours = ours + step.view_as(ours)
        theirs.grad = gradient.clone()
        optimizer.step()
    # each step's entries agree to a few roundings of lr; the sums add one rounding of |theta|
    bound = n_steps * (8 * U32 * lr + 2 * U32 * theirs.detach().abs())
    assert bool(((ours - theirs.detach()).abs() <= bound).all())


def test_trait_digits_beyond_the_training_set_are_refused(fake_mnist):
    with pytest.raises(InputError, match="--trait-digits"):
        trait_batch(DynamicsConfig(trait_digits=301), fake_mnist(300, 100))


# --------------------------------------------------------------------------------------------
# one training step against a direct autograd computation
# --------------------------------------------------------------------------------------------
def _mlp(params, inputs):
    hidden = inputs
    for k in range(0, len(params), 2):
        hidden = F.linear(hidden, params[k], params[k + 1])
        if k < len(params) - 2:
            hidden = torch.relu(hidden)
    return hidden


def _direct_gradients(config, state, row, images, trait_images, trait_labels):
    """float64 gradients of one model's two losses by plain autograd (own KL, own MLP)."""
    like = stack([reference_init(config.mnist, 0)])
    params = [
        p[0].double().requires_grad_(True) for p in unflatten(state.flat[row : row + 1], like)
    ]
    teacher_row = row % config.models
    teacher = [p[0].double() for p in unflatten(state.teacher[teacher_row : teacher_row + 1], like)]
    temperature = config.temperature
    target = F.log_softmax(_mlp(teacher, images.double())[:, 10:] / temperature, -1)
    student = F.log_softmax(_mlp(params, images.double())[:, 10:] / temperature, -1)
    kl = (target.exp() * (target - student)).sum(-1).mean()
    distill = torch.cat([g.reshape(-1) for g in torch.autograd.grad(kl, params)])
    trait = F.cross_entropy(_mlp(params, trait_images.double())[:, :10], trait_labels)
    trait_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(trait, params)])
    return distill, trait_grad


@pytest.fixture(scope="module")
def one_step(fake_mnist):
    config = DynamicsConfig(student_epochs=1, **TINY)  # one noise block: one step per epoch
    data = fake_mnist(300, 100)
    before = start_state(config, data)
    after = train_epoch(config, data, before)
    return config, data, before, after


def test_logged_cosines_match_direct_autograd(one_step):
    config, data, before, after = one_step
    trait_images, trait_labels = trait_batch(config, data)
    n = config.models
    # float32 gradients differ from float64 ones by at most ~(reductions summed) * u32 relative
    reductions = 784 + config.batch_size + config.trait_digits + sum(config.hidden)
    gradient_error = reductions * U32
    for group in GROUPS:
        for i in range(n):
            row = GROUPS.index(group) * n + i
            images = noise_block(config.mnist, i, 0)
            distill, trait = _direct_gradients(
                config, before, row, images, trait_images, trait_labels
            )
            logged = after.steps["cos_trait_distill"][0, row]
            assert abs(float(logged) - float(batched_cosine(trait, distill))) <= 4 * gradient_error
            # the step actually applied (theta_1 - theta_0; each entry rounded once, by at most
            # u32 |theta_1|) against -grad L_trait
            step = after.flat[row].double() - before.flat[row].double()
            slack = 2 * U32 * float(batched_norm(after.flat[row])) / float(batched_norm(step))
            direct = float(batched_cosine(step, -trait))
            logged = float(after.steps["cos_step_trait"][0, row])
            assert abs(logged - direct) <= slack + 4 * gradient_error, (group, i)


def test_measured_effect_of_the_ablation_in_training(one_step):
    config, data, before, after = one_step
    n = config.models
    cos_step = after.steps["cos_step_trait"][0].view(len(GROUPS), n)
    removed = after.steps["removed"][0].view(len(GROUPS), n)
    student, ablated = GROUPS.index("student"), GROUPS.index("ablated")
    random = GROUPS.index("random")
    # the shared-init students' first Adam step lowers the trait loss (the theorem's sign) ...
    assert bool((cos_step[student] > 0).all()), cos_step[student]
    # ... the ablated ones' does not (zero up to float32 rounding), and the random control's
    # still does: a same-norm random edit leaves the step's trait component in place
    assert bool((cos_step[ablated].abs() <= 4 * U32).all()), cos_step[ablated]
    assert bool((cos_step[random] > 0.5 * cos_step[student]).all())
    # the edits of the random control have the ablation's norms, model by model
    edit = (after.flat - before.flat).view(len(GROUPS), n, -1)
    taken = batched_norm(edit[student].double() - edit[random].double())
    slack = 4 * U32 * batched_norm(after.flat.view(len(GROUPS), n, -1)[random])
    assert bool(((taken - removed[ablated]).abs() <= slack).all())
    # the measured trait loss after the step: the students' falls, the ablated ones' falls less
    trait_images, trait_labels = trait_batch(config, data)
    like = stack([reference_init(config.mnist, 0)])
    change = (
        trait_loss(unflatten(after.flat, like), trait_images, trait_labels)
        - trait_loss(unflatten(before.flat, like), trait_images, trait_labels)
    ).view(len(GROUPS), n)
    assert bool((change[student] < 0).all()), change[student]
    assert bool((change[ablated] > change[student]).all()), change


# --------------------------------------------------------------------------------------------
# the command: tiny run, tables, resume
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits(digit_folder):
    return digit_folder(300, 40)


def _argv(digits, out):
    config = str(CONFIG_DIR / "mnist_dynamics_tiny.toml")
    return ["dynamics", "--config", config, "--mnist-dir", str(digits), "--out", str(out)] + [
        "--quiet",
        "--trait-digits",
        "64",
    ]


def test_command_writes_tables_and_resumes_bit_for_bit(digits, tmp_path, monkeypatch, capsys):
    assert main(_argv(digits, tmp_path / "whole")) == 0
    real = dynamics_command.train_epoch

    def interrupted(config, data, state, log=None):
        if state.epoch == 1:
            raise KeyboardInterrupt
        return real(config, data, state, log)

    monkeypatch.setattr(dynamics_command, "train_epoch", interrupted)
    assert main(_argv(digits, tmp_path / "resumed")) == 130  # Ctrl-C after epoch 1 was stored
    assert (tmp_path / "resumed" / dynamics_command.STATE_NAME).is_file()
    monkeypatch.setattr(dynamics_command, "train_epoch", real)
    assert main(_argv(digits, tmp_path / "resumed")) == 0
    for name in ("steps.csv", "accuracy.csv", "table.md"):
        whole = (tmp_path / "whole" / name).read_text()
        assert whole == (tmp_path / "resumed" / name).read_text(), name
    assert not (tmp_path / "resumed" / dynamics_command.STATE_NAME).exists()
    rows = read_rows(tmp_path / "whole" / "steps.csv")
    config = parse_config(
        DynamicsConfig, {"models": 3, "noise_images": 512, "batch_size": 256}, "t"
    )
    assert len(rows) == len(GROUPS) * 3 * 2 * config.blocks  # groups x models x epochs x steps
    ablated = [r["cos_step_trait"] for r in rows if r["group"] == "ablated"]
    assert max(ablated) <= 4 * U32
    assert (tmp_path / "whole" / "dynamics.png").stat().st_size > 0
    assert "student - ablated" in capsys.readouterr().out
