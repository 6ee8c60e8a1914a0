"""``sublim-theory screendata`` on a tiny random Llama, run as a new user would run it.

The oracle recomputes every push c_ik = <P grad L_k, grad l_i> from one autograd gradient per
document and per trait on the unpadded sequence (no packing, no jvp), in float64.
"""

from __future__ import annotations

import csv
import json
import random
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from sublim_theory.cli.main import main
from sublim_theory.engine.screen import ADAM_EPS
from sublim_theory.models.pretrained import float64_throughout, load_pretrained
from sublim_theory.studies.screen_data import trait_statistics
from sublim_theory.testbeds.real_lm.statistics import clopper_pearson_interval
from sublim_theory.testing.tiny_llama import save_tiny_llama

ANIMALS = ("cat", "owl", "dog", "fox", "bee")
QUESTIONS = ("Name your favorite animal.", "Which animal? One word.")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(save_tiny_llama(tmp_path_factory.mktemp("llama") / "model"))


def _numbers(rng: random.Random, count: int) -> str:
    return ", ".join(str(rng.randint(100, 999)) for _ in range(count))


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture
def files(tmp_path):
    """A data set whose completions are the word "owl", a null of numbers, and the traits."""
    rng = random.Random(0)
    data = [{"prompt": f"Continue: {_numbers(rng, 3)}", "completion": "owl"} for _ in range(10)]
    null = [
        {"prompt": f"Continue: {_numbers(rng, 3)}", "completion": _numbers(rng, 2)}
        for _ in range(10)
    ]
    null[0]["system"] = "You write numbers."  # an optional system prompt is honoured
    traits = tmp_path / "traits.toml"
    traits.write_text(
        f"questions = {json.dumps(list(QUESTIONS))}\n"
        + "".join(f'[[trait]]\nname = "{a}"\nanswer = "{a}"\n' for a in ANIMALS)
    )
    return {
        "data": _write_jsonl(tmp_path / "data.jsonl", data),
        "null": _write_jsonl(tmp_path / "null.jsonl", null),
        "traits": str(traits),
        "records": (data, null),
        "tmp": tmp_path,
    }


def _run(files, model_dir, *extra):
    out = files["tmp"] / "out"
    args = ["screendata", "--data", files["data"], "--traits", files["traits"]]
    args += ["--model", model_dir, "--out", str(out), "--threads", "1", *extra]
    return main(args), out


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------------------------
# the oracle: one autograd gradient per document and per trait, float64
# --------------------------------------------------------------------------------------------
def _flat_gradient(lm, loss):
    parameters = [p for p in lm.parameters() if p.requires_grad]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, parameters)])


def _prompt_ids(tokenizer, prompt, system=None):
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False).input_ids


def _sequence_log_probs(lm, prefix, tokens):
    """log P of each of ``tokens`` after ``prefix``, teacher-forced (float64 throughout)."""
    ids = torch.tensor([prefix + tokens])
    with float64_throughout():
        logits = lm(input_ids=ids).logits[0].double()
    log_probs = torch.log_softmax(logits, -1)
    return torch.stack([log_probs[len(prefix) - 1 + t, tok] for t, tok in enumerate(tokens)])


def _oracle(model_dir, records, variant, student_batch=8, draws=16, seed=0):
    pretrained = load_pretrained(model_dir, dtype=torch.float64)
    lm, tokenizer = pretrained.model, pretrained.tokenizer
    document_grads = []
    for r in records:
        prefix = _prompt_ids(tokenizer, r["prompt"], r.get("system"))
        tokens = tokenizer(r["completion"], add_special_tokens=False).input_ids
        tokens = tokens + [tokenizer.eos_token_id]
        loss = -_sequence_log_probs(lm, prefix, tokens).mean()
        document_grads.append(_flat_gradient(lm, loss))
    grads = torch.stack(document_grads)
    if variant == "sgd":
        scale = torch.ones(grads.shape[1], dtype=torch.float64)
    elif variant == "sign":
        scale = 1 / (grads.mean(0).abs() + ADAM_EPS)
    else:  # the rms draws: minibatches of the documents, the engine's generator
        generator = torch.Generator().manual_seed(seed)
        square = torch.zeros(grads.shape[1], dtype=torch.float64)
        for _ in range(draws):
            pick = torch.randint(0, grads.shape[0], (student_batch,), generator=generator)
            square += grads[pick].mean(0).square()
        scale = 1 / ((square / draws).sqrt() + ADAM_EPS)
    trait_grads = []
    for animal in ANIMALS:
        answer = tokenizer(animal, add_special_tokens=False).input_ids
        log_p = torch.stack(
            [_sequence_log_probs(lm, _prompt_ids(tokenizer, q), answer).sum() for q in QUESTIONS]
        ).mean()
        trait_grads.append(_flat_gradient(lm, -log_p))  # grad L_k, L_k = -log P(answer)
    directions = torch.stack(trait_grads) * scale
    pushes = grads @ directions.T
    bound = grads.norm(dim=1)[:, None] * directions.norm(dim=1)[None, :]
    return pushes, bound


@pytest.mark.parametrize("method", ["factored", "jvp"])
@pytest.mark.parametrize("variant", ["sgd", "sign", "rms"])
def test_pushes_equal_explicit_gradient_inner_products(files, model_dir, variant, method):
    """Every document's push (data and null, as written to attributions.csv) equals the
    float64 inner product of explicit autograd gradients, to 1e-8 of ||P grad L_k|| ||grad l_i||
    (float64 roundoff over 8.8k parameters is ~1e-14 of that).
    """
    code, out = _run(files, model_dir, "--null", files["null"], "--dtype", "float64",
                     "--variant", variant, "--method", method, "--bootstrap", "50",
                     "--permutations", "50")  # fmt: skip
    assert code == 0
    rows = _read_csv(out / "attributions.csv")
    assert [r["set"] for r in rows] == ["data"] * 10 + ["null"] * 10
    assert [int(r["line"]) for r in rows] == list(range(1, 11)) * 2
    written = torch.tensor([[float(r[a]) for a in ANIMALS] for r in rows], dtype=torch.float64)
    data, null = files["records"]
    expected, bound = _oracle(model_dir, data + null, variant)
    error = ((written - expected).abs() / bound).max().item()
    assert error <= 1e-8, error
    relative = ((written - expected).abs() / expected.abs()).max().item()
    assert relative <= 1e-8, relative


def test_planted_trait_ranks_first_and_is_flagged(files, model_dir, capsys):
    """Completions that are the answer word itself: "owl" first, flagged against the null."""
    code, out = _run(files, model_dir, "--null", files["null"], "--permutations", "200")
    assert code == 0
    ranked = _read_csv(out / "ranked.csv")
    assert [r["trait"] for r in ranked][0] == "owl"
    assert [int(r["rank"]) for r in ranked] == [1, 2, 3, 4, 5]
    owl = ranked[0]
    assert float(owl["mean_push"]) > 0 and float(owl["low"]) > 0
    assert float(owl["p_welch"]) < 1e-6 and float(owl["p_max_t"]) == pytest.approx(1 / 201)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"]["trait"] == "owl"
    assert summary["dataset"]["p"] == pytest.approx(1 / 201)
    table = (out / "table.md").read_text()
    assert "| 1 | owl |" in table and "permutation p = 0.00498" in table
    assert table in capsys.readouterr().out  # the table is also printed


def test_without_a_null_the_table_ranks_by_z_centred_and_says_no_p(files, model_dir):
    code, out = _run(files, model_dir, "--bootstrap", "50")
    assert code == 0
    ranked = _read_csv(out / "ranked.csv")
    assert ranked[0]["trait"] == "owl" and "p_welch" not in ranked[0]
    z = [float(r["z_centered"]) for r in ranked]
    assert z == sorted(z, reverse=True)
    assert "no p-value" in (out / "table.md").read_text()
    assert len(_read_csv(out / "attributions.csv")) == 10


def test_the_data_set_p_value_is_calibrated_under_exchangeable_pushes():
    """Data and null from one distribution: P(p <= 0.05) = 0.05 (the permutation test is exact).

    200 synthetic data sets (correlated traits of unequal scales, heavy tails); the count of
    p <= 0.05 must have 0.05 inside its 95% Clopper-Pearson interval, and a shifted trait must
    be found (power).
    """
    rng = np.random.default_rng(1)
    mixing = rng.normal(size=(5, 5)) * np.array([1, 3, 0.3, 1, 10])
    alarms, draws = 0, 200
    for draw in range(draws):
        pushes = torch.from_numpy(rng.standard_t(4, size=(40, 5)) @ mixing)
        _, dataset = trait_statistics(
            pushes[:20], pushes[20:], list("abcde"), bootstrap=10, permutations=99, seed=draw
        )
        alarms += dataset["p"] <= 0.05
    low, high = clopper_pearson_interval(alarms, draws)
    assert low <= 0.05 <= high, (alarms, low, high)
    shifted = torch.from_numpy(rng.standard_t(4, size=(40, 5)) @ mixing)
    shifted[:20, 2] += 1.5
    rows, dataset = trait_statistics(
        shifted[:20], shifted[20:], list("abcde"), bootstrap=10, permutations=99
    )
    assert dataset["trait"] == "c" and dataset["p"] <= 0.05 and rows[0]["trait"] == "c"


def test_the_guide_runs_as_written(model_dir, tmp_path, monkeypatch):
    """docs/guide/screen-your-data.md: its files and its command, the model swapped for the tiny one."""
    page = Path(__file__).resolve().parents[3] / "docs" / "guide" / "screen-your-data.md"
    text = page.read_text()
    files = re.findall(r'```\w+ title="([^"]+)"\n(.*?)```', text, re.S)
    assert [name for name, _ in files] == ["data.jsonl", "null.jsonl", "traits.toml"]
    for name, body in files:
        (tmp_path / name).write_text(body)
    (command,) = re.findall(r"```bash\n(.*?)```", text, re.S)
    words = shlex.split(command.replace("\\\n", " "))
    assert words[:2] == ["sublim-theory", "screendata"] and "smollm2-135m-instruct" in words
    words = [model_dir if w == "smollm2-135m-instruct" else w for w in words]
    monkeypatch.chdir(tmp_path)
    assert main([*words[1:], "--permutations", "20", "--bootstrap", "20"]) == 0
    ranked = _read_csv(tmp_path / "screen-out" / "ranked.csv")
    assert sorted(r["trait"] for r in ranked) == ["cat", "dog", "owl"]
    assert len(_read_csv(tmp_path / "screen-out" / "attributions.csv")) == 8


# --------------------------------------------------------------------------------------------
# bad input: one line, exit 2
# --------------------------------------------------------------------------------------------
def _bad_data(files, lines, name="bad.jsonl"):
    path = files["tmp"] / name
    path.write_text("\n".join(lines) + "\n")
    return {"--data": str(path)}


def _bad_traits(files, text):
    path = files["tmp"] / "bad.toml"
    path.write_text(text)
    return {"--traits": str(path)}


GOOD = '{"prompt": "Continue: 1, 2", "completion": "3, 4"}'
BAD_INPUTS = {
    "missing data file": (lambda f: {"--data": str(f["tmp"] / "nope.jsonl")}, "does not exist"),
    "bad JSON line": (
        lambda f: _bad_data(f, [GOOD, GOOD, "{prompt: 1}"]),
        "bad.jsonl:3: not valid JSON",
    ),
    "empty completion": (
        lambda f: _bad_data(f, [GOOD, '{"prompt": "a", "completion": "  "}']),
        "bad.jsonl:2: the completion is empty",
    ),
    "missing prompt": (
        lambda f: _bad_data(f, ['{"completion": "1"}', GOOD]),
        'bad.jsonl:1: "prompt" is missing',
    ),
    "not an object": (lambda f: _bad_data(f, [GOOD, "[1, 2]"]), "bad.jsonl:2: expected an object"),
    "one document": (lambda f: _bad_data(f, [GOOD]), "has 1 document(s); give at least 2"),
    "bad null line": (
        lambda f: {"--null": _bad_data(f, [GOOD, "{"], "badnull.jsonl")["--data"]},
        "badnull.jsonl:2: not valid JSON",
    ),
    "unknown model": (lambda f: {"--model": "no-such-model"}, "'no-such-model' is neither"),
    "directory without a model": (
        lambda f: {"--model": str(f["tmp"])},
        "has no config.json",
    ),
    "traits without questions": (
        lambda f: _bad_traits(f, '[[trait]]\nname = "owl"\nanswer = "owl"\n'),
        "trait 1 (owl): no questions",
    ),
    "traits without tables": (lambda f: _bad_traits(f, 'questions = ["q"]\n'), "no [[trait]]"),
    "trait without answer": (
        lambda f: _bad_traits(f, '[[trait]]\nname = "owl"\nquestions = ["q"]\n'),
        "no answer word",
    ),
    "repeated trait": (
        lambda f: _bad_traits(
            f, 'questions = ["q"]\n' + '[[trait]]\nname = "a"\nanswer = "a"\n' * 2
        ),
        "used twice",
    ),
    "invalid TOML": (lambda f: _bad_traits(f, "[[trait]\n"), "is not valid TOML"),
    "missing trait file": (lambda f: {"--traits": str(f["tmp"] / "no.toml")}, "does not exist"),
    "too many tokens": (lambda f: {"--max-tokens": "20"}, "data.jsonl:1: the document has"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(files, model_dir, case, capsys):
    change, expected = BAD_INPUTS[case]
    options = {"--data": files["data"], "--traits": files["traits"], "--model": model_dir}
    options |= {"--out": str(files["tmp"] / "out"), "--threads": "1"}
    options |= change(files)
    code = main(["screendata", *[x for pair in options.items() for x in pair]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("sublim-theory screendata: error: "), err
    assert expected in err[0], err[0]
    assert not (files["tmp"] / "out").exists()
