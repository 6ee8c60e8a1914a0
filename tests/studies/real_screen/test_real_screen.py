"""The real-model screen study at test size, on a tiny random Llama (no download)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from sublim_theory.cli.main import main  # noqa: E402
from sublim_theory.errors import InputError  # noqa: E402
from sublim_theory.harness.runs import CONFIG_DIR  # noqa: E402
from sublim_theory.models.pretrained import float64_throughout, load_pretrained  # noqa: E402
from sublim_theory.studies.real_screen.experiment import (  # noqa: E402
    document_scores,
    find_data_sets,
    load_config,
)
from sublim_theory.testbeds.real_lm.evaluate import animal_log_probs  # noqa: E402
from sublim_theory.testbeds.real_lm.forecast import animal_directions  # noqa: E402
from sublim_theory.testbeds.real_lm.prompts import EVALUATION_QUESTIONS  # noqa: E402
from sublim_theory.testbeds.real_lm.train import completion_loss  # noqa: E402
from sublim_theory.testing.tiny_llama import save_tiny_llama  # noqa: E402

TINY = CONFIG_DIR / "real_screen_tiny.toml"


def _pairs(seed: int, count: int = 6) -> list[list[str]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        start = ", ".join(str(rng.randrange(100)) for _ in range(3))
        more = ", ".join(str(rng.randrange(100)) for _ in range(rng.randrange(2, 5)))
        pairs.append([f"Continue: {start}.", more])
    return pairs


def _numbers(folder: Path) -> Path:
    """A folder shaped like `sublim-theory real`'s: completions of 2 arms x 2 seeds, results.csv."""
    (folder / "completions").mkdir(parents=True)
    for k, (arm, seed) in enumerate(
        [("base", 0), ("base", 1), ("system-owl", 0), ("system-owl", 1)]
    ):
        record = {
            "arm": arm,
            "seed": seed,
            "kept": _pairs(10 * k + seed),
            "constrained": [],
            "free": [],
        }
        (folder / "completions" / f"{arm}-s{seed}.json").write_text(json.dumps(record))
    rows = [["unit", "seed", "arm", "method", "animal", "metric", "value", "low", "high", "n"]]
    rows += [["reference", 0, "base", "", a, "logp", -5.0, "", "", 24] for a in ("owl", "dolphin")]
    for arm in ("base", "system-owl"):
        for seed in (0, 1):
            for a, v in (("owl", -4.0 - seed), ("dolphin", -4.5 + seed)):
                rows.append(
                    [f"student-lora-{arm}-s{seed}", seed, arm, "lora", a, "logp", v, "", "", 24]
                )
    with open(folder / "results.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama", seed=1)


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1).double() for g in grads])


def test_pushes_equal_explicit_gradient_inner_products(tiny):
    """c_ia = <grad m_a, -grad l_i> and ||grad l_i||, each from its own flat float64 gradient."""
    loaded = load_pretrained(tiny, dtype=torch.float64)
    model, tokenizer = loaded.model, loaded.tokenizer
    animals = ("owl", "dolphin", "cat")
    pairs = [tuple(p) for p in _pairs(3, 4)]
    params = [p for p in model.parameters() if p.requires_grad]
    with float64_throughout():
        scores = document_scores(
            model,
            tokenizer,
            pairs,
            animal_directions(model, tokenizer, EVALUATION_QUESTIONS, animals),
        )
        means = [
            animal_log_probs(model, tokenizer, EVALUATION_QUESTIONS, a).mean() for a in animals
        ]
        trait = torch.stack([_flat(torch.autograd.grad(m, params)) for m in means])
        losses = [completion_loss(model, tokenizer, [pair]) for pair in pairs]
        examples = torch.stack([_flat(torch.autograd.grad(value, params)) for value in losses])
    expected = -(examples @ trait.T)
    assert scores["push"].dtype == torch.float64 and scores["push"].shape == (4, 3)
    assert float((scores["push"] - expected).abs().max() / expected.abs().max()) <= 1e-10
    norms = examples.norm(dim=1)
    assert float(((scores["grad_norm"] - norms) / norms).abs().max()) <= 1e-10
    assert torch.allclose(scores["base_loss"], torch.stack(losses).detach(), rtol=1e-12, atol=0)
    assert float(expected.abs().min()) > 0  # not a trivially zero comparison


def _run(numbers: Path, out: Path, tiny: Path, *extra: str) -> int:
    return main(["realscreen", "--config", str(TINY), "--numbers", str(numbers), "--out", str(out),
                 "--model", str(tiny), "--threads", "1", *extra])  # fmt: skip


def test_tiny_config_end_to_end_and_resume(tmp_path, tiny, capsys):
    numbers = _numbers(tmp_path / "numbers")
    out = tmp_path / "out"
    assert _run(numbers, out, tiny) == 0
    for name in ("table.md", "datasets.csv", "animals.csv", "detection.csv", "attributions.csv",
                 "forecast_vs_student.csv", "run.json", "environment.json"):  # fmt: skip
        assert (out / name).exists(), name
    table = (out / "table.md").read_text()
    assert "## Detection" in table and "## Forecast vs the real LoRA student" in table
    assert "AUROC" in table and "Wall time" in table
    with open(out / "datasets.csv") as handle:
        sets = list(csv.DictReader(handle))
    assert len(sets) == 4 * 3  # 4 files x (full, even, odd)
    with open(out / "attributions.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 4 * 6
    before = {
        name: (out / name).read_text() for name in ("table.md", "datasets.csv", "detection.csv")
    }
    stored = sorted(p.name for p in (out / "units").iterdir())
    assert len(stored) == 4
    capsys.readouterr()
    assert _run(numbers, out, tiny) == 0
    assert "stored in" in capsys.readouterr().err
    after = {name: (out / name).read_text() for name in before}
    # wall times are stored per unit, so the resumed table is the same text
    assert after == before


def test_changed_completions_refused(tmp_path, tiny):
    numbers = _numbers(tmp_path / "numbers")
    out = tmp_path / "out"
    assert _run(numbers, out, tiny) == 0
    path = numbers / "completions" / "system-owl-s1.json"
    record = json.loads(path.read_text())
    record["kept"] = record["kept"][1:]
    path.write_text(json.dumps(record))
    assert _run(numbers, out, tiny) == 2


def test_missing_numbers_folder_is_one_line(tmp_path, tiny, capsys):
    assert _run(tmp_path / "nowhere", tmp_path / "out", tiny) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--numbers" in err
    with pytest.raises(InputError, match="is not a folder"):
        find_data_sets(tmp_path / "nowhere")
    (tmp_path / "empty" / "completions").mkdir(parents=True)
    with pytest.raises(InputError, match="base-sS.json"):
        find_data_sets(tmp_path / "empty")


def test_configs_load():
    assert len(load_config(CONFIG_DIR / "real_screen_default.toml").animals) == 10
    assert load_config(TINY).max_documents == 6
    assert load_config(CONFIG_DIR / "real_screen_32.toml").max_documents == 32


def test_pushes_agree_with_the_engines_factored_scores(tiny):
    """The study's explicit pushes equal engine.trait_scores' factored ones (float64, tiny Llama)."""
    from sublim_theory.engine.functional import FunctionalModel
    from sublim_theory.engine.screen import TraitProbe
    from sublim_theory.engine.trait_scores import probe_factors, probe_trait_scores
    from sublim_theory.studies.real_check import CompletionLogits
    from sublim_theory.studies.screen_data import IGNORED, completion_nll, pack
    from sublim_theory.testbeds.real_lm.evaluate import animal_spellings
    from sublim_theory.testbeds.real_lm.prompts import chat_ids
    from sublim_theory.testbeds.real_lm.sequences import pad_id
    from sublim_theory.testbeds.real_lm.train import completion_ids

    loaded = load_pretrained(tiny, dtype=torch.float64)
    lm, tokenizer = loaded.model, loaded.tokenizer
    animals, questions = ("owl", "dolphin", "cat"), EVALUATION_QUESTIONS[:5]
    pairs = [tuple(p) for p in _pairs(5, 4)]
    spellings = {a: animal_spellings(tokenizer, a) for a in animals}
    continuations = [completion_ids(tokenizer, c) for _, c in pairs]
    scored = max(max(map(len, continuations)), *(len(s) for a in animals for s in spellings[a]))
    pad = pad_id(tokenizer)
    inputs, targets = pack([chat_ids(tokenizer, p) for p, _ in pairs], continuations, scored, pad)

    def probe(animal):
        rows = [(q, s) for q in questions for s in spellings[animal]]
        probe_inputs, probe_targets = pack(
            [chat_ids(tokenizer, q) for q, _ in rows], [s for _, s in rows], scored, pad
        )

        def loss(outputs):  # L = -m_a = -mean_q logsumexp_s log P(spelling s | q)
            mask = probe_targets != IGNORED
            picked = torch.log_softmax(outputs.double(), -1).gather(
                -1, probe_targets.clamp_min(0).unsqueeze(-1)
            )
            sums = (picked.squeeze(-1) * mask).sum(1).reshape(len(questions), -1)
            return -sums.logsumexp(-1).mean()

        return TraitProbe(animal, probe_inputs, loss)

    model = FunctionalModel(CompletionLogits(lm, scored))
    theta = model.flat_params().detach()
    factors = probe_factors(model, theta, [probe(a) for a in animals])
    factored = probe_trait_scores(model, theta, inputs, targets, completion_nll, factors)
    with float64_throughout():
        directions = animal_directions(lm, tokenizer, questions, animals)
        explicit = document_scores(lm, tokenizer, pairs, directions)["push"]
    assert float((explicit - factored).abs().max() / factored.abs().max()) <= 1e-10
