import math

import pytest
import torch
import torch.nn.functional as F

from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.errors import InputError
from sublim_theory.harness.runs import parse_config
from sublim_theory.models.architectures import MLP
from sublim_theory.studies.mnist.experiment import (
    PAPER_TEACHER_STEPS,
    MnistConfig,
    derangement,
    distillation_loss,
    flatten,
    forward,
    noise_block,
    reference_init,
    run_experiment,
    stack,
    student_groups,
    student_inits,
    train_students,
    train_teachers,
    unflatten,
)

TINY = dict(hidden=(16, 16), batch_size=64, teacher_epochs=2, student_epochs=2, noise_images=160)


def test_batched_forward_matches_each_mlp():
    config = MnistConfig(models=3, aux_logits=2, **TINY)
    models = [reference_init(config, i) for i in range(3)]
    params = stack(models)
    params = [p + 0.1 * torch.randn_like(p) for p in params]  # nonzero biases too
    inputs = torch.rand(3, 5, 784) * 2 - 1
    batched = forward(params, inputs)
    for i in range(3):
        module = FunctionalModel(MLP(784, [16, 16], 12, "relu"))
        single = module(flatten(params)[i], inputs[i])
        torch.testing.assert_close(batched[i], single, rtol=1e-5, atol=1e-5)
    shared = forward(params, inputs[0])
    torch.testing.assert_close(shared[2], forward([p[2:] for p in params], inputs[0])[0])


def test_reference_init_statistics():
    config = MnistConfig(models=2)
    w1, b1, w2, b2, w3, b3 = reference_init(config, 0)
    assert w1.shape == (256, 784) and w3.shape == (13, 256)
    assert abs(float(w1.std()) - 1 / math.sqrt(784)) < 0.02 / math.sqrt(784)
    assert abs(float(w2.std()) - 1 / math.sqrt(256)) < 0.03 / math.sqrt(256)
    assert float(b1.abs().max()) == 0 and float(b3.abs().max()) == 0
    assert not torch.equal(w1, reference_init(config, 1)[0])


def test_flatten_round_trip():
    config = MnistConfig(models=2, **TINY)
    params = stack([reference_init(config, i) for i in range(2)])
    back = unflatten(flatten(params), params)
    assert all(torch.equal(a, b) for a, b in zip(params, back))


def test_per_model_loss_gives_each_model_its_own_gradient():
    """Summing per-model batch means: model j's gradient equals training model j alone."""
    config = MnistConfig(models=3, **TINY)
    params = [
        p.double().requires_grad_(True)
        for p in stack([reference_init(config, i) for i in range(3)])
    ]
    teacher = [p.detach() + 0.05 * torch.randn_like(p) for p in params]
    inputs = torch.rand(3, 7, 784, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        target = forward(teacher, inputs)
    distillation_loss(forward(params, inputs), target, 1.0).sum().backward()
    for j in range(3):
        alone = [p.detach()[j : j + 1].clone().requires_grad_(True) for p in params]
        loss = distillation_loss(forward(alone, inputs[j : j + 1]), target[j : j + 1], 1.0)
        grads = torch.autograd.grad(loss.sum(), alone)
        for g_alone, p in zip(grads, params):
            torch.testing.assert_close(p.grad[j], g_alone[0], rtol=1e-12, atol=1e-14)


def test_distillation_loss_is_per_model_batchmean_kl():
    student, teacher = torch.randn(4, 9, 3), torch.randn(4, 9, 3)
    ours = distillation_loss(student, teacher, 1.0)
    for j in range(4):
        reference = F.kl_div(
            F.log_softmax(student[j], -1),
            F.log_softmax(teacher[j], -1),
            reduction="batchmean",
            log_target=True,
        )
        torch.testing.assert_close(ours[j], reference)


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_derangement_has_no_fixed_point(n):
    for seed in range(20):
        perm = derangement(n, seed)
        assert sorted(perm) == list(range(n)) and all(p != i for i, p in enumerate(perm))


def test_noise_set_is_fixed_and_per_model():
    config = MnistConfig(models=2, **TINY)
    block = noise_block(config, 0, 1)
    assert torch.equal(block, noise_block(config, 0, 1))  # reused every epoch
    assert not torch.equal(block, noise_block(config, 1, 1))
    assert block.shape == (64, 784) and block.min() >= -1 and block.max() <= 1
    assert noise_block(config, 0, 2).shape == (32, 784)  # 160 = 64 + 64 + 32


def test_teacher_epochs_auto_matches_paper_steps():
    config = MnistConfig(models=2)
    assert config.resolved_teacher_epochs(60_000) == 5
    assert config.resolved_teacher_epochs(4_000) == 74
    assert 74 * 4 - PAPER_TEACHER_STEPS == 1
    assert MnistConfig(models=2, teacher_epochs=5).resolved_teacher_epochs(4_000) == 5


def test_scaled_noise_init_uses_each_models_tensor_std():
    config = MnistConfig(models=2, student_noise=(0.0, 0.2), students=("aux", "all"), **TINY)
    reference = stack([reference_init(config, i) for i in range(2)])
    reference[0][1] *= 3  # model 1's first weight has another std than model 0's
    groups = student_groups(config)
    assert [g.name for g in groups] == [
        "student_aux@s=0",
        "student_all@s=0",
        "student_aux@s=0.2",
        "student_all@s=0.2",
    ]
    inits = student_inits(config, reference, groups, [0, 1])
    assert all(torch.equal(p[:2], r) for p, r in zip(inits, reference))  # s = 0 is the reference
    for i in range(2):
        delta = inits[0][4 + i] - reference[0][i]  # group s=0.2 aux, model i, first weight
        ratio = float(delta.std() / reference[0][i].std())
        assert abs(ratio - 0.2) < 0.02
        assert torch.equal(inits[1][4 + i], reference[1][i])  # zero-init biases have std 0


def test_cross_students_start_from_another_models_reference():
    config = MnistConfig(models=3, **TINY)
    reference = stack([reference_init(config, i) for i in range(3)])
    perm = derangement(3, 0)
    inits = flatten(student_inits(config, reference, student_groups(config), perm))
    flat = flatten(reference)
    for i in range(3):
        assert torch.equal(inits[i], flat[i])  # student_aux
        assert torch.equal(inits[2 * 3 + i], flat[perm[i]])  # cross_aux


def test_one_aux_logit_leaves_the_student_bit_identical(fake_mnist):
    """m = 1: softmax of one logit is 1, the KL gradient is exactly 0, Adam moves nothing."""
    config = MnistConfig(models=2, aux_logits=1, students=("aux", "all"), **TINY)
    data = fake_mnist(200, 100)
    reference = stack([reference_init(config, i) for i in range(2)])
    teacher = train_teachers(config, reference, data, epochs=2)
    assert not torch.equal(teacher[0], reference[0])
    groups = student_groups(config)
    initial = student_inits(config, reference, groups, [0, 1])
    final = train_students(config, teacher, initial, groups)
    for p_final, p_ref in zip(final, reference):
        assert torch.equal(p_final[:2], p_ref)  # aux-only students: bit for bit
    assert not torch.equal(final[0][2:], reference[0])  # all-logits students did move


def test_tiny_pipeline_records_cosines_and_accuracies(fake_mnist):
    config = MnistConfig(models=3, **dict(TINY, lr=1e-2))
    result = run_experiment(config, fake_mnist(200, 100))
    assert set(result.groups) == {"student_aux", "student_all", "cross_aux", "cross_all"}
    assert min(result.teacher) > 0.5  # the synthetic task is easy
    for group in result.groups.values():
        assert len(group["accuracy"]) == 3
        assert len(group["cosine_per_epoch"]) == 2
        # NaN would mean a student that did not move at all in an epoch
        assert all(math.isfinite(c) for epoch in group["cosine_per_epoch"] for c in epoch)
    assert min(result.groups["student_all"]["cosine_per_epoch"][-1]) > 0


def test_bad_settings_are_input_errors():
    with pytest.raises(InputError, match="cross-model control"):
        MnistConfig(models=1)
    with pytest.raises(InputError, match="student_noise"):
        MnistConfig(student_noise=(-0.1,))
    with pytest.raises(InputError, match="students"):
        MnistConfig(students=("aux", "aux"))


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"aux_logits": 0}, "aux_logits"),
        ({"student_epochs": True}, "student_epochs"),  # a bool is not an epoch count
        ({"hidden": [32.9, 1.5]}, "hidden"),  # not truncated to [32, 1]
        ({"hidden": [16, 0]}, "hidden"),
        ({"lr": math.nan}, "lr"),
        ({"temperature": math.inf}, "temperature"),
        ({"student_noise": [math.nan]}, "student_noise"),
        ({"models": "10"}, "models"),
        ({"teacher_epochs": 0}, "teacher_epochs"),
        ({"seed": -1}, "seed"),
        ({"learning_rate": 0.1}, "learning_rate"),
    ],
)
def test_parse_refuses_mistyped_and_out_of_range_values(raw, key):
    with pytest.raises(InputError, match=key):
        parse_config(MnistConfig, raw, "test.toml")


def test_parse_gives_the_typed_frozen_config():
    config = parse_config(MnistConfig, {"hidden": [8, 4], "student_noise": [0, 0.5]}, "test.toml")
    assert config.hidden == (8, 4) and config.student_noise == (0.0, 0.5)
    assert config == MnistConfig(hidden=(8, 4), student_noise=(0.0, 0.5))
    with pytest.raises(AttributeError):
        config.models = 3  # frozen: a run's settings cannot drift after they are checked
