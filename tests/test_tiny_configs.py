"""Every packaged ``*_tiny`` config runs end to end (issue 20): each one once a session.

The configs are discovered, so a new tiny config fails here until ``tests/conftest.py``'s
``TINY_RUNS`` says how to run it, or ``ELSEWHERE`` names the study test that runs it (those whose
run needs more than a command line: a stand-in model folder, synthetic digits, another run's
output). The studies' own tests read the same runs (``tiny_config_run``): nothing runs twice.
"""

import ast
from pathlib import Path

import pytest

from sublim_theory.harness.runs import CONFIG_DIR

TESTS = Path(__file__).parent

# config -> the test (file::function) that runs it end to end itself
ELSEWHERE = {
    "finetune_tiny": "studies/finetune/test_finetune.py::test_finetune_command_tiny_run_and_resume",
    "mnist_dynamics_tiny": "studies/dynamics/test_dynamics.py::"
    "test_command_writes_tables_and_resumes_bit_for_bit",
    "mnist_tiny": "studies/mnist/test_mnist_cli.py::test_tiny_pipeline_on_embedded_digits",
    "real_cross_tiny": "studies/real_cross/test_real_cross.py::"
    "test_command_runs_resumes_and_refuses_bad_input",
    "real_grid_tiny": "studies/real_grid/test_real_grid.py::"
    "test_command_runs_resumes_and_refuses_bad_input",
    "real_numbers_tiny": "studies/real_numbers/test_real_numbers.py::"
    "test_command_runs_resumes_and_rebuilds_the_same_table",
    "real_screen_tiny": "studies/real_screen/test_real_screen.py::"
    "test_tiny_config_end_to_end_and_resume",
    "screen_tiny": "studies/screen/test_screen.py::"
    "test_command_on_the_tiny_config_writes_its_tables_and_resumes",
}

CONFIGS = sorted(path.stem for path in CONFIG_DIR.glob("*_tiny.toml"))


def test_configs_are_found():
    assert len(CONFIGS) >= 15 and "numbers_tiny" in CONFIGS


@pytest.mark.parametrize("config", CONFIGS)
def test_every_packaged_tiny_config_runs_end_to_end(config, tiny_config_run, tiny_run_names):
    runs = [name for name in tiny_run_names if name.split(":")[0] == config]
    if config in ELSEWHERE:
        assert not runs, f"{config} is run both by TINY_RUNS and by {ELSEWHERE[config]}"
        file, function = ELSEWHERE[config].split("::")
        source = (TESTS / file).read_text()
        names = {
            node.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)
        }
        assert function in names and config in source, ELSEWHERE[config]
        return
    assert runs, f"no runner for {config}: add it to TINY_RUNS in tests/conftest.py"
    for name in runs:
        run = tiny_config_run(name)
        assert run.code == 0, run.stderr[-2000:]
        assert run.stdout.strip(), f"{name} printed no table"
        written = set(run.files) - {".sublim-theory.lock"}
        assert written and any(name.endswith((".csv", ".md")) for name in written), run.files
