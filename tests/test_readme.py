"""The README's API example runs as written (examples must not rot)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
    cosine_exact, cosine_first, *_ = capsys.readouterr().out.split()
    assert float(cosine_exact) > 0 and abs(float(cosine_exact) - float(cosine_first)) < 1e-3


def test_readme_names_the_test_command_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in README.read_text() and "make test" in ci
