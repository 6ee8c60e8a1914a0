"""alignment_report shares its passes; each key must still equal the key computed the old way.

The old way is one public function per key (distillation_targets, student_update,
gauss_newton_product, taylor_coefficients, critical_step_check): separate forwards, a nested jvp
for B, a student gradient at eps*. The report now runs one dual forward recorded for reverse mode
(B from <v, H_c v>) and evaluates phi(eps*) from z0 and u = J v. Both are exact, so the keys may
differ by float64 rounding only. Error model: every key passes through a bounded number of
rounded sums of at most P + N k terms (P parameters, N k outputs), so a sum differs by at most
gamma = C (P + N k) u |terms| with u = 2^-53; C = 64 covers the few dozen chained roundings.
"""

import math

import pytest
import torch

import sublim_theory.engine.alignment as alignment
import sublim_theory.engine.report as report_module
from sublim_theory.engine.alignment import (
    distillation_targets,
    gauss_newton_product,
    student_update,
    taylor_coefficients,
)
from sublim_theory.engine.forward_ad import explicit_normalization
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.losses import KLDivergence, SoftCrossEntropy, SquaredError
from sublim_theory.engine.report import alignment_report, critical_step, critical_step_check
from sublim_theory.models.architectures import build_model, make_inputs

U = 2.0**-53
LOSSES = {
    "softmax_ce": SoftCrossEntropy(),
    "kl": KLDivergence(temperature=2.0),
    "squared": SquaredError(scale=0.5),
    "aux": SoftCrossEntropy(outputs=[3, 4]),
}
SIZES = dict(in_features=3, vocab_size=7, seq_len=4)


def _problem(arch, activation=None, n=6, seed=0, dtype=torch.float64):
    module = build_model(arch, 5, width=4, depth=2, seed=seed, activation=activation, **SIZES)
    model = FunctionalModel(module.to(dtype))
    inputs = make_inputs(arch, n, seed=seed + 1, **SIZES)
    inputs = inputs.to(dtype) if inputs.is_floating_point() else inputs
    v = torch.randn(model.num_params, generator=torch.Generator().manual_seed(seed + 2))
    return model, model.flat_params(), inputs, (v / torch.linalg.vector_norm(v)).to(dtype)


def _old_report(model, theta0, inputs, loss, v, eps, student=None, batch_size=None):
    """Each key by its own public function, as alignment_report computed them before."""
    student = theta0 if student is None else student
    targets = distillation_targets(model, theta0 + eps * v, inputs, batch_size)
    exact = student_update(model, student, inputs, targets, loss, batch_size)
    first = gauss_newton_product(model, theta0, inputs, loss, eps * v - (student - theta0))
    a, b = taylor_coefficients(model, theta0, inputs, loss, v, batch_size)
    star = critical_step_check(model, theta0, inputs, loss, v, a, b, batch_size)
    return exact, first, a, b, star


def _b_scale(model, theta0, inputs, loss, v):
    """E[|u| . |M w|] + E[|u| . |G[u, u]|]: the size of the terms B cancels between."""
    f = model.as_function(inputs)
    with explicit_normalization():
        (z0, u), (_, w) = torch.func.jvp(lambda t: torch.func.jvp(f, (t,), (v,)), (theta0,), (v,))
    parts = u.abs() * loss.hessian_vector_product(z0, w).abs()
    parts = parts + u.abs() * loss.target_curvature(z0, u).abs()
    return float(parts.sum()) / (z0.numel() // z0.shape[-1])


def _phi_scale(model, theta0, inputs, loss, v, eps):
    """E[sum |grad_z l(z0, y_eps) * u|]: the size of the terms phi(eps) cancels between."""
    z0, u = torch.func.jvp(model.as_function(inputs), (theta0,), (v,))
    targets = distillation_targets(model, theta0 + eps * v, inputs)
    gradient = loss.output_gradient(z0, targets)
    return float((gradient * u).abs().sum()) / (z0.numel() // z0.shape[-1])


def _assert_same_report(report, model, theta0, inputs, loss, v, eps, student=None, batch=None):
    exact, first, a, b, star = _old_report(model, theta0, inputs, loss, v, eps, student, batch)
    outputs = distillation_targets(model, theta0, inputs)
    gamma = 64 * (model.num_params + outputs.numel()) * U
    ne, nf, nv = (float(torch.linalg.vector_norm(x)) for x in (exact, first, v))

    def close(key, expected, tolerance):
        actual = getattr(report, key)
        assert abs(actual - expected) <= tolerance, (key, actual, expected, tolerance)

    close("norm_exact", ne, gamma * ne)
    close("norm_first_order", nf, gamma * nf)
    close("inner_exact", float(exact @ v), gamma * ne * nv)
    close("inner_first_order", float(first @ v), gamma * nf * nv)
    close("cos_exact_teacher", float(exact @ v) / (ne * nv), 4 * gamma)
    close("cos_first_order_teacher", float(first @ v) / (nf * nv), 4 * gamma)
    close("cos_exact_first_order", float(exact @ first) / (ne * nf), 4 * gamma)
    close("taylor_residual", float(torch.linalg.vector_norm(exact - first)) / ne, 2 * gamma)
    close("A", a, gamma * abs(a))
    b_tolerance = gamma * _b_scale(model, theta0, inputs, loss, v)
    close("B", b, b_tolerance)
    close("inner_second_order", eps * a + eps**2 * b, eps * gamma * abs(a) + eps**2 * b_tolerance)
    if not math.isfinite(critical_step(a, b)):
        assert math.isnan(report.eps_star_residual) and report.eps_star_note == star.note
        return
    eps_star = critical_step(a, b)
    close("eps_star", eps_star, eps_star * gamma * (1 + b_tolerance / abs(b) / gamma))
    # phi(eps*) differs by its own rounding and by phi' ~ -A times the shift of eps*
    relative_shift = gamma * (1 + b_tolerance / abs(b) / gamma)
    phi_tolerance = gamma * _phi_scale(model, theta0, inputs, loss, v, eps_star)
    close("eps_star_residual", star.residual, phi_tolerance / (eps_star * a) + 2 * relative_shift)
    assert report.eps_star_trusted == star.trusted


@pytest.mark.parametrize(
    ("arch", "activation", "loss_name", "seed"),
    [  # seeds with B < 0 (an eps* to check), and one with B >= 0
        ("mlp", "tanh", "softmax_ce", 2),
        ("mlp", "tanh", "softmax_ce", 0),
        ("mlp", "tanh", "aux", 0),
        ("cnn", "tanh", "kl", 0),
        ("resmlp", "gelu", "squared", 2),
        ("transformer", None, "softmax_ce", 0),  # layer norm and softmax: the replaced operators
        ("transformer", None, "kl", 0),
    ],
)
def test_shared_report_matches_each_key_computed_separately(arch, activation, loss_name, seed):
    model, theta0, inputs, v = _problem(arch, activation, seed=seed)
    loss, eps = LOSSES[loss_name], 1e-2
    report = alignment_report(model, v, inputs, loss, eps, theta0=theta0)
    _assert_same_report(report, model, theta0, inputs, loss, v, eps)


def test_chunked_and_offset_student_match_the_old_way():
    model, theta0, inputs, v = _problem("mlp", "tanh")
    loss, eps = LOSSES["aux"], 1e-2
    chunked = alignment_report(model, v, inputs, loss, eps, theta0=theta0, batch_size=4)
    _assert_same_report(chunked, model, theta0, inputs, loss, v, eps, batch=4)
    student = theta0 + 1e-3 * torch.randn(theta0.shape, generator=torch.Generator().manual_seed(9))
    offset = alignment_report(model, v, inputs, loss, eps, theta0=theta0, student_init=student)
    _assert_same_report(offset, model, theta0, inputs, loss, v, eps, student=student)


def test_fallback_without_reverse_over_forward_gives_the_same_report(monkeypatch):
    model, theta0, inputs, v = _problem("transformer")
    loss, eps = LOSSES["softmax_ce"], 1e-2

    def refuse(*args, **kwargs):
        raise RuntimeError("an operator reverse mode cannot cross")

    monkeypatch.setattr(report_module, "_report_kernel", refuse)
    report = alignment_report(model, v, inputs, loss, eps, theta0=theta0)
    _assert_same_report(report, model, theta0, inputs, loss, v, eps)


def test_the_report_runs_the_module_three_times_per_chunk():
    """Targets, the dual forward, the teacher at eps*: no other forward (no recomputation)."""
    model, theta0, inputs, v = _problem("mlp", "tanh", seed=2)
    calls = []
    model.module.register_forward_hook(lambda *args: calls.append(1))
    report = alignment_report(model, v, inputs, LOSSES["softmax_ce"], 1e-2, theta0=theta0)
    assert math.isfinite(report.eps_star), "the case must exercise the eps* check"
    assert len(calls) == 3
    calls.clear()
    alignment_report(model, v, inputs, LOSSES["softmax_ce"], 1e-2, theta0=theta0, batch_size=3)
    assert len(calls) == 3 * 2


def test_noise_floor_only_when_asked():
    model, theta0, inputs, v = _problem("mlp", "tanh", dtype=torch.float32)
    loss = LOSSES["softmax_ce"]
    assert alignment_report(model, v, inputs, loss, 1e-2).cosine_noise_floor is None
    asked = alignment_report(model, v, inputs, loss, 1e-2, noise_floor=True)
    double = FunctionalModel(build_model("mlp", 5, width=4, depth=2, seed=0, **SIZES))
    reference = student_update(
        double,
        theta0.double(),
        inputs.double(),
        distillation_targets(double, theta0.double() + 1e-2 * v.double(), inputs.double()),
        loss,
    )
    exact = alignment.student_update(
        model, theta0, inputs, distillation_targets(model, theta0 + 1e-2 * v, inputs), loss
    )
    expected = float(torch.linalg.vector_norm(exact.double() - reference)) / float(
        torch.linalg.vector_norm(reference)
    )
    # float32 rounding of the update: within the error model with u = 2^-24
    bound = 64 * (model.num_params + 5 * inputs.shape[0]) * 2.0**-24
    assert 0 < asked.cosine_noise_floor < bound
    # the shared pass rounds the float32 update differently, by the same order as the floor
    assert abs(asked.cosine_noise_floor - expected) <= asked.cosine_noise_floor


def test_transformer_takes_the_shared_pass_not_the_fallback(monkeypatch):
    """Layer norm and softmax are replaced by elementary ops, which reverse mode can cross."""
    model, theta0, inputs, v = _problem("transformer")

    def refuse(*args, **kwargs):
        raise AssertionError("fell back to the separate passes")

    monkeypatch.setattr(report_module, "_report_kernel_nested", refuse)
    alignment_report(model, v, inputs, LOSSES["softmax_ce"], 1e-2, theta0=theta0)


@pytest.mark.parametrize("arch", ["mlp", "transformer"])
def test_kernels_give_the_same_numbers_inside_and_outside_vmap(arch):
    """Outside torch.func transforms the kernels use dual tensors and plain autograd."""
    model, theta0, inputs, v = _problem(arch, "tanh" if arch == "mlp" else None)
    loss = LOSSES["kl"]
    targets = distillation_targets(model, theta0 + 1e-2 * v, inputs)
    thetas, vs = torch.stack([theta0, theta0]), torch.stack([v, -v])
    outputs = distillation_targets(model, theta0, inputs)
    gamma = 64 * (model.num_params + outputs.numel()) * U
    kernels = {
        "gauss_newton": lambda t, d: alignment.gauss_newton_kernel(model, t, inputs, loss, d),
        "first_order": lambda t, d: alignment.first_order_kernel(model, t, inputs, loss, d),
        "gradient": lambda t, d: alignment.student_update_kernel(model, t, inputs, targets, loss),
    }
    for name, kernel in kernels.items():
        batched = torch.func.vmap(kernel)(thetas, vs)
        for i in range(2):
            direct = kernel(thetas[i], vs[i])
            error = float(torch.linalg.vector_norm((direct - batched[i]).reshape(-1)))
            size = float(torch.linalg.vector_norm(direct.reshape(-1)))
            assert error <= gamma * size, (name, i, error, size)
