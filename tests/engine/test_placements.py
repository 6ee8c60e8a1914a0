import math

import pytest
import torch

from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.placements import (
    INDEPENDENT_PLACEMENTS,
    PLACEMENTS,
    expected_offset,
    head_names,
    independent_init,
    init_distance,
    place_student,
)
from sublim_theory.errors import InputError
from sublim_theory.models.architectures import build_model


@pytest.fixture(scope="module")
def model():
    return FunctionalModel(build_model("mlp", 4, width=32, depth=2, seed=0))


@pytest.fixture(scope="module")
def theta0(model):
    return model.flat_params()


def test_shared_is_theta0_and_distance_zero(model, theta0):
    student = place_student(model, theta0, "shared")
    assert torch.equal(student, theta0) and student is not theta0
    assert init_distance(student, theta0) == (0.0, 0.0)


def test_absolute_noise_has_distance_sigma_sqrt_p(model, theta0):
    sigma = 1e-3
    absolute, relative = init_distance(place_student(model, theta0, "noise", sigma, 1), theta0)
    assert absolute == pytest.approx(sigma * math.sqrt(model.num_params), rel=0.05)
    assert relative == pytest.approx(absolute / theta0.norm().item())


def test_scaled_noise_is_s_times_each_tensors_std(model, theta0):
    s = 0.1
    offset = place_student(model, theta0, "scaled_noise", s, 2) - theta0
    for name, piece, base in zip(
        model.names, torch.split(offset, model.sizes), torch.split(theta0, model.sizes)
    ):
        if base.numel() > 200:
            assert piece.std().item() == pytest.approx(s * base.std().item(), rel=0.15), name


def test_noise_is_linear_in_scale_and_seeded(model, theta0):
    small = place_student(model, theta0, "scaled_noise", 0.01, 3) - theta0
    large = place_student(model, theta0, "scaled_noise", 0.03, 3) - theta0
    torch.testing.assert_close(large, 3 * small)
    other = place_student(model, theta0, "scaled_noise", 0.01, 4) - theta0
    assert not torch.allclose(small, other)


def test_interpolation_moves_along_the_segment(model, theta0):
    other = independent_init(model, seed=7)
    full = init_distance(other, theta0)[0]
    for t in (0.0, 0.25, 1.0):
        student = place_student(model, theta0, "interpolate", t, independent=other)
        assert init_distance(student, theta0)[0] == pytest.approx(t * full)
    torch.testing.assert_close(
        place_student(model, theta0, "interpolate", 1.0, independent=other), other
    )


def test_independent_and_per_layer_sources(model, theta0):
    other = independent_init(model, seed=11)
    assert torch.equal(place_student(model, theta0, "independent", independent=other), other)
    head = set(head_names(model))
    assert head == {"4.weight", "4.bias"}
    body = place_student(model, theta0, "share_body", independent=other)
    head_only = place_student(model, theta0, "share_head", independent=other)
    for name, b, h, base, fresh in zip(
        model.names, *(torch.split(x, model.sizes) for x in (body, head_only, theta0, other))
    ):
        shared_body, shared_head = (fresh, base) if name in head else (base, fresh)
        assert torch.equal(b, shared_body) and torch.equal(h, shared_head), name


def test_independent_init_is_seeded_and_differs(model, theta0):
    a, b = independent_init(model, 5), independent_init(model, 5)
    assert torch.equal(a, b) and not torch.allclose(a, theta0)


@pytest.mark.parametrize(
    ("kind", "scale", "message"),
    [
        ("jitter", 0.1, "unknown student placement"),
        ("noise", -0.1, "must be >= 0"),
        ("interpolate", 1.5, r"\[0, 1\]"),
        ("noise", float("nan"), "must be >= 0"),
    ],
)
def test_bad_placements(model, theta0, kind, scale, message):
    with pytest.raises(InputError, match=message):
        place_student(model, theta0, kind, scale)


def test_bad_head_prefix(model, theta0):
    with pytest.raises(InputError, match="head prefix"):
        place_student(model, theta0, "share_body", head_prefix="decoder")


def test_every_kind_is_covered():
    assert set(PLACEMENTS) == {
        "shared",
        "noise",
        "scaled_noise",
        "interpolate",
        "independent",
        "share_body",
        "share_head",
    }


def test_noise_is_not_the_init_stream_replayed():
    """torch.manual_seed(s) initializes theta_0; noise with seed s must not replay that stream."""
    module = build_model("mlp", 3, width=4, seed=5)
    model = FunctionalModel(module)
    theta0 = model.flat_params()
    noise = place_student(model, theta0, "noise", 1.0, seed=5) - theta0
    torch.manual_seed(5)
    replay = torch.randn(theta0.numel(), dtype=torch.float64)
    assert abs(float(torch.nn.functional.cosine_similarity(noise, replay, dim=0))) < 0.5


def test_independent_init_leaves_global_rng_alone():
    model = FunctionalModel(build_model("mlp", 3, width=4))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    independent_init(model, seed=99)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("kind", PLACEMENTS)
def test_expected_offset_is_the_mean_over_independent_inits(kind):
    """E[Delta | theta_0] against the average of Delta over 400 independent inits.

    A transformer has constant coordinates (LayerNorm gains 1, biases 0) beside random ones. Per
    coordinate the average's error is sd / sqrt(n); over ~1e3 coordinates a |z| > 6 has
    probability < 1e-5, so 6 standard errors (plus float64 rounding) bound every coordinate.
    """
    module = build_model("transformer", 3, width=8, depth=1, vocab_size=5, seq_len=3, seed=0)
    net = FunctionalModel(module)
    theta = net.flat_params()
    draws = torch.stack(
        [
            place_student(net, theta, kind, 0.4, seed=s, independent=independent_init(net, 100 + s))
            - theta
            for s in range(400)
        ]
    )
    expected = expected_offset(net, theta, kind, 0.4, independent=independent_init(net, 99))
    error = draws.mean(0) - expected
    bound = 6 * draws.std(0) / math.sqrt(len(draws)) + 1e-12 * theta.abs().max()
    assert (error.abs() <= bound).all(), float((error.abs() - bound).max())
    constant = independent_init(net, 7) == theta
    assert constant.any() and (~constant).any()  # the model has both kinds of coordinate
    if kind in INDEPENDENT_PLACEMENTS:
        assert expected.abs().max() > 0
