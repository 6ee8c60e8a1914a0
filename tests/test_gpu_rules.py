"""benchmarks/gpu_rules.py at tiny size on CPU (no GPU on CI machines): every model x
parameterization x rule row is written, with finite time ratios, and the sgd row agrees with the
first-order theory; the full-size configs have the shapes the issue names."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

pytest.importorskip("transformers")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_rules.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_rules", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_on_cpu_writes_every_row(tmp_path):
    script = load_script()
    assert script.main(["--size", "tiny", "--device", "cpu", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "results.json").read_text())
    rows = record["rows"]
    parts = ("student_gradients", *script.RULES)
    assert [(r["model"], r["parameterization"], r["part"]) for r in rows] == [
        (m, p, part) for m in ("gpt2", "qwen2") for p in ("full", "lora16") for part in parts
    ]
    for row in rows:
        assert math.isfinite(row["time_ratio"]) and row["time_ratio"] > 0
        assert row["memory_ratio"] is None  # peak memory is measured on CUDA only
    for row in (r for r in rows if r["part"] == "sgd"):
        # float32, eps = 1e-3: the step differs from alpha eps K v by O(eps) relative (the
        # second-order term) plus float32 rounding of an O(eps) difference of softmaxes
        # (~1e-7 / 1e-3): 0.99 leaves a wide margin; a wrong rule or K v gives cos far from 1
        assert row["cos_step_prediction"] > 0.99 and row["cos_step_K_v"] > 0.99
        assert row["teacher_loss_change_exact"] < 0
    assert "| gpt2 | lora16 |" in (tmp_path / "results.md").read_text()


def test_full_size_configs_have_the_named_shapes():
    script = load_script()
    gpt2 = script.model_config("gpt2", "full")
    assert (gpt2.n_layer, gpt2.n_embd, gpt2.n_head, gpt2.vocab_size) == (12, 768, 12, 50257)
    qwen = script.model_config("qwen2", "full")
    shape = (
        qwen.hidden_size,
        qwen.intermediate_size,
        qwen.num_hidden_layers,
        qwen.num_attention_heads,
        qwen.num_key_value_heads,
        qwen.vocab_size,
        qwen.tie_word_embeddings,
    )
    assert shape == (896, 4864, 24, 14, 2, 151936, True)
