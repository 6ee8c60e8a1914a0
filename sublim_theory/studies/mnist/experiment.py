"""The paper's MNIST auxiliary-logit experiment (Cloud et al. 2025, Fig. 10), N models at once.

Setup (the official code of Cloud et al. 2025, arXiv 2507.14805; every value is a field of
``MnistConfig``):

* MLP 784-256-256-(10+m), ReLU; weights N(0, 1/d_in), biases 0 (the *reference* init theta_0^i of
  model i). Pixels in [-1, 1].
* Teacher i: theta_0^i trained with Adam on cross-entropy over the 10 regular logits.
* Students: start from a reference init and are distilled with Adam on
  KL(softmax(z_T / T) || softmax(z_S / T)) over the m auxiliary logits (``aux``) or all 10 + m
  logits (``all``), on a FIXED set of uniform[-1, 1] noise images that belongs to model i and is
  reused every epoch. ``own`` students start from theta_0^i (the theorem's shared init);
  ``cross`` students start from theta_0^{pi(i)} for a derangement pi (no model keeps its own).
* Optionally the student init is theta + s * std(tensor) * N(0, I) per tensor
  (``sublim_theory.engine.placements``, kind ``scaled_noise``).

Batching: every parameter tensor carries a leading model axis ``(M, ...)``; layers are batched
matmuls (``torch.baddbmm``). The loss is the SUM over models of each model's own batch-mean loss,
so model j's gradient is exactly the gradient of its own loss (a mean over models, as
``KLDivLoss(reduction="batchmean")`` on a ``(models, batch, k)`` tensor gives, would scale every
gradient by 1/M). Adam is elementwise, so one ``torch.optim.Adam`` over the stacked tensors is M
independent Adams (they share only the step counter, which is equal anyway).

The fixed noise set is stored as seeds, not pixels: block b of model i is regenerated from a
generator seeded by (seed, i, b) when visited (memory O(batch), not 188 MB per model). Each epoch
visits the blocks in a fresh random order. Student variants (optimizer, MSE loss, gaussian or real
inputs, spliced heads) are in ``sublim_theory.testbeds.mnist.variants``.

Theorem link (theory/alignment.md): to first order the shared-init student's update is
K(eps v) with K positive semi-definite, so cos(student update, teacher displacement) >= 0. The
experiment records cos(theta_S(epoch) - theta_S(0), theta_T^i - theta_0^i) over the full flat
parameter vector after every student epoch, for every student; for a cross-model student the
direction is still its teacher's displacement, which its own init does not share (expected ~0).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sublim_theory.engine.alignment import batched_cosine
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.losses import KLDivergence
from sublim_theory.engine.placements import place_student
from sublim_theory.errors import InputError
from sublim_theory.harness.runs import bound
from sublim_theory.harness.seeds import TAGS, mixed_seed
from sublim_theory.models.architectures import MLP
from sublim_theory.testbeds.mnist.data import N_CLASSES, N_PIXELS, MnistData
from sublim_theory.testbeds.mnist.variants import (
    HEAD_KINDS,
    draw_inputs,
    make_student_optimizer,
    mse_distillation_loss,
    splice_heads,
)

__all__ = [
    "LIMITS",
    "PAPER_TEACHER_STEPS",
    "DEFAULT_STUDENTS",
    "STUDENT_KINDS",
    "ExperimentResult",
    "MnistConfig",
    "Params",
    "StudentGroup",
    "accuracy",
    "derangement",
    "distillation_loss",
    "flatten",
    "forward",
    "layer_sizes",
    "noise_block",
    "reference_init",
    "run_experiment",
    "stack",
    "student_groups",
    "student_inits",
    "train_students",
    "train_teachers",
    "unflatten",
]

# The paper's teacher sees 5 epochs of 60,000 digits at batch 1024: 5 * ceil(60000/1024) steps.
PAPER_TEACHER_STEPS = 5 * math.ceil(60_000 / 1024)
DEFAULT_STUDENTS = ("aux", "all", "cross_aux", "cross_all")
STUDENT_KINDS = (*DEFAULT_STUDENTS, *HEAD_KINDS)

Params = list[Tensor]  # [W1, b1, W2, b2, ..., W_out, b_out], each with a leading model axis
# Upper bounds of the config (issue 24: ``noise_images = 10**12`` died allocating the block
# order): far above any run this CPU/GPU code can finish, below an allocation failure.
LIMITS = {
    "models": 10_000,
    "width": 100_000,
    "images": 10_000_000,
    "epochs": 100_000,
    "rate": 1e6,
}


@dataclass(frozen=True)
class MnistConfig:
    """Every knob of the experiment; defaults are the paper's code except ``teacher_epochs``.

    Built from a TOML table and flags by ``runs.parse_config``: each
    field's type is enforced (``student_epochs = true`` and ``hidden = [32.9]`` are refused, not
    coerced), floats must be finite, and each ``bound`` below is checked.

    Attributes:
        models: N, the number of independent teacher/student families trained at once.
        aux_logits: m, the number of auxiliary logits appended to the 10 regular ones.
        hidden: hidden widths of the MLP.
        lr: Adam learning rate of teachers and students.
        weight_decay: Adam (L2) weight decay of teachers and students.
        batch_size: batch size of teachers and students.
        teacher_epochs: teacher epochs; ``None`` (auto) picks the epoch count whose number of
            Adam steps is closest to the paper's 5 epochs of 60,000 digits (295 steps): 5 on full
            MNIST, 74 on the embedded 4,000 training digits.
        student_epochs: student epochs over the noise set.
        noise_images: size of each model's fixed noise set.
        temperature: softmax temperature of the distillation KL.
        student_noise: init-noise scales s (s * per-tensor std); one student group per value.
        students: which student kinds to train, from ``STUDENT_KINDS``: ``aux``/``all`` start
            from the model's own reference init; ``cross_aux``/``cross_all`` (the controls)
            from another model's, via a derangement (needs ``models >= 2``); the head kinds
            ``randbody_aux``/``randaux_aux``/``randclass_aux`` splice the partner's body, aux
            rows or class rows into the own init (``variants.splice_heads``).
        student_optimizer: ``adam`` (the paper), ``sgd`` or ``signsgd`` (``variants``).
        student_lr: the students' learning rate; ``None`` means ``lr``.
        distillation_loss: ``kl`` (the paper) or ``mse`` on the distilled logits.
        distillation_inputs: ``uniform`` [-1, 1] noise (the paper), ``gaussian`` N(0, 1) noise
            or ``real`` training digits (which the teacher saw).
        seed: master seed (inits, data order, noise, derangement).

    """

    models: int = field(default=10, metadata=bound(ge=1, le=LIMITS["models"]))
    aux_logits: int = field(default=3, metadata=bound(ge=1, le=LIMITS["width"]))
    hidden: tuple[int, ...] = field(default=(256, 256), metadata=bound(ge=1, le=LIMITS["width"]))
    lr: float = field(default=3e-4, metadata=bound(gt=0, le=LIMITS["rate"]))
    weight_decay: float = field(default=0.0, metadata=bound(ge=0, le=LIMITS["rate"]))
    batch_size: int = field(default=1024, metadata=bound(ge=1, le=LIMITS["images"]))
    teacher_epochs: int | None = field(default=None, metadata=bound(ge=1, le=LIMITS["epochs"]))
    student_epochs: int = field(default=5, metadata=bound(ge=1, le=LIMITS["epochs"]))
    noise_images: int = field(default=60_000, metadata=bound(ge=1, le=LIMITS["images"]))
    temperature: float = field(default=1.0, metadata=bound(gt=0, le=LIMITS["rate"]))
    student_noise: tuple[float, ...] = field(default=(0.0,), metadata=bound(ge=0, le=1e6))
    students: tuple[str, ...] = DEFAULT_STUDENTS
    seed: int = field(default=0, metadata=bound(ge=0, lt=2**31))
    student_optimizer: Literal["adam", "sgd", "signsgd"] = "adam"
    student_lr: float | None = field(default=None, metadata=bound(gt=0, le=LIMITS["rate"]))
    distillation_loss: Literal["kl", "mse"] = "kl"
    distillation_inputs: Literal["uniform", "gaussian", "real"] = "uniform"

    def __post_init__(self) -> None:
        """Refuse the settings no single field's range rules out (kinds, widths, noise, controls)."""
        # the checks that span fields or elements (scalar types and ranges: ``parse``)
        unknown = [kind for kind in self.students if kind not in STUDENT_KINDS]
        if unknown or not self.students or len(set(self.students)) != len(self.students):
            raise InputError(
                f"students must be distinct kinds from {list(STUDENT_KINDS)}, got "
                f"{list(self.students)}"
            )
        if not self.hidden or min(self.hidden) < 1:
            raise InputError(f"hidden widths must be positive integers, got {list(self.hidden)}")
        if not self.student_noise or min(self.student_noise) < 0:
            raise InputError(f"student_noise scales must be >= 0, got {list(self.student_noise)}")
        if self.controls and self.models < 2:
            raise InputError(
                "the cross-model control and the head students need at least 2 models (no "
                "derangement of 1 model exists); use --models 2 or more, or train only aux/all"
            )

    @property
    def controls(self) -> bool:
        """Whether any student takes parts of another model's init (which needs a derangement)."""
        return any(kind.startswith("cross") or kind in HEAD_KINDS for kind in self.students)

    @property
    def resolved_student_lr(self) -> float:
        """``student_lr``, or ``lr`` when it is not set."""
        return self.lr if self.student_lr is None else self.student_lr

    @classmethod
    def field_names(cls) -> list[str]:
        """The names of the fields, in order (the keys a config file may hold)."""
        return [f.name for f in fields(cls)]

    def resolved_teacher_epochs(self, n_train: int) -> int:
        """``teacher_epochs``, or the auto value matching the paper's number of teacher steps."""
        if self.teacher_epochs is not None:
            return self.teacher_epochs
        return max(1, round(PAPER_TEACHER_STEPS / math.ceil(n_train / self.batch_size)))


@dataclass(frozen=True)
class StudentGroup:
    """One kind of student, N models of it: its init source, its distilled logits and its noise."""

    name: str
    kind: str  # one of STUDENT_KINDS
    noise: float

    @property
    def cross(self) -> bool:
        """Whether the students start from another model's reference init (the cross-model control)."""
        return self.kind.startswith("cross")

    @property
    def spliced(self) -> bool:
        """Whether the students start from a head-spliced init (``variants.splice_heads``)."""
        return self.kind in HEAD_KINDS

    @property
    def aux_only(self) -> bool:
        """Whether the students imitate the auxiliary logits only (else all logits)."""
        return self.kind.endswith("aux")


def student_groups(config: MnistConfig) -> list[StudentGroup]:
    """The selected kinds (``student_aux``, ``student_all``, ``cross_aux``, ``cross_all``) per s."""
    kinds = [kind for kind in STUDENT_KINDS if kind in config.students]
    groups = []
    for s in config.student_noise:
        suffix = "" if len(config.student_noise) == 1 else f"@s={s:g}"
        for kind in kinds:
            base = kind if kind.startswith("cross") or kind in HEAD_KINDS else f"student_{kind}"
            groups.append(StudentGroup(base + suffix, kind, s))
    return groups


@dataclass
class ExperimentResult:
    """Per-model accuracies and per-epoch cosines; ``report`` turns them into the paper's table."""

    config: dict[str, object]
    data: dict[str, object]
    teacher_epochs: int
    derangement: list[int]
    reference: list[float]
    teacher: list[float]
    groups: dict[str, dict[str, object]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# the batched MLP
# --------------------------------------------------------------------------------------------
def layer_sizes(config: MnistConfig) -> list[int]:
    """The MLP's widths: 784 pixels, the hidden widths, 10 + m logits."""
    return [N_PIXELS, *config.hidden, N_CLASSES + config.aux_logits]


def reference_init(config: MnistConfig, model_index: int) -> Params:
    """Model ``model_index``'s theta_0: weights N(0, 1/d_in), biases 0 (no model axis)."""
    generator = torch.Generator().manual_seed(
        mixed_seed(config.seed, TAGS["mnist.reference_init"], model_index)
    )
    sizes = layer_sizes(config)
    params: Params = []
    for d_in, d_out in zip(sizes[:-1], sizes[1:]):
        params.append(torch.randn(d_out, d_in, generator=generator) / math.sqrt(d_in))
        params.append(torch.zeros(d_out))
    return params


def stack(models: Sequence[Params]) -> Params:
    """M models' parameter lists as one list of tensors with a leading model axis."""
    return [torch.stack(tensors) for tensors in zip(*models)]


def forward(params: Params, inputs: Tensor) -> Tensor:
    """Logits ``(M, B, 10 + m)`` of M stacked MLPs; ``inputs`` is ``(M, B, 784)`` or ``(B, 784)``."""
    n_models = params[0].shape[0]
    hidden = inputs if inputs.ndim == 3 else inputs.expand(n_models, *inputs.shape)
    n_layers = len(params) // 2
    for layer in range(n_layers):
        weight, bias = params[2 * layer], params[2 * layer + 1]
        hidden = torch.baddbmm(bias.unsqueeze(1), hidden, weight.transpose(1, 2))
        if layer < n_layers - 1:
            hidden = torch.relu(hidden)
    return hidden


def flatten(params: Params) -> Tensor:
    """``(M, P)``: each model's parameters as one flat vector, in ``MLP``'s parameter order."""
    return torch.cat([p.detach().reshape(p.shape[0], -1) for p in params], dim=1)


def unflatten(flat: Tensor, like: Params) -> Params:
    """Flat rows (M, P) back to stacked tensors shaped like ``like``."""
    sizes = [p[0].numel() for p in like]
    return [
        c.reshape(flat.shape[0], *p.shape[1:])
        for c, p in zip(torch.split(flat, sizes, dim=1), like)
    ]


@torch.no_grad()
def accuracy(params: Params, images: Tensor, labels: Tensor, chunk: int = 2048) -> Tensor:
    """Per-model test accuracy ``(M,)`` of the argmax over the 10 regular logits."""
    correct = torch.zeros(params[0].shape[0], device=params[0].device)
    for start in range(0, len(labels), chunk):
        logits = forward(params, images[start : start + chunk])[..., :N_CLASSES]
        correct += (logits.argmax(-1) == labels[start : start + chunk]).sum(-1)
    return correct / len(labels)


def derangement(n: int, seed: int) -> list[int]:
    """A uniformly random permutation of range(n) with no fixed point (rejection sampling)."""
    if n < 2:
        raise InputError(f"a derangement needs at least 2 models, got {n}")
    generator = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=generator)
        if not bool((perm == torch.arange(n)).any()):
            return perm.tolist()


def noise_block(
    config: MnistConfig, model_index: int, block: int, train_images: Tensor | None = None
) -> Tensor:
    """Images ``block * batch ... `` of model ``model_index``'s fixed distillation set.

    Uniform [-1, 1] noise by default, else ``config.distillation_inputs`` (``real`` draws from
    ``train_images``, on the CPU); ``variants.draw_inputs`` with the block's own generator.

    Returns:
        The images ``(size, 784)``.

    """
    start = block * config.batch_size
    size = min(config.batch_size, config.noise_images - start)
    generator = torch.Generator().manual_seed(
        mixed_seed(config.seed, TAGS["mnist.noise_block"], model_index, block)
    )
    out = torch.empty(size, N_PIXELS)
    return draw_inputs(config.distillation_inputs, generator, out, train_images)


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Per-model KL(softmax(t / T) || softmax(s / T)), summed over classes, mean over batch: ``(M,)``.

    The engine's ``KLDivergence`` (no T^2 factor), so the experiment and the theory share one loss.

    Returns:
        The loss per model.

    """
    targets = teacher_logits.expand_as(student_logits)  # one teacher for every student group
    return KLDivergence(temperature).value(student_logits, targets).mean(-1)


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
def train_teachers(config: MnistConfig, reference: Params, data: MnistData, epochs: int) -> Params:
    """Adam on each model's own cross-entropy (10 regular logits), each with its own data order."""
    params = [p.clone().requires_grad_(True) for p in reference]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    n_models, n_train = config.models, len(data.train_labels)
    generator = torch.Generator().manual_seed(mixed_seed(config.seed, TAGS["mnist.teacher_order"]))
    for _ in range(epochs):
        order = torch.rand(n_models, n_train, generator=generator).argsort(dim=1)
        order = order.to(data.train_labels.device)
        for start in range(0, n_train, config.batch_size):
            index = order[:, start : start + config.batch_size]
            logits = forward(params, data.train_images[index])[..., :N_CLASSES]
            per_model = F.cross_entropy(
                logits.reshape(-1, N_CLASSES),
                data.train_labels[index].reshape(-1),
                reduction="none",
            )
            loss = per_model.view(n_models, -1).mean(1).sum()  # sum over models: independent grads
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            optimizer.step()
    return [p.detach() for p in params]


def student_inits(
    config: MnistConfig, reference: Params, groups: Sequence[StudentGroup], perm: Sequence[int]
) -> Params:
    """Stacked student inits ``(G * N, ...)``: group-major, own or deranged reference + noise."""
    n_models = config.models
    flat_reference = flatten(reference)
    shape_model = FunctionalModel(
        MLP(N_PIXELS, list(config.hidden), layer_sizes(config)[-1], "relu")
    )
    rows = []
    for group_index, group in enumerate(groups):
        for i in range(n_models):
            theta0 = flat_reference[perm[i] if group.cross else i]
            if group.spliced:
                own, partner = [p[i] for p in reference], [p[perm[i]] for p in reference]
                theta0 = torch.cat([p.reshape(-1) for p in splice_heads(own, partner, group.kind)])
            if group.noise > 0:
                seed = mixed_seed(config.seed, TAGS["mnist.student_noise"], group_index, i)
                theta0 = place_student(shape_model, theta0, "scaled_noise", group.noise, seed)
            rows.append(theta0)
    return unflatten(torch.stack(rows), reference)


def _model_major(p: Tensor, n_groups: int) -> Tensor:
    """(G * N, ...) group-major -> (N * G, ...) model-major: model i's G students adjacent."""
    return p.reshape(n_groups, -1, *p.shape[1:]).transpose(0, 1).reshape(p.shape)


def _group_major(p: Tensor, n_groups: int) -> Tensor:
    """The inverse of :func:`_model_major`."""
    return p.reshape(-1, n_groups, *p.shape[1:]).transpose(0, 1).reshape(p.shape)


def _students_forward(params: Params, images: Tensor, n_groups: int) -> Tensor:
    """Logits ``(N, G, B, k)`` of the G students of each of N models, params model-major.

    Activations are kept feature-major, ``(N * G, width, B)``: the first layer is ONE batched
    matmul per model for all its G students (they see the same images, so the images are not
    copied G times), and every later layer is a batched matmul of contiguous operands.

    Returns:
        The logits.

    """
    n_models, batch = images.shape[0], images.shape[1]
    n_layers = len(params) // 2
    hidden = images.transpose(1, 2)  # (N, 784, B), a view
    for layer in range(n_layers):
        weight, bias = params[2 * layer], params[2 * layer + 1]
        if layer == 0:  # (N, G * width, 784) @ (N, 784, B): all G students of model i at once
            width = weight.shape[1]
            weight = weight.reshape(n_models, n_groups * width, -1)
            bias = bias.reshape(n_models, n_groups * width)
        hidden = torch.baddbmm(bias.unsqueeze(-1), weight, hidden)
        if layer < n_layers - 1:
            # in place (baddbmm's backward does not need its output), and before any view:
            # an in-place op on a view would make autograd copy the base in the backward
            hidden = torch.relu_(hidden)
        if layer == 0:
            hidden = hidden.view(n_models * n_groups, width, batch)
    return hidden.view(n_models, n_groups, -1, batch).transpose(-1, -2)


def train_students(
    config: MnistConfig,
    teacher: Params,
    initial: Params,
    groups: Sequence[StudentGroup],
    on_epoch: Callable[[int, Params], None] | None = None,
    train_images: Tensor | None = None,
    epoch_losses: list[list[float]] | None = None,
) -> Params:
    """Distill every student group at once from ``initial`` (``student_inits``); final params.

    Student ``g * N + i`` imitates teacher i on model i's noise set (``noise_block``; the CPU
    ``train_images`` are needed for ``distillation_inputs = "real"``), with
    ``config.student_optimizer`` at ``config.resolved_student_lr`` and
    ``config.distillation_loss``. ``on_epoch(epoch, params)`` is called after every epoch
    (1-based) with the current parameters; ``epoch_losses``, if given, gets one list per epoch:
    each student's mean distillation loss over that epoch's blocks (group-major, as ``initial``).

    Speed: model-major students (:func:`_students_forward`), one reused input buffer, teacher
    logits computed once per block (inputs and teachers are fixed), fused Adam.

    Returns:
        The final parameters.

    """
    n_models, n_groups = config.models, len(groups)
    params = [_model_major(p, n_groups).clone().requires_grad_(True) for p in initial]
    optimizer = make_student_optimizer(
        config.student_optimizer, params, config.resolved_student_lr, config.weight_decay
    )
    objective = (  # per-student losses (N, groups)
        mse_distillation_loss
        if config.distillation_loss == "mse"
        else functools.partial(distillation_loss, temperature=config.temperature)
    )
    device = initial[0].device
    aux_only = [g.aux_only for g in groups]
    aux_index = torch.tensor([i for i, a in enumerate(aux_only) if a], device=device)
    all_index = torch.tensor([i for i, a in enumerate(aux_only) if not a], device=device)
    n_blocks = math.ceil(config.noise_images / config.batch_size)
    generator = torch.Generator().manual_seed(mixed_seed(config.seed, TAGS["mnist.student_order"]))
    # drawn on the CPU (its generators), so every device sees the same noise images
    buffer = torch.empty(n_models, min(config.batch_size, config.noise_images), N_PIXELS)
    teacher_logits: dict[int, Tensor] = {}

    def current() -> Params:
        return [_group_major(p.detach(), n_groups) for p in params]

    for epoch in range(1, config.student_epochs + 1):
        epoch_loss = torch.zeros(n_models, n_groups, device=device)
        for block in torch.randperm(n_blocks, generator=generator).tolist():
            start = block * config.batch_size
            size = min(config.batch_size, config.noise_images - start)
            images = buffer[:, :size]
            for i in range(n_models):  # as noise_block(config, i, block), in place
                block_generator = torch.Generator().manual_seed(
                    mixed_seed(config.seed, TAGS["mnist.noise_block"], i, block)
                )
                draw_inputs(config.distillation_inputs, block_generator, images[i], train_images)
            images = images.to(device)
            if block not in teacher_logits:
                with torch.no_grad():
                    teacher_logits[block] = forward(teacher, images).unsqueeze(1)
            target = teacher_logits[block]  # (N, 1, B, k)
            student_logits = _students_forward(params, images, n_groups)  # (N, G, B, k)
            loss = torch.zeros((), device=device)
            if len(aux_index):
                aux = student_logits.index_select(1, aux_index)[..., N_CLASSES:]
                per_student = objective(aux, target[..., N_CLASSES:])  # (N, groups)
                epoch_loss.index_add_(1, aux_index, per_student.detach())
                loss = loss + per_student.sum()
            if len(all_index):
                every = student_logits.index_select(1, all_index)
                per_student = objective(every, target)
                epoch_loss.index_add_(1, all_index, per_student.detach())
                loss = loss + per_student.sum()
            optimizer.zero_grad(set_to_none=True)  # backward's gradients become .grad
            loss.backward()  # sum over models: each model's gradient is its own loss's
            optimizer.step()
        if epoch_losses is not None:
            epoch_losses.append((epoch_loss / n_blocks).T.reshape(-1).tolist())
        if on_epoch is not None:
            on_epoch(epoch, current())
    return current()


def run_experiment(
    config: MnistConfig,
    data: MnistData,
    log: Callable[[str], None] | None = None,
    device: torch.device | str = "cpu",
    teachers: dict[tuple, tuple[Params, float]] | None = None,
) -> ExperimentResult:
    """Train N teachers and every student group; per-model accuracies and per-epoch cosines.

    Inits, data order and noise images are drawn on the CPU and moved to ``device``, so a run
    on CUDA trains from the same numbers as one on the CPU. ``teachers``, if given, is a cache
    the caller keeps across runs: runs whose teachers are trained identically (same models,
    sizes, lr, weight decay, batch, teacher epochs and seed) train them once.

    Returns:
        The result.

    """
    log = log or (lambda message: None)
    train_images = data.train_images  # the CPU copy: real distillation inputs are drawn here
    data = data.to(device)
    groups = student_groups(config)
    n_models = config.models
    teacher_epochs = config.resolved_teacher_epochs(len(data.train_labels))
    perm = (
        derangement(n_models, mixed_seed(config.seed, TAGS["mnist.derangement"]))
        if config.controls
        else list(range(n_models))
    )
    clock = time.perf_counter()
    reference_cpu = stack([reference_init(config, i) for i in range(n_models)])
    reference = [p.to(device) for p in reference_cpu]
    fixed = ("models", "aux_logits", "hidden", "lr", "weight_decay", "batch_size", "seed")
    key = (*(getattr(config, name) for name in fixed), teacher_epochs, str(device))
    if teachers is not None and key in teachers:
        teacher, teacher_seconds = teachers[key]
        log("teachers: reused from an earlier run with the same teacher settings")
    else:
        teacher = train_teachers(config, reference, data, teacher_epochs)
        teacher_seconds = time.perf_counter() - clock
        if teachers is not None:
            teachers[key] = (teacher, teacher_seconds)
    result = ExperimentResult(
        config=asdict(config),
        data=data.describe(),
        teacher_epochs=teacher_epochs,
        derangement=perm,
        reference=accuracy(reference, data.test_images, data.test_labels).tolist(),
        teacher=accuracy(teacher, data.test_images, data.test_labels).tolist(),
    )
    log(
        f"teachers: {teacher_epochs} epochs, accuracy {np.mean(result.teacher):.3f} "
        f"({teacher_seconds:.1f}s)"
    )
    teacher_displacement = flatten(teacher) - flatten(reference)  # (N, P)
    for group in groups:
        result.groups[group.name] = {"kind": group.kind, "student_noise": group.noise}
        for name in ("accuracy", "cosine", "distillation_loss"):
            result.groups[group.name][f"{name}_per_epoch"] = []
    initial = [p.to(device) for p in student_inits(config, reference_cpu, groups, perm)]
    initial_flat = flatten(initial)

    def record(epoch: int, params: Params) -> None:
        accuracies = accuracy(params, data.test_images, data.test_labels).view(len(groups), -1)
        updates = (flatten(params) - initial_flat).view(len(groups), n_models, -1)
        for g, group in enumerate(groups):
            entry = result.groups[group.name]
            entry["accuracy_per_epoch"].append(accuracies[g].tolist())
            entry["cosine_per_epoch"].append(
                batched_cosine(updates[g], teacher_displacement).tolist()
            )
        summary = ", ".join(f"{g.name} {accuracies[i].mean():.3f}" for i, g in enumerate(groups))
        log(f"student epoch {epoch}: {summary} ({time.perf_counter() - clock:.1f}s)")

    losses: list[list[float]] = []
    train_students(config, teacher, initial, groups, record, train_images, losses)
    for g, entry in enumerate(result.groups.values()):
        entry["accuracy"] = entry["accuracy_per_epoch"][-1]
        for epoch_loss in losses:
            entry["distillation_loss_per_epoch"].append(
                epoch_loss[g * n_models : (g + 1) * n_models]
            )
    result.seconds = {
        "teachers": teacher_seconds,
        "total": time.perf_counter() - clock,
    }
    return result
