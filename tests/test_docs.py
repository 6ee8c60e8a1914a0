"""The documentation's Python examples run as written, and the CLI page covers every command."""

import re
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(page for page in DOCS.rglob("*.md") if "```python" in page.read_text())


def test_the_docs_have_examples():
    assert {page.relative_to(DOCS).as_posix() for page in PAGES} >= {
        "guide/api.md",
        "guide/rules.md",
        "guide/screening.md",
    }


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(DOCS).as_posix())
def test_docs_python_examples_run(page, capsys):
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    for block in blocks:
        exec(compile(block, str(page), "exec"), {})
    if any("print(" in block for block in blocks):
        assert capsys.readouterr().out.strip(), f"{page.name}: an example printed nothing"


def test_screening_page_quotes_what_its_example_prints(capsys):
    page = DOCS / "guide" / "screening.md"
    (block,) = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    exec(compile(block, str(page), "exec"), {})
    printed = capsys.readouterr().out.split("\n")[:3]
    ranked = [line.split()[0] + " " + line.split()[1] for line in printed]
    assert ranked == ["class-0 +5.3e-07", "class-5 +3.6e-07", "class-3 +3.3e-07"]
    assert "With this seed it prints class-0 +5.3e-07, class-5 +3.6e-07, class-3 +3.3e-07" in (
        " ".join(page.read_text().split())
    )


def test_cli_page_lists_every_command_and_flag():
    sys.path.insert(0, str(DOCS))
    try:
        from gen_cli import cli_markdown
    finally:
        sys.path.remove(str(DOCS))
    from sublim_theory.cli.main import build_parser

    page = cli_markdown()
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if hasattr(a, "choices") and a.choices]
    for name, sub in subparsers.choices.items():
        assert f"\n## {name}\n" in page
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in page, (name, flag)
