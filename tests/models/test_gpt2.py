import pytest
import torch
from torch.func import functional_call, jvp, vmap

pytest.importorskip("transformers")

from sublim_theory.engine.functional import FunctionalModel  # noqa: E402
from sublim_theory.engine.losses import make_loss  # noqa: E402
from sublim_theory.engine.report import alignment_report
from sublim_theory.errors import InputError  # noqa: E402
from sublim_theory.models.gpt2 import GPT2Logits, build_gpt2  # noqa: E402
from sublim_theory.studies.init_distance import expand_jobs, run_configuration, validate_config  # noqa: E402


@pytest.fixture(scope="module")
def model():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_gpt2(vocab_size=12, width=8, depth=1, seq_len=5, seed=0)
    torch.set_num_threads(previous)


def test_forward_returns_last_position_logits(model):
    tokens = torch.randint(0, 12, (3, 5))
    assert model(tokens).shape == (3, 12)
    assert model.gpt2.config._attn_implementation == "eager"
    assert not model.training


def test_jvp_matches_central_differences(model):
    """Forward mode works through eager attention: the slope of (f(t+h) - f(t-h)) / 2h is 2."""
    functional = FunctionalModel(model)
    theta = functional.flat_params()
    tangent = torch.randn(
        theta.shape, generator=torch.Generator().manual_seed(1), dtype=theta.dtype
    )
    tokens = torch.randint(0, 12, (4, 5), generator=torch.Generator().manual_seed(2))
    _, derivative = jvp(functional.as_function(tokens), (theta,), (tangent,))
    errors = []
    for h in (1e-2, 5e-3):
        plus, minus = (
            functional(theta + h * tangent, tokens),
            functional(theta - h * tangent, tokens),
        )
        errors.append(((plus - minus) / (2 * h) - derivative).norm().item())
    assert errors[1] < errors[0] / 3  # second-order convergence: error / 4 per halving


def test_vmap_over_stacked_parameters(model):
    params = {n: p.detach() for n, p in model.named_parameters()}
    stacked = {n: torch.stack([p, p * 1.01]) for n, p in params.items()}
    tokens = torch.randint(0, 12, (2, 5))
    out = vmap(lambda p: functional_call(model, p, (tokens,)))(stacked)
    torch.testing.assert_close(out[0], model(tokens))


def test_engine_report_on_gpt2(model):
    functional = FunctionalModel(model)
    theta = functional.flat_params()
    direction = torch.randn(
        theta.shape, generator=torch.Generator().manual_seed(3), dtype=theta.dtype
    )
    tokens = torch.randint(0, 12, (6, 5), generator=torch.Generator().manual_seed(4))
    report = alignment_report(functional, direction, tokens, make_loss("softmax_ce"), 1e-4)
    assert report.cos_exact_first_order > 0.999
    assert report.A > 0


def test_one_gpt2_sweep_configuration_runs_with_vmap():
    config = validate_config(
        {
            "grid": {
                "architectures": ["gpt2"],
                "eps": [1e-3],
                "seeds": 2,
                "placements": {"shared": [0.0]},
            },
            "model": {"width": 8, "depth": 1},
            "measure": {"n_inputs": 6, "n_teacher_inputs": 6},
            "trajectory": {"steps": 1},
        }
    )
    rows = run_configuration(expand_jobs(config, "cpu")[0])
    one_step = [r for r in rows if r["measurement"] == "one_step"]
    assert len(one_step) == 2 and all(r["batching"] == "vmap" for r in rows)
    assert all(r["cos_exact_teacher"] > 0 for r in one_step)


def test_bad_gpt2_sizes():
    with pytest.raises(InputError, match="divisible"):
        GPT2Logits(vocab_size=8, d_model=6, n_heads=4)
    with pytest.raises(InputError, match="integer tokens"):
        build_gpt2(8, 8, 1)(torch.zeros(2, 3))
