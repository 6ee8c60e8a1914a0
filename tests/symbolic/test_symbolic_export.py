"""Export: LaTeX and Markdown are written, deterministic, committed fresh, and compile."""

import os
import shutil
from pathlib import Path

import pytest

import sublim_theory.symbolic.catalog as catalog
from sublim_theory.cli.main import main
from sublim_theory.errors import InputError
from sublim_theory.symbolic import (
    Derivation,
    DerivationStepError,
    compile_pdf,
    export,
    render_latex,
    render_markdown,
)
from sublim_theory.symbolic.export import MARKDOWN_NAME, OPTIMIZERS, TEX_NAME

GENERATED = Path(__file__).resolve().parents[2] / "theory" / "generated"


def test_committed_generated_files_are_fresh(derivations):
    """Regenerate with `sublim-theory derive --out theory/generated` when this fails."""
    assert (GENERATED / TEX_NAME).read_text(encoding="utf-8") == render_latex(derivations)
    assert (GENERATED / MARKDOWN_NAME).read_text(encoding="utf-8") == render_markdown(derivations)


def test_every_step_is_marked(derivations):
    latex, markdown = render_latex(derivations), render_markdown(derivations)
    checked = sum(s.checked for d in derivations for s in d.steps)
    assumed = sum(not s.checked for d in derivations for s in d.steps)
    assert latex.count(r"$\checkmark$") == checked
    assert latex.count("assumed, not checked") == assumed
    assert markdown.count("✓") == checked
    assert r"\today" not in latex and "\\date{}" in latex


def test_export_writes_both_files(tmp_path):
    written = export(tmp_path / "out")
    assert [p.name for p in written] == [TEX_NAME, MARKDOWN_NAME]
    assert written[0].read_bytes() == (GENERATED / TEX_NAME).read_bytes()


def test_unwritable_output_is_an_input_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="output directory"):
        export(blocker / "sub")


def broken() -> Derivation:
    derivation = Derivation(key="broken", title="Broken", statement="s", setting="s")
    derivation.identity("one-equals-two", 1, 2, ("1", "2"), "deliberately wrong")
    return derivation


def test_a_wrong_step_stops_the_export(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(catalog, "DERIVATIONS", (broken,))
    with pytest.raises(DerivationStepError, match="one-equals-two"):
        export(tmp_path / "a")
    assert not (tmp_path / "a" / TEX_NAME).exists()
    assert main(["derive", "--out", str(tmp_path / "b")]) == 1
    assert "step 'one-equals-two' does not check" in capsys.readouterr().err


def test_derive_writes_every_document(tmp_path, capsys):
    assert main(["derive", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.split()
    names = [Path(p).name for p in printed]
    assert names == [TEX_NAME, MARKDOWN_NAME, OPTIMIZERS.tex_name, OPTIMIZERS.markdown_name]
    for name in names:
        assert (tmp_path / name).read_bytes() == (GENERATED / name).read_bytes()


def test_cli_reports_bad_output_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["derive", "--out", str(blocker / "sub")]) == 2
    assert "error:" in capsys.readouterr().err


def test_latex_compiles_with_pdflatex(tmp_path):
    if shutil.which("pdflatex") is None:
        if os.environ.get("CI"):
            pytest.fail("pdflatex is missing on CI (install texlive-latex-base)")
        pytest.skip("pdflatex not installed (apt-get install texlive-latex-base)")
    tex = tmp_path / TEX_NAME
    shutil.copyfile(GENERATED / TEX_NAME, tex)
    pdf = compile_pdf(tex)
    assert pdf.read_bytes().startswith(b"%PDF")
