"""A straightforward batched implementation of the MNIST auxiliary-logit recipe (the baseline).

What a researcher would write first: N MLPs 784-256-256-(10+m) stacked along a model axis and
run with ``torch.baddbmm``, one ``torch.optim.Adam`` over the stacked tensors, and each model's
fixed set of uniform[-1, 1] noise images generated once and STORED (N x 60,000 x 784 floats).
Same recipe as ``sublim_theory.studies.mnist.experiment`` (inits N(0, 1/d_in) and zero biases, Adam
lr 3e-4, batch 1024, teachers on cross-entropy over the 10 regular logits, students distilled
by KL at temperature 1 over the m auxiliary logits or all logits, own and deranged inits), but
its own random streams: the accuracies agree in distribution, not number for number.

Usage: ``python benchmarks/mnist_baseline.py OUT.json [--models 10] [--teacher-epochs 5] ...``;
writes the per-model test accuracy of each student group and of the teachers.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from sublim_theory.testbeds.mnist.data import load_mnist

KINDS = ("student_aux", "student_all", "cross_aux", "cross_all")


def forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits (M, B, k) of M stacked MLPs on inputs (M, B, 784)."""
    for layer in range(len(params) // 2):
        weight, bias = params[2 * layer], params[2 * layer + 1]
        x = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
        if layer < len(params) // 2 - 1:
            x = torch.relu(x)
    return x


def kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher) || softmax(student)) summed over classes, mean over the batch: (M,)."""
    log_p = torch.log_softmax(teacher, -1)
    return (log_p.exp() * (log_p - torch.log_softmax(student, -1))).sum(-1).mean(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--aux", type=int, default=3)
    parser.add_argument("--teacher-epochs", type=int, default=5)
    parser.add_argument("--student-epochs", type=int, default=5)
    parser.add_argument("--noise-images", type=int, default=60_000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    n, batch, lr = args.models, args.batch, 3e-4
    data = load_mnist()
    sizes = [784, 256, 256, 10 + args.aux]
    start = time.perf_counter()

    reference = []
    for d_in, d_out in zip(sizes[:-1], sizes[1:]):
        reference += [torch.randn(n, d_out, d_in) / math.sqrt(d_in), torch.zeros(n, d_out)]

    # teachers: cross-entropy on the 10 regular logits, each model its own data order
    teacher = [p.clone().requires_grad_(True) for p in reference]
    optimizer = torch.optim.Adam(teacher, lr=lr)
    n_train = len(data.train_labels)
    for _ in range(args.teacher_epochs):
        order = torch.rand(n, n_train).argsort(dim=1)
        for s in range(0, n_train, batch):
            index = order[:, s : s + batch]
            logits = forward(teacher, data.train_images[index])[..., :10]
            loss = F.cross_entropy(
                logits.reshape(-1, 10), data.train_labels[index].reshape(-1), reduction="none"
            )
            optimizer.zero_grad()
            loss.view(n, -1).mean(1).sum().backward()
            optimizer.step()
    teacher = [p.detach() for p in teacher]

    # students: 4 groups of N, own or deranged init, on each model's stored noise images
    noise = 2 * torch.rand(n, args.noise_images, 784) - 1
    while True:
        perm = torch.randperm(n)
        if not bool((perm == torch.arange(n)).any()):
            break
    inits = [torch.cat([p, p, p[perm], p[perm]]) for p in reference]
    students = [p.clone().requires_grad_(True) for p in inits]
    optimizer = torch.optim.Adam(students, lr=lr)
    n_blocks = math.ceil(args.noise_images / batch)
    for _ in range(args.student_epochs):
        for block in torch.randperm(n_blocks).tolist():
            x = noise[:, block * batch : (block + 1) * batch]
            with torch.no_grad():
                target = forward(teacher, x)
            logits = forward(students, x.repeat(4, 1, 1)).view(4, n, x.shape[1], -1)
            loss = kl(logits[0, ..., 10:], target[..., 10:]).sum()
            loss = loss + kl(logits[1], target).sum()
            loss = loss + kl(logits[2, ..., 10:], target[..., 10:]).sum()
            loss = loss + kl(logits[3], target).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    def accuracy(params: list[torch.Tensor]) -> list[float]:
        with torch.no_grad():
            logits = forward(params, data.test_images.expand(params[0].shape[0], -1, -1))
        return (logits[..., :10].argmax(-1) == data.test_labels).double().mean(-1).tolist()

    final = accuracy([p.detach() for p in students])
    result = {
        "implementation": "baseline (benchmarks/mnist_baseline.py)",
        "teacher": accuracy(teacher),
        "groups": {kind: final[g * n : (g + 1) * n] for g, kind in enumerate(KINDS)},
        "seconds": time.perf_counter() - start,
    }
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
