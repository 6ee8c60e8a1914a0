"""The fast student loop (model-major, feature-major activations, cached teacher logits, fused
Adam, in-place noise) trains the same students as the obvious loop, up to float32 rounding.

Error model: each step's gradient differs by the rounding of a differently ordered float32 sum
(relative C u, u = 2^-24, C = 64 for the few dozen chained roundings of a 3-layer MLP and its
loss), Adam's update is scale-free in the gradient, so after S steps each student's
displacement differs by at most about S C u relative.
"""

import math

import torch

from sublim_theory.harness.seeds import mixed_seed
from sublim_theory.studies.mnist.experiment import (
    MnistConfig,
    distillation_loss,
    flatten,
    forward,
    noise_block,
    reference_init,
    stack,
    student_groups,
    student_inits,
    train_students,
)

CONFIG = MnistConfig(models=3, hidden=(16, 16), batch_size=64, student_epochs=2, noise_images=160)


def obvious_students(config, teacher, initial, groups):
    """The loop as first written: noise regenerated and stacked, inputs repeated per group."""
    n_models, n_groups = config.models, len(groups)
    params = [p.clone().requires_grad_(True) for p in initial]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    aux_only = torch.tensor([g.aux_only for g in groups])
    generator = torch.Generator().manual_seed(mixed_seed(config.seed, 5))
    for _ in range(config.student_epochs):
        n_blocks = math.ceil(config.noise_images / config.batch_size)
        for block in torch.randperm(n_blocks, generator=generator).tolist():
            images = torch.stack([noise_block(config, i, block) for i in range(n_models)])
            with torch.no_grad():
                target = forward(teacher, images)
            logits = forward(params, images.repeat(n_groups, 1, 1))
            logits = logits.view(n_groups, n_models, *logits.shape[1:])
            loss = distillation_loss(logits[aux_only][..., 10:], target[..., 10:], 1.0).sum()
            loss = loss + distillation_loss(logits[~aux_only], target, 1.0).sum()
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            optimizer.step()
    return [p.detach() for p in params]


def test_fast_student_loop_matches_the_obvious_one():
    reference = stack([reference_init(CONFIG, i) for i in range(CONFIG.models)])
    generator = torch.Generator().manual_seed(0)
    teacher = [p + 0.05 * torch.randn(p.shape, generator=generator) for p in reference]
    groups = student_groups(CONFIG)
    initial = student_inits(CONFIG, reference, groups, [1, 2, 0])
    expected = flatten(obvious_students(CONFIG, teacher, initial, groups)) - flatten(initial)
    seen = []
    fast = train_students(CONFIG, teacher, initial, groups, on_epoch=lambda e, p: seen.append(e))
    actual = flatten(fast) - flatten(initial)
    steps = CONFIG.student_epochs * math.ceil(CONFIG.noise_images / CONFIG.batch_size)
    bound = steps * 64 * 2.0**-24
    relative = (actual - expected).norm(dim=1) / expected.norm(dim=1)
    assert relative.max() <= bound, relative
    assert seen == [1, 2]
    # the students come back group-major, as student_inits laid them out
    assert [p.shape for p in fast] == [p.shape for p in initial]
