"""Student variants (``sublim_theory.testbeds.mnist.variants``): optimizer, MSE loss, inputs, spliced heads.

Each test checks the mechanism on a tiny model in float64 against an independent computation:
one training step of ``train_students`` against autograd on one model's own loss, the spliced
inits against the reference inits they are cut from, the inputs against their sources.
"""

import pytest
import torch
import torch.nn.functional as F

from sublim_theory.errors import InputError
from sublim_theory.studies.mnist.experiment import (
    MnistConfig,
    forward,
    noise_block,
    reference_init,
    stack,
    student_groups,
    student_inits,
    train_students,
)
from sublim_theory.testbeds.mnist.data import N_CLASSES
from sublim_theory.testbeds.mnist.variants import SignSGD, mse_distillation_loss, splice_heads

EPS64 = torch.finfo(torch.float64).eps
# one step on one block of 32 inputs: noise_images == batch_size, one epoch
ONE_STEP = dict(hidden=(16, 16), batch_size=32, noise_images=32, student_epochs=1)


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _one_step(config, kinds=("aux",)):
    """(initial, final, teacher) of one student step; the teacher is another random init."""
    config = MnistConfig(**{**ONE_STEP, **config, "students": kinds})
    reference = stack([reference_init(config, i) for i in range(config.models)])
    teacher_config = MnistConfig(**{**ONE_STEP, "models": config.models, "seed": 99})
    teacher = stack([reference_init(teacher_config, i) for i in range(config.models)])
    generator = torch.Generator().manual_seed(7)
    teacher = [p + 0.1 * torch.randn(p.shape, generator=generator) for p in teacher]  # biases too
    groups = student_groups(config)
    initial = student_inits(config, reference, groups, list(range(1, config.models)) + [0])
    final = train_students(config, teacher, initial, groups)
    return config, initial, final, teacher


def _own_gradient(config, initial, teacher, i, loss):
    """Autograd gradient of model i's own loss on its block 0, one model at a time."""
    params = [p[i : i + 1].clone().requires_grad_(True) for p in initial]
    images = noise_block(config, i, 0)
    student = forward(params, images)[0, :, N_CLASSES:]
    target = forward([p[i : i + 1] for p in teacher], images)[0, :, N_CLASSES:]
    torch.autograd.backward(loss(student, target.detach()))
    return [p.grad[0] for p in params]


def _kl(student, target):  # KL(softmax(t) || softmax(s)), batch mean: independent of the engine
    return F.kl_div(
        F.log_softmax(student, -1),
        F.log_softmax(target, -1),
        log_target=True,
        reduction="batchmean",
    )


def test_signsgd_first_step_is_minus_lr_times_sign_of_the_gradient(float64):
    lr = 1e-3
    config, initial, final, teacher = _one_step(
        dict(models=3, student_optimizer="signsgd", student_lr=lr)
    )
    for i in range(3):
        grads = _own_gradient(config, initial, teacher, i, _kl)
        for g, before, after in zip(grads, initial, final):
            step = after[i] - before[i]
            # the gradient is a sum of at most 784 + 2 * 16 + 32 products per entry: entries
            # smaller than that count of float64 roundings of the largest may carry either sign
            decided = g.abs() > 1e3 * EPS64 * grads[-2].abs().max()
            expected = -lr * torch.sign(g)
            torch.testing.assert_close(step[decided], expected[decided], rtol=0, atol=4 * EPS64)
            assert bool(decided.any())
        # the class rows get no gradient from the aux-only loss: they do not move at all
        assert torch.equal(final[-2][i, :N_CLASSES], initial[-2][i, :N_CLASSES])


def test_signsgd_weight_decay_enters_inside_the_sign():
    p = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    p.grad = torch.tensor([-0.5, 0.5, 0.0])
    SignSGD([p], lr=0.1, weight_decay=1.0).step()  # g + wd p = [0.5, -1.5, 3.0]
    assert torch.equal(p.detach(), torch.tensor([0.9, -1.9, 2.9]))


def test_mse_gradient_is_the_closed_form(float64):
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 7, 4, generator=generator, requires_grad=True)  # (N, G, B, k)
    teacher = torch.randn(2, 1, 7, 4, generator=generator)
    loss = mse_distillation_loss(student, teacher)
    assert loss.shape == (2, 3)  # one value per student: a sum over students keeps them apart
    (grad,) = torch.autograd.grad(loss.sum(), student)
    closed = 2 * (student - teacher) / (7 * 4)
    torch.testing.assert_close(grad, closed.detach(), rtol=8 * EPS64, atol=0)


def test_sgd_mse_step_is_minus_lr_times_the_mse_gradient(float64):
    lr = 0.5
    config, initial, final, teacher = _one_step(
        dict(models=2, student_optimizer="sgd", student_lr=lr, distillation_loss="mse")
    )

    def mse(student, target):
        return ((student - target) ** 2).sum() / student.numel()

    for i in range(2):
        grads = _own_gradient(config, initial, teacher, i, mse)
        for g, before, after in zip(grads, initial, final):
            scale = g.abs().max() * lr
            # ~10^3 float64 roundings per entry (the sums above), relative to the largest step
            torch.testing.assert_close(
                after[i] - before[i], -lr * g, rtol=0, atol=1e3 * EPS64 * scale
            )


def test_adam_is_the_default_and_differs_from_sgd(float64):
    _, initial, adam, _ = _one_step(dict(models=2))
    _, _, explicit, _ = _one_step(dict(models=2, student_optimizer="adam", student_lr=3e-4))
    _, _, sgd, _ = _one_step(dict(models=2, student_optimizer="sgd"))
    assert all(torch.equal(a, b) for a, b in zip(adam, explicit))
    # Adam's first step is lr * sign(g) up to its epsilon; SGD at the same lr moves far less
    assert (adam[0] - initial[0]).abs().max() > 10 * (sgd[0] - initial[0]).abs().max()


def test_spliced_heads_take_exactly_the_named_rows_from_the_partner():
    config = MnistConfig(models=3, aux_logits=4, **ONE_STEP)
    own, partner = reference_init(config, 0), reference_init(config, 1)
    body = slice(0, -2)
    own[-1] += torch.arange(14.0)  # biases are 0 at init: make their rows tell apart
    partner[-1] -= torch.arange(14.0)
    randaux = splice_heads(own, partner, "randaux_aux")
    randclass = splice_heads(own, partner, "randclass_aux")
    randbody = splice_heads(own, partner, "randbody_aux")
    for index in (-2, -1):
        assert torch.equal(randaux[index][:N_CLASSES], own[index][:N_CLASSES])
        assert torch.equal(randaux[index][N_CLASSES:], partner[index][N_CLASSES:])
        assert torch.equal(randclass[index][:N_CLASSES], partner[index][:N_CLASSES])
        assert torch.equal(randclass[index][N_CLASSES:], own[index][N_CLASSES:])
        assert torch.equal(randbody[index], own[index])
    for a, b, c, o, p in zip(
        randaux[body], randclass[body], randbody[body], own[body], partner[body]
    ):
        assert torch.equal(a, o) and torch.equal(b, o) and torch.equal(c, p)
    with pytest.raises(InputError, match="head kind"):
        splice_heads(own, partner, "aux")


def test_student_inits_use_the_derangement_partner_for_head_kinds():
    kinds = ("aux", "cross_aux", "randbody_aux", "randaux_aux", "randclass_aux")
    config = MnistConfig(models=3, aux_logits=4, students=kinds, **ONE_STEP)
    reference = stack([reference_init(config, i) for i in range(3)])
    reference[-1] = torch.randn_like(reference[-1])  # nonzero biases
    perm = [2, 0, 1]
    groups = student_groups(config)
    assert [g.name for g in groups] == ["student_aux", *kinds[1:]]
    inits = student_inits(config, reference, groups, perm)
    for g, group in enumerate(groups):
        for i in range(3):
            got = [p[g * 3 + i] for p in inits]
            own, partner = [p[i] for p in reference], [p[perm[i]] for p in reference]
            expected = {"aux": own, "cross_aux": partner}.get(group.kind)
            expected = expected or splice_heads(own, partner, group.kind)
            assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_real_inputs_are_training_digits_and_fixed_per_block():
    train = torch.rand(50, 784) * 2 - 1
    config = MnistConfig(models=2, distillation_inputs="real", **{**ONE_STEP, "batch_size": 20})
    block = noise_block(config, 0, 0, train)
    matches = (block[:, None, :] == train[None, :, :]).all(-1)  # (20, 50)
    assert torch.equal(matches.sum(1), torch.ones(20, dtype=torch.long))  # each is one digit
    assert len(set(matches.float().argmax(1).tolist())) == 20  # distinct digits in a block
    assert torch.equal(block, noise_block(config, 0, 0, train))  # the same set every epoch
    assert not torch.equal(block, noise_block(config, 1, 0, train))  # model 1 has its own
    with pytest.raises(InputError, match="training digits"):
        noise_block(config, 0, 0, train[:10])


def test_uniform_default_is_the_historical_draw_and_gaussian_is_standard_normal():
    from sublim_theory.harness.seeds import mixed_seed

    sizes = {**ONE_STEP, "batch_size": 512, "noise_images": 512}
    config = MnistConfig(models=1, students=("aux",), **sizes)
    generator = torch.Generator().manual_seed(mixed_seed(config.seed, 2, 0, 0))
    assert torch.equal(noise_block(config, 0, 0), 2 * torch.rand(512, 784, generator=generator) - 1)
    gaussian = noise_block(
        MnistConfig(**{**config.__dict__, "distillation_inputs": "gaussian"}), 0, 0
    )
    n = gaussian.numel()
    # mean and variance of n standard normals: standard errors 1/sqrt(n) and sqrt(2/n); 5 sigma
    assert abs(gaussian.mean().item()) < 5 / n**0.5
    assert abs(gaussian.var().item() - 1) < 5 * (2 / n) ** 0.5
    assert gaussian.min() < -1  # not the uniform [-1, 1] set


def test_real_inputs_reach_the_trainer(float64):
    train = torch.rand(40, 784) * 2 - 1
    config = MnistConfig(models=2, students=("aux",), distillation_inputs="real", **ONE_STEP)
    reference = stack([reference_init(config, i) for i in range(2)])
    groups = student_groups(config)
    initial = student_inits(config, reference, groups, [0, 1])
    teacher = [p + 0.1 for p in reference]
    with pytest.raises(InputError, match="training digits"):
        train_students(config, teacher, initial, groups)  # no digits given
    uniform = train_students(
        MnistConfig(**{**config.__dict__, "distillation_inputs": "uniform"}),
        teacher,
        initial,
        groups,
    )
    real = train_students(config, teacher, initial, groups, train_images=train)
    assert not torch.equal(real[0], uniform[0])
