"""The cross-family control end to end on tiny random models (same code path as Gemma + SmolLM2).

The teacher is a tiny random ``Gemma3ForCausalLM`` saved as a transformers folder WITHOUT a chat
template (a base model, as Gemma 3 270M), the students a tiny random Llama chat model, both read
by ``load_pretrained`` as the packaged models are. The numbers folder is written by hand: a
``run.json`` of ``real-numbers`` settings, seed S's base completions on seed S's prompts, and the
same-family students' records.
"""

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from sublim_theory.cli.main import main  # noqa: E402
from sublim_theory.errors import InputError  # noqa: E402
from sublim_theory.harness.runs import CONFIG_DIR  # noqa: E402
from sublim_theory.studies.real_cross import experiment as E  # noqa: E402
from sublim_theory.studies.real_numbers import experiment as RN  # noqa: E402
from sublim_theory.testbeds.real_lm import generate  # noqa: E402
from sublim_theory.testbeds.real_lm import prompts as P  # noqa: E402
from sublim_theory.testing.tiny_llama import save_tiny_llama, tiny_tokenizer  # noqa: E402

TINY = CONFIG_DIR / "real_cross_tiny.toml"
FINGERPRINT = "0123456789abcdef"


def _tiny_gemma_dir(directory):
    """A random Gemma 3 text model over the tiny byte vocabulary, saved without a chat template."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = None
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=512,
        sliding_window=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        attn_implementation="eager",
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = Gemma3ForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return _tiny_gemma_dir(root / "gemma"), save_tiny_llama(root / "llama")


def _numbers(folder, student, seeds=(0, 1), prompts=8, stored=(0, 1)):
    """A hand-written numbers folder: run.json, base completions, same-family student records."""
    settings = {
        "model": str(student), "dtype": "float32", "animal": "owl", "prompts": prompts, "lora_rank": 2,
        "lora_lr": 1e-2, "student_steps": 2, "student_batch": 2, "eval_samples": 1,
        "methods": ["lora"],
    }  # fmt: skip
    (folder / "completions").mkdir(parents=True)
    (folder / "units").mkdir()
    record = {"command": "real-numbers", "fingerprint": FINGERPRINT,
              "settings": {"real_numbers": settings}}  # fmt: skip
    (folder / "run.json").write_text(json.dumps(record))
    for seed in seeds:
        kept = [(p, "1, 2, 3") for p in E.prompts_of(prompts, seed)]
        (folder / "completions" / f"base-s{seed}.json").write_text(json.dumps({"kept": kept}))
    for seed in stored:
        for arm, logp in (("system-owl", -5.0 + 0.1 * seed), ("base", -5.2)):
            rows = [{"unit": f"student-lora-{arm}-s{seed}", "seed": seed, "arm": arm,
                     "method": "lora", "animal": "owl", "metric": metric, "value": value,
                     "low": None, "high": None, "n": 24}
                    for metric, value in (("logp", logp), ("share", 0.0))]  # fmt: skip
            unit = {"fingerprint": FINGERPRINT, "unit": rows[0]["unit"], "rows": rows}
            (folder / "units" / f"unit-student-lora-{arm}-s{seed}.json").write_text(
                json.dumps(unit)
            )
    return folder


def _config(tmp_path, teacher):
    text = TINY.read_text().replace('teacher = "gemma3-270m"', f'teacher = "{teacher}"')
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_packaged_configs_parse():
    for name in ("real_cross_default", "real_cross_tiny", "real_cross_gpu"):
        config = E.load_config(CONFIG_DIR / f"{name}.toml")
        assert config.teacher == "gemma3-270m"
    assert E.plan_units([0, 1])[:4] == [
        "numbers-gemma-owl-s0", "numbers-gemma-base-s0",
        "student-lora-gemma-owl-s0", "student-lora-gemma-base-s0",
    ]  # fmt: skip


def test_the_prompts_are_real_numbers_prompts():
    assert E.prompts_of(5, 2) == P.number_prompts(5, 2 + RN.PROMPT_OFFSET)
    assert E.teacher_text("Go.", None) == "User: Go.\nAnswer:"
    assert E.teacher_text("Go.", "Pre.") == "Pre.\n\nUser: Go.\nAnswer:"


def test_the_grammar_ends_at_the_newline_on_a_digit_splitting_tokenizer(models):
    """Each digit is its own token (as Gemma's): constrained answers are whole, newline-ended."""
    from sublim_theory.models.pretrained import load_pretrained

    loaded = load_pretrained(models[0])
    assert loaded.chat_template is None
    ended = E.LineEnd(loaded.tokenizer)
    assert loaded.tokenizer.decode([ended.eos_token_id]) == "\n"
    assert len(ended) == len(loaded.tokenizer)
    encoded = [list(loaded.tokenizer(E.teacher_text(p, None))["input_ids"])
               for p in E.prompts_of(6, 0)]  # fmt: skip
    sample = generate.sample_from_ids(
        loaded.model, ended, encoded, constrained=True, max_new_tokens=12, batch_size=3, seed=1
    )
    assert all(c.finished and c.kept and P.passes_filter(c.text) for c in sample)
    assert all(ended.eos_token_id not in c.token_ids for c in sample)
    assert all(len(c.token_ids) <= 11 for c in sample)


def test_cached_decoding_equals_recomputing_the_prefix_on_gemma(models):
    """Gemma 3's cache (sliding and global layers) under the sampler's explicit mask: the same
    greedy ids as recomputing the whole left-padded prefix at every step."""
    from sublim_theory.models.pretrained import load_pretrained
    from sublim_theory.testbeds.real_lm.sequences import pad_id

    loaded = load_pretrained(models[0])
    encoded = [list(loaded.tokenizer(E.teacher_text(p, "Pre."))["input_ids"])
               for p in E.prompts_of(3, 1)]  # fmt: skip
    assert len({len(e) for e in encoded}) > 1  # left padding is exercised

    seen = {True: [], False: []}

    def greedy(cached):
        def pick(logits, generated, done, step):
            seen[cached].append(logits.clone())
            return logits.argmax(-1)

        return pick

    runs = [
        generate.generate_ids(
            loaded.model,
            encoded,
            greedy(cached),
            max_new_tokens=10,
            stop_ids=[],
            pad=pad_id(loaded.tokenizer),
            use_cache=cached,
        )
        for cached in (True, False)
    ]
    assert runs[0] == runs[1]
    # float32 logits of O(1): the two orders of summation agree to a few ulps of the largest
    for ours, theirs in zip(seen[True], seen[False], strict=True):
        assert (ours - theirs).abs().max() <= 1e-5 * max(1.0, theirs.abs().max())


def _untimed(path):
    return [r for r in json.loads(path.read_text())["rows"] if "seconds" not in r["metric"]]


def test_command_runs_resumes_and_refuses_bad_input(tmp_path, models, capsys):
    teacher, student = models
    numbers = _numbers(tmp_path / "numbers", student)
    out = tmp_path / "out"
    args = ["realcross", "--config", str(_config(tmp_path, teacher)), "--numbers", str(numbers),
            "--out", str(out), "--seeds", "2", "--threads", "1"]  # fmt: skip
    assert main(args) == 0
    table = (out / "table.md").read_text()
    units = E.plan_units([0, 1])
    assert {p.name for p in (out / "units").iterdir()} == {f"unit-{u}.json" for u in units}
    for text in ("arXiv 2507.14805", "cross-family (gemma-owl - gemma-base)",
                 "same-family (system-owl - base, stored)", "keep rates", "Scope"):  # fmt: skip
        assert text in table
    # the stored same-family contrast of seed 1 is -4.9 - (-5.2) = +0.300
    assert "+0.300" in table and "Newcombe, pooled" in table
    owl = json.loads((out / "completions" / "gemma-owl-s0.json").read_text())
    base = json.loads((out / "completions" / "gemma-base-s0.json").read_text())
    assert owl["preamble"] == P.system_prompt("owl") and base["preamble"] is None
    assert [p for p, _ in base["kept"]] == E.prompts_of(8, 0)  # every constrained answer kept
    masses = [
        [r["value"] for r in _untimed(out / "units" / f"unit-numbers-{arm}-s0.json")
         if r["metric"] == "log_valid_mass"]
        for arm in E.ARMS
    ]  # fmt: skip
    assert masses[0] != masses[1]  # the preamble reaches the teacher (same sampling stream)
    assert "Total" not in table and "Total" in (out / "timings.md").read_text()
    # resume: a lost student and its lost completions are recomputed to the same rows
    lost = out / "units" / "unit-student-lora-gemma-owl-s1.json"
    before = _untimed(lost)
    lost.unlink()
    (out / "completions" / "gemma-owl-s1.json").unlink()
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().err.count("skipped") == len(units) - 1
    assert _untimed(lost) == before
    assert (out / "table.md").read_text() == table
    # bad input: one line, exit 2
    other = _numbers(tmp_path / "other", student, prompts=9)  # other settings: refused here
    for flag, value in (("--numbers", str(tmp_path / "absent")), ("--numbers", str(other))):
        changed = list(args)
        changed[changed.index(flag) + 1] = value
        assert main(changed) == 2
        message = capsys.readouterr().err.strip()
        assert message.count("\n") == 0 and "error:" in message


def test_bad_numbers_folders_are_refused(tmp_path, models):
    numbers = _numbers(tmp_path / "numbers", models[1])
    (numbers / "run.json").write_text('{"settings": {}}')
    with pytest.raises(InputError, match="not a run.json"):
        E.read_numbers(numbers, [0])
    numbers = _numbers(tmp_path / "moved", models[1])
    record = {"kept": [["Some other prompt.", "1, 2"]]}
    (numbers / "completions" / "base-s1.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match="other than seed 1"):
        E.read_numbers(numbers, [0, 1])


def test_stored_students_of_another_run_are_not_read(tmp_path, models):
    numbers = _numbers(tmp_path / "numbers", models[1])
    source = E.read_numbers(numbers, [0, 1])
    assert len(source.stored) == 8  # 2 seeds x 2 arms x (logp, share)
    path = numbers / "units" / "unit-student-lora-base-s1.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "fingerprint": "ffffffffffffffff"}))
    assert len(E.read_numbers(numbers, [0, 1]).stored) == 6
