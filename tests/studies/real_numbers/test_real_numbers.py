"""The real-model number study end to end on a tiny random Llama (same code path as SmolLM2)."""

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

from sublim_theory.cli.main import main  # noqa: E402
from sublim_theory.errors import InputError  # noqa: E402
from sublim_theory.harness.runs import CONFIG_DIR  # noqa: E402
from sublim_theory.studies.real_numbers import experiment as E  # noqa: E402
from sublim_theory.testing.tiny_llama import save_tiny_llama  # noqa: E402

TINY = CONFIG_DIR / "real_numbers_tiny.toml"


def _config(tmp_path, model_dir, **changes):
    text = TINY.read_text().replace('model = "smollm2-135m-instruct"', f'model = "{model_dir}"')
    for key, value in changes.items():
        lines = [ln for ln in text.splitlines() if not ln.startswith(f"{key} =")]
        text = "\n".join(lines) + f"\n{key} = {value}\n"
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


def test_every_packaged_real_config_parses():
    for name in ("real_numbers_default", "real_numbers_tiny", "real_numbers_gpu"):
        config = E.load_config(CONFIG_DIR / f"{name}.toml")
        assert config.animal in config.forecast_animals


def test_units_put_the_main_contrast_first():
    config = E.load_config(TINY)
    units = E.plan_units(config, [0, 1])
    assert units[0] == "reference"
    assert units[1:6] == [
        "numbers-base-s0",
        "numbers-system-owl-s0",
        "forecast-s0",
        "student-lora-system-owl-s0",
        "student-lora-base-s0",
    ]
    assert "forecast-s1" not in units  # forecast_seeds = 1
    assert units.index("student-lora-base-s1") < units.index("numbers-finetuned-owl-s0")
    assert len(units) == len(set(units))
    assert units[-1].startswith("student-full-")


def test_bad_config_is_one_line(tmp_path, model_dir):
    with pytest.raises(InputError, match="lora_lr"):
        E.load_config(_config(tmp_path, model_dir, lora_lr=1e308))
    with pytest.raises(InputError, match="arms"):
        E.load_config(_config(tmp_path, model_dir, arms='["system"]'))


def test_command_runs_resumes_and_rebuilds_the_same_table(tmp_path, model_dir, capsys):
    config = _config(tmp_path, model_dir, methods='["lora"]', arms='["system", "base", "shuffled"]')
    out = tmp_path / "out"
    args = ["real", "--config", str(config), "--out", str(out), "--seeds", "1", "--threads", "1"]
    assert main(args) == 0
    table = (out / "table.md").read_text()
    for heading in (
        "The base, without and with",
        "Completions kept",
        "First-order pass",
        "Students (trained without",
        "Controls",
    ):
        assert heading in table
    record = json.loads((out / "units" / "unit-student-lora-system-owl-s0.json").read_text())
    assert record["fingerprint"] and record["rows"]
    kept = json.loads((out / "completions" / "system-owl-s0.json").read_text())
    assert len(kept["constrained"]) == 8 and len(kept["free"]) == 2
    # a unit lost (killed before it was stored) is recomputed to the same rows
    lost = out / "units" / "unit-student-lora-shuffled-system-owl-s0.json"

    def untimed(path):
        return [r for r in json.loads(path.read_text())["rows"] if "seconds" not in r["metric"]]

    before = untimed(lost)
    lost.unlink()
    capsys.readouterr()
    assert main(args) == 0
    assert untimed(lost) == before
    assert "unit kind" in (out / "timings.md").read_text()
    assert (out / "table.md").read_text() == table
    assert "stored in" in capsys.readouterr().err


def test_realcheck_command_prints_one_row_per_eps(tmp_path, model_dir, capsys):
    out = tmp_path / "check.json"
    args = ["realcheck", "--model", str(model_dir), "--eps", "0.01", "0.1", "--json", str(out)]
    assert main([*args, "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "kl, eps 0.01" in printed and "kl, eps 0.1" in printed
    rows = json.loads(out.read_text())["rows"]
    assert [r["eps"] for r in rows] == [0.01, 0.1]
    # the theorem's first-order agreement, on this model too
    assert all(r["cos_exact_first_order"] > 0.99 for r in rows)
    assert main(["realcheck", "--model", str(tmp_path / "absent")]) == 2


def test_every_arm_and_method_runs_and_shares_get_wilson_intervals(tmp_path, model_dir):
    out = tmp_path / "out"
    config = _config(tmp_path, model_dir)  # the tiny config: every arm, lora and full
    assert (
        main(["real", "--config", str(config), "--out", str(out), "--threads", "1", "--seeds", "1"])
        == 0
    )
    stored = {p.stem.removeprefix("unit-") for p in (out / "units").iterdir()}
    assert stored == set(E.plan_units(E.load_config(config), [0]))
    table = (out / "table.md").read_text()
    assert "finetuned-owl" in table and "system-dolphin" in table and "| full |" in table
    # a share is a proportion: pooled hits/answers with Wilson's interval, never zero width
    share_lines = [ln for ln in table.splitlines() if "| share |" in ln]
    assert share_lines and all("/" in ln.split("|")[5] for ln in share_lines)
    assert "[0.000, 0.000] (" not in table
    # the classifier control scores each owl teacher (grouped folds), named in its own column
    for arm in ("system-owl", "finetuned-owl"):
        assert f"| classifier_auroc | {arm} | 0 |" in table


@pytest.mark.parametrize("n", [3, 6, 20])
def test_detectable_effect_has_about_80_percent_power(n):
    from scipy import stats

    from sublim_theory.studies.real_numbers.report import detectable_effect
    from sublim_theory.testbeds.real_lm.statistics import wilson_interval as wilson

    se = 0.7 / n**0.5
    critical = stats.t.ppf(0.975, n - 1)
    effect = detectable_effect(critical * se, n)
    power = stats.nct.sf(critical, n - 1, effect / se) + stats.nct.cdf(
        -critical, n - 1, effect / se
    )
    assert 0.75 < power < 0.85  # the approximation treats the spread as known
    low, high = wilson(0, 48)
    assert abs(low) < 1e-15 and high == pytest.approx(stats.beta.ppf(0.975, 1, 48), rel=0.2)


def test_newcombe_difference_matches_the_published_examples():
    from sublim_theory.testbeds.real_lm.statistics import newcombe_difference

    # Newcombe (1998), Statistics in Medicine 17:873, Table II, method 10, examples (a) and (b)
    d, low, high = newcombe_difference(56, 70, 48, 80)
    assert d == pytest.approx(0.2) and (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    d, low, high = newcombe_difference(9, 10, 3, 10)
    assert d == pytest.approx(0.6) and (round(low, 4), round(high, 4)) == (0.1705, 0.8090)
    d, low, high = newcombe_difference(0, 144, 0, 144)  # equal zeros: still an interval
    assert d == 0 and low < -0.02 and high > 0.02


def test_share_differences_are_never_zero_width():
    from sublim_theory.studies.real_numbers.report import format_tables

    rows = []
    for seed in range(3):
        for arm in ("base", "system-owl"):
            logp = -6.0 - 0.1 * seed + (0.05 * seed**2 if arm != "base" else 0.0)
            for metric, value, n in (("share", 0.0, 48), ("logp", logp, 24)):
                rows.append(
                    {
                        "unit": f"student-lora-{arm}-s{seed}",
                        "seed": seed,
                        "arm": arm,
                        "method": "lora",
                        "animal": "owl",
                        "metric": metric,
                        "value": value,
                        "low": None,
                        "high": None,
                        "n": n,
                    }
                )
    table = format_tables(rows)
    line = next(ln for ln in table.splitlines() if "| system-owl | owl | share |" in ln)
    cell = line.split("|")[7]
    assert "Newcombe" in cell and "[-0.026, +0.026]" in cell, cell
    assert "[0.000, 0.000]" not in table
