"""The real-model benchmark rows end to end on a tiny random Llama (no timing assertions)."""

import json
import math

import pytest
import torch

from sublim_theory.cli.main import main
from sublim_theory.errors import InputError
from sublim_theory.models.pretrained import load_pretrained
from sublim_theory.studies.bench.real import (
    REAL_SIZES,
    number_examples,
    plain_greedy,
    plain_train,
    run_real_benchmarks,
)
from sublim_theory.testbeds.real_lm.generate import generate_ids, sample_from_ids
from sublim_theory.testbeds.real_lm.prompts import chat_ids
from sublim_theory.testbeds.real_lm.train import batch_indices, train_student
from sublim_theory.testing.tiny_llama import tiny_llama, tiny_tokenizer

PATHS = {
    "real_gradient",
    "real_gradient_module",
    "real_first_order",
    "real_gauss_newton",
    "real_report",
    "real_gradient_public",
    "real_first_order_public",
    "real_gauss_newton_public",
    "real_train_plain",
    "real_train_ours",
    "real_generate_plain",
    "real_generate_ours",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Llama directory whose matrices are scaled up (std 3 / sqrt(fan-in)).

    At the library's init (std 0.02) greedy decoding repeats one token whatever the prompt; the
    scaled model gives varied tokens, so equal greedy outputs say something.
    """
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("tiny_llama")
    lm = tiny_llama(0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in lm.parameters():
            if parameter.ndim == 2:
                noise = torch.randn(parameter.shape, generator=generator)
                parameter.copy_(3 * noise / parameter.shape[1] ** 0.5)
    lm.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory, load_pretrained(directory)


def float32_ulp(value: float) -> float:
    """The spacing of float32 numbers at ``value`` (float64's ulp times 2^(52 - 23))."""
    return math.ulp(value) * 2**29


def test_plain_training_loop_gives_the_same_losses_as_ours(tiny):
    _, pretrained = tiny
    lm, tokenizer = pretrained.model, pretrained.tokenizer
    examples = number_examples(6, seed=2)
    lengths = {len(chat_ids(tokenizer, p)) + len(c) for p, c in examples}
    assert len(lengths) > 1  # rows differ in length: padding is exercised
    batches = batch_indices(len(examples), 3, 3, 0)
    ours = train_student(
        lm, tokenizer, examples, method="lora", rank=2, steps=3, batch_size=3, lr=5e-2, seed=0
    ).losses
    plain = plain_train(lm, tokenizer, examples, batches, rank=2, lr=5e-2)
    # float32 rounding of a loss near log(259) ~ 5.6 (ulp 4.8e-7; measured: <= 1 ulp), carried
    # through two Adam steps: 64 ulps (3e-5); a different adapter init moves them by ~2.5e-3.
    for a, b in zip(ours, plain, strict=True):
        assert abs(a - b) <= 64 * float32_ulp(a), (ours, plain)
    other_seed = plain_train(lm, tokenizer, examples, batches, rank=2, lr=5e-2, seed=1)
    assert other_seed[0] == pytest.approx(plain[0], abs=1e-5)  # B_0 = 0: the base model's loss
    assert max(abs(a - b) for a, b in zip(other_seed[1:], plain[1:])) > 1e-3


def test_plain_generate_matches_ours_under_greedy_decoding(tiny):
    _, pretrained = tiny
    lm, tokenizer = pretrained.model, pretrained.tokenizer
    prompts = [p for p, _ in number_examples(4, seed=3)]
    encoded = [chat_ids(tokenizer, p) for p in prompts]
    stops = sorted({int(tokenizer.eos_token_id)} | {int(i) for i in tokenizer.all_special_ids})
    plain = plain_greedy(lm, tokenizer, prompts, 12, stops)
    ours = sample_from_ids(lm, tokenizer, encoded, temperature=0.0, max_new_tokens=12, batch_size=4)
    assert [list(c.token_ids) for c in ours] == plain
    assert len({tuple(row) for row in plain}) > 1 and len(set(plain[0])) > 2  # not one token

    # Rows that stop early: a token that some row emits after its first step ends the rows.
    stop = next(t for row in plain for t in row[1:] if t != row[0])
    cut = plain_greedy(lm, tokenizer, prompts, 12, [*stops, stop])
    greedy = generate_ids(
        lm,
        encoded,
        lambda logits, *_: logits.argmax(-1),
        max_new_tokens=12,
        stop_ids=[*stops, stop],
        pad=int(tokenizer.pad_token_id),
    )[0]
    assert cut == greedy
    assert any(0 < len(row) < 12 for row in cut)


def test_real_rows_end_to_end_from_the_cli(tiny, tmp_path):
    directory, _ = tiny
    (tmp_path / "bench.md").write_text("the committed table\n")
    status = main(
        [
            "bench", "--real", "--real-model", str(directory), "--size", "tiny",
            "--runs", "2", "--threads", "1", "--out", str(tmp_path),
        ]
    )  # fmt: skip
    assert status == 0
    assert (tmp_path / "bench.md").read_text() == "the committed table\n"  # left alone
    record = json.loads((tmp_path / "bench_real.json").read_text())
    rows = record["rows"]
    assert {(r["path"], r["run"]) for r in rows} == {(p, run) for p in PATHS for run in (1, 2)}
    for row in rows:
        assert row["seconds"] > 0 and row["ratio"] > 0 and row["load"] is not None
        assert row["dtype"] == "float32"
    ours_train = [r for r in rows if r["path"] == "real_train_ours"]
    assert all(r["loss_max_abs_diff"] < 1e-4 for r in ours_train)
    ours_generate = [r for r in rows if r["path"] == "real_generate_ours"]
    assert all(r["outputs_equal"] == REAL_SIZES["tiny"]["prompts"] for r in ours_generate)
    combined = {c["path"]: c for c in record["combined"]}
    for path in ("real_first_order", "real_gauss_newton", "real_train_ours"):
        assert combined[path]["met"] in ("yes", "NO", "mixed (1/2)")
        assert len(combined[path]["ratio"]) == 2
    table = (tmp_path / "bench_real.md").read_text()
    assert "| alignment |" in table and "greedy outputs equal 2/2" in table
    assert json.loads((tmp_path / "environment_real.json").read_text())["torch_threads"] == 1


def test_bad_arguments_are_refused_before_loading(tmp_path):
    with pytest.raises(InputError, match="size"):
        run_real_benchmarks(tmp_path, "unused", size="huge")
    with pytest.raises(InputError, match="runs"):
        run_real_benchmarks(tmp_path, "unused", size="tiny", runs=0)
    with pytest.raises(InputError):
        run_real_benchmarks(tmp_path, tmp_path / "no-model-here", size="tiny", runs=1)


def test_real_and_screen_only_together_are_refused(tmp_path, capsys):
    status = main(["bench", "--real", "--screen-only", "--size", "tiny", "--out", str(tmp_path)])
    assert status == 2
    assert "--real and --screen-only" in capsys.readouterr().err
    assert not (tmp_path / "bench_real.json").exists() and not (tmp_path / "bench.json").exists()


def test_decoding_runs_in_inference_mode_and_leaves_the_model_trainable(tiny):
    _, pretrained = tiny
    lm, tokenizer = pretrained.model, pretrained.tokenizer
    encoded = [chat_ids(tokenizer, p) for p, _ in number_examples(2, seed=3)]
    modes = []

    def pick(logits, generated, done, step):
        modes.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
        return logits.argmax(-1)

    generate_ids(lm, encoded, pick, max_new_tokens=3, stop_ids=[], pad=tokenizer.pad_token_id)
    assert modes == [(True, False)] * 3
    assert not torch.is_inference_mode_enabled()
    # Nothing decoding created stays in the model: a gradient through it still works.
    parameters = [p for p in lm.parameters() if p.requires_grad]
    assert parameters
    value = lm(input_ids=torch.tensor([encoded[0]])).logits.square().mean()
    grads = torch.autograd.grad(value, parameters)
    assert all(bool(torch.isfinite(g).all()) for g in grads) and float(grads[0].abs().sum()) > 0
