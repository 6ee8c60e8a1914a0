"""Write the checked derivations as a standalone LaTeX document and a Markdown page.

The output is deterministic (no dates, no versions, no timings), so the committed copies in
theory/generated/ can be compared byte for byte with a fresh export. Only packages of
texlive-latex-base (and texlive-base, which it depends on) are used: amsmath, amssymb, amsthm,
geometry.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sublim_theory.errors import InputError
from sublim_theory.harness.runs import atomic_write_text
from sublim_theory.symbolic.catalog import build_all, build_optimizers
from sublim_theory.symbolic.steps import CheckKind, Derivation, Step

__all__ = [
    "ALIGNMENT",
    "CHECK_NAMES",
    "DOCUMENTS",
    "INTRODUCTION",
    "MARKDOWN_NAME",
    "OPTIMIZERS",
    "OPTIMIZERS_INTRODUCTION",
    "OPTIMIZERS_MARKDOWN_NAME",
    "OPTIMIZERS_TEX_NAME",
    "OPTIMIZERS_THEOREM",
    "OPTIMIZERS_TITLE",
    "TEX_NAME",
    "THEOREM",
    "TITLE",
    "Document",
    "compile_pdf",
    "export",
    "export_document",
    "export_documents",
    "render_latex",
    "render_markdown",
]

TEX_NAME = "alignment_derivation.tex"
MARKDOWN_NAME = "alignment_derivation.md"

TITLE = "Machine-checked derivation of the subliminal-learning alignment theorem"

THEOREM = (
    r"Let $f_\theta$ be a network, $\theta_0$ a shared initialization, the teacher "
    r"$\theta_T = \theta_0 + \varepsilon v$, and the student's one-step distillation update "
    r"$\Delta\theta_S = -\nabla_\theta\,\mathbb{E}_x\,\ell(f_\theta(x), f_{\theta_T}(x))|_{\theta_0}$ "
    r"for an imitation loss $\ell(z,y)$ minimized at $z=y$. With $u = Jv$ and "
    r"$M = \nabla^2_{zz}\ell(y,y) \succeq 0$, "
    r"$\langle\Delta\theta_S, v\rangle = \varepsilon A + O(\varepsilon^2)$ when $\ell \in C^3$ and "
    r"$f \in C^2$ near $\theta_0$, and $= \varepsilon A + \varepsilon^2 B + O(\varepsilon^3)$ when "
    r"$\ell \in C^4$ and $f \in C^3$, with "
    r"$A = \mathbb{E}_x[u^\top M u] \ge 0$. If $v = -\nabla L_T(\theta_0)$ with $L_T \in C^2$ and "
    r"the student's step size $\alpha > 0$ is fixed, then "
    r"$L_T(\theta_0 + \alpha\Delta\theta_S) = L_T(\theta_0) - \alpha\varepsilon A + "
    r"O(\varepsilon^2)$: the student's teacher loss falls for small $\varepsilon$ unless $A = 0$ "
    r"(Cloud et al.\ 2025, Theorem 1)."
)

INTRODUCTION = (
    "Each numbered equation below was checked by sympy when this document was generated: an "
    "identity by reducing the difference of its sides to zero, a series step by matching a Taylor "
    "coefficient in $\\varepsilon$, a substitution by inserting an earlier result and reducing. A "
    "step that does not check stops the export with an error naming it. Assumptions are stated "
    "as steps of their own, marked as assumed, and collected in the next section; nothing else "
    "is taken for granted. Positive semidefiniteness is proven by explicit sums of squares. The "
    "hand-written Statement/Proof notes are in \\texttt{theory/alignment.md}; the symbolic "
    "coefficients $A$, $B$ and $K$ are lambdified and compared with the \\texttt{torch.func} "
    "engine in float64 by the test suite."
)

OPTIMIZERS_TEX_NAME = "optimizers_derivation.tex"
OPTIMIZERS_MARKDOWN_NAME = "optimizers_derivation.md"

OPTIMIZERS_TITLE = "Machine-checked derivation: the alignment theorem beyond plain gradient descent"

OPTIMIZERS_THEOREM = (
    r"Under the hypotheses of Theorem 1 (teacher $\theta_0 + \varepsilon v$, student distilled "
    r"from the shared $\theta_0$, $g = \nabla L_T(\theta_0)$, step size $\alpha > 0$), "
    r"(i) with preconditioned steps $\Delta\theta = -\alpha P_S\nabla L_S$ and $v = -P_T g$, "
    r"$\Delta L_T = -\alpha\varepsilon\,g^\top P_S K P_T g + O(\varepsilon^2)$, which is "
    r"$\le 0$ for a shared symmetric PSD preconditioner and can be $> 0$ otherwise; (ii) Adam's "
    r"first step from fresh state and SignSGD move the student along $\mathrm{sign}(Kv)$ for "
    r"small $\varepsilon$ while $\varepsilon|(Kv)_i|$ exceeds Adam's $\epsilon_{\mathrm{a}}$, "
    r"so that $\langle\Delta\theta_S, Kv\rangle = \alpha\|Kv\|_1 > 0$ but neither "
    r"$\langle\Delta\theta_S, v\rangle$ nor $\Delta L_T$ has a fixed sign; momentum's first "
    r"step is the gradient step; AdamW's decay $-\alpha\lambda\theta_0$ dilutes the cosine; "
    r"(iii) LoRA at $B = 0$ aligns in adapter space, and in weight space is the preconditioner "
    r"$c^2(\cdot)A^\top A$: a shared $A_0$ keeps Theorem 1, a different $A_0$ does not "
    r"guarantee it."
)

OPTIMIZERS_INTRODUCTION = INTRODUCTION.replace(
    r"\texttt{theory/alignment.md}", r"\texttt{theory/optimizers.md}"
).replace(
    "the symbolic coefficients $A$, $B$ and $K$ are lambdified and compared with the "
    "\\texttt{torch.func} engine in float64 by the test suite.",
    "the update rules of \\texttt{sublim\\_theory/engine/update\\_rules.py} are compared with "
    "\\texttt{torch.optim} and their first-order predictions with exact student updates in "
    "float64 by the test suite.",
)


@dataclass(frozen=True)
class Document:
    """One generated document: its file names, front matter and the derivations it holds.

    Attributes:
        tex_name, markdown_name: the files :func:`export_document` writes.
        title, theorem, introduction: the front matter (LaTeX).
        notes: the hand-written notes, as written in the introduction (``theory/NAME.md``).
        build: builds (and so checks) its derivations, in order.

    """

    tex_name: str
    markdown_name: str
    title: str
    theorem: str
    introduction: str
    notes: str
    build: Callable[[], list[Derivation]]


ALIGNMENT = Document(
    TEX_NAME, MARKDOWN_NAME, TITLE, THEOREM, INTRODUCTION, "theory/alignment.md", build_all
)
OPTIMIZERS = Document(
    OPTIMIZERS_TEX_NAME,
    OPTIMIZERS_MARKDOWN_NAME,
    OPTIMIZERS_TITLE,
    OPTIMIZERS_THEOREM,
    OPTIMIZERS_INTRODUCTION,
    "theory/optimizers.md",
    build_optimizers,
)
DOCUMENTS = (ALIGNMENT, OPTIMIZERS)

CHECK_NAMES = {
    CheckKind.IDENTITY: "identity",
    CheckKind.SERIES: "series coefficient",
    CheckKind.SUBSTITUTION: "substitution",
    CheckKind.ASSUMPTION: "assumed",
}


def _number(section: int, index: int) -> str:
    return f"{section}.{index}"


def _latex_escape_label(label: str) -> str:
    return label.replace("_", r"\_")


def _equation(step: Step) -> str:
    if step.kind is CheckKind.ASSUMPTION:
        return f"& {step.lhs_latex}"
    return f"{step.lhs_latex} &{step.relation} {step.rhs_latex}"


def _step_caption_latex(number: str, step: Step) -> str:
    mark = (
        r"\hfill\textsf{assumed, not checked}"
        if step.kind is CheckKind.ASSUMPTION
        else rf"\hfill$\checkmark$\,\textsf{{{CHECK_NAMES[step.kind]}}}"
    )
    return (
        rf"{{\small\textbf{{({number})}} \texttt{{{_latex_escape_label(step.label)}}}: "
        rf"{step.justification} {mark}}}"
    )


def _derivation_latex(section: int, derivation: Derivation) -> str:
    lines = [
        rf"\subsection{{{derivation.title}}}\label{{sec:{derivation.key}}}",
        rf"\paragraph{{Claim.}} {derivation.statement}",
        rf"\paragraph{{Setting.}} {derivation.setting}",
    ]
    labels = ", ".join(
        rf"\texttt{{{_latex_escape_label(s.label)}}}" for s in derivation.assumptions
    )
    lines.append(rf"\paragraph{{Assumptions.}} {labels or 'none beyond the setting.'}")
    lines.append(r"\paragraph{Steps.}\mbox{}\par\smallskip")
    for index, step in enumerate(derivation.steps, start=1):
        number = _number(section, index)
        lines.append(r"\noindent" + _step_caption_latex(number, step))
        lines.append(r"\begin{align}")
        lines.append(rf"  {_equation(step)} \tag{{{number}}}")
        lines.append(r"\end{align}")
    return "\n".join(lines)


def _assumption_list_latex(derivations: list[Derivation]) -> str:
    seen: dict[str, list[str]] = {}
    order: list[tuple[str, str]] = []
    for section, derivation in enumerate(derivations, start=1):
        for index, step in enumerate(derivation.steps, start=1):
            if step.kind is not CheckKind.ASSUMPTION:
                continue
            if step.lhs_latex not in seen:
                seen[step.lhs_latex] = []
                order.append((step.lhs_latex, step.justification))
            seen[step.lhs_latex].append(_number(section, index))
    items = [
        rf"  \item ${latex}$ --- {why} (used in {', '.join(f'({n})' for n in seen[latex])})"
        for latex, why in order
    ]
    return "\n".join([r"\begin{itemize}", *items, r"\end{itemize}"])


def render_latex(derivations: list[Derivation], document: Document = ALIGNMENT) -> str:
    """The standalone LaTeX document (compiles with pdflatex from texlive-latex-base)."""
    total = sum(len(d.steps) for d in derivations)
    checked = sum(1 for d in derivations for s in d.steps if s.checked)
    body = "\n\n".join(
        _derivation_latex(section, d) for section, d in enumerate(derivations, start=1)
    )
    return "\n".join(
        [
            "% Generated by `sublim-theory derive`; do not edit (a test compares it with a fresh export).",
            r"\documentclass[10pt]{article}",
            r"\usepackage[margin=2.5cm]{geometry}",
            r"\usepackage{amsmath,amssymb,amsthm}",
            r"\newtheorem*{theorem*}{Theorem}",
            r"\allowdisplaybreaks",
            r"\setcounter{secnumdepth}{0}",
            rf"\title{{{document.title}}}",
            r"\author{\texttt{sublim-theory derive}}",
            r"\date{}",
            r"\begin{document}",
            r"\maketitle",
            r"\begin{abstract}",
            document.introduction,
            rf"This export has {total} steps; {checked} were machine-checked and "
            rf"{total - checked} are stated assumptions.",
            r"\end{abstract}",
            r"\section{Statement}",
            r"\begin{theorem*}",
            document.theorem,
            r"\end{theorem*}",
            r"\section{Assumptions}",
            "Every assumption made below, with the steps that state it:",
            _assumption_list_latex(derivations),
            r"\section{Derivations}",
            body,
            r"\end{document}",
            "",
        ]
    )


def _markdown_math(latex: str) -> str:
    # GitHub renders $$...$$ with MathJax; \tag is not supported there, the number is in the caption.
    return f"$$\n{latex}\n$$"


def render_markdown(derivations: list[Derivation], document: Document = ALIGNMENT) -> str:
    """The same derivations as a GitHub Markdown page (math in $...$ and $$...$$)."""
    notes_file = Path(document.notes).name
    introduction = document.introduction.replace(
        rf"\texttt{{{document.notes}}}", f"[`{document.notes}`](../{notes_file})"
    )
    introduction = introduction.replace(
        r"\texttt{sublim\_theory/engine/update\_rules.py}", "`sublim_theory/engine/update_rules.py`"
    ).replace(r"\texttt{torch.optim}", "`torch.optim`")
    introduction = introduction.replace(r"\texttt{torch.func}", "`torch.func`")
    lines = [
        "<!-- Generated by `sublim-theory derive`; do not edit (a test compares it with a fresh export). -->",
        f"# {document.title}",
        "",
        introduction,
        "",
        "## Statement",
        "",
        document.theorem,
        "",
        "## Derivations",
    ]
    for section, derivation in enumerate(derivations, start=1):
        lines += [
            "",
            f"### {section}. {derivation.title}",
            "",
            f"**Claim.** {derivation.statement}",
            "",
            f"**Setting.** {derivation.setting}",
            "",
        ]
        for index, step in enumerate(derivation.steps, start=1):
            if step.kind is CheckKind.ASSUMPTION:
                mark, equation = "assumed, not checked", step.lhs_latex
            else:
                mark = f"✓ {CHECK_NAMES[step.kind]}"
                equation = f"{step.lhs_latex} {step.relation} {step.rhs_latex}"
            lines += [
                f"**({_number(section, index)})** `{step.label}` — {mark}: {step.justification}",
                "",
                _markdown_math(equation),
                "",
            ]
    return "\n".join(lines).rstrip("\n") + "\n"


def _writable_directory(out_dir: str | os.PathLike[str]) -> Path:
    path = Path(out_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(
            f"cannot create the output directory '{path}' ({error.strerror}); "
            "pass --out a directory you can write to"
        ) from error
    if not path.is_dir() or not os.access(path, os.W_OK):
        raise InputError(
            f"'{path}' is not a writable directory; pass --out a directory you can write to"
        )
    return path


def export(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Build and check every derivation of the alignment document, then write its .tex and .md.

    Returns:
        The paths written: the .tex, then the .md.

    Raises:
        InputError: if ``out_dir`` cannot be created or written.
        DerivationStepError: if a step does not check (the message names it); nothing is written.

    """
    return export_documents(out_dir, (ALIGNMENT,))


def export_document(out_dir: str | os.PathLike[str], document: Document) -> list[Path]:
    """Build and check the derivations of ``document``, then write its .tex and .md files.

    Returns:
        The paths written: the .tex, then the .md.

    Raises:
        InputError: if ``out_dir`` cannot be created or written.
        DerivationStepError: if a step does not check (the message names it); nothing is written.

    """
    return export_documents(out_dir, (document,))


def export_documents(
    out_dir: str | os.PathLike[str], documents: Sequence[Document] = DOCUMENTS
) -> list[Path]:
    """Build and check every derivation of ``documents`` first, then write each .tex and .md.

    Every step of every document is checked before the first file is written, and each file is
    replaced atomically, so a failing step leaves the folder as it was.

    Returns:
        The paths written: for each document its .tex, then its .md.

    Raises:
        InputError: if ``out_dir`` cannot be created or written.
        DerivationStepError: if a step does not check (the message names it); nothing is written.

    """
    directory = _writable_directory(out_dir)
    rendered = []
    for document in documents:
        derivations = document.build()
        rendered.append((document.tex_name, render_latex(derivations, document)))
        rendered.append((document.markdown_name, render_markdown(derivations, document)))
    written = []
    for name, text in rendered:
        atomic_write_text(directory / name, text)
        written.append(directory / name)
    return written


def compile_pdf(tex_path: str | os.PathLike[str], timeout_s: float = 120.0) -> Path:
    """Run pdflatex twice (non-interactive) next to ``tex_path``; return the PDF's path.

    Returns:
        The PDF's path.

    Raises:
        InputError: if pdflatex is not installed or reports an error (its log's first error line).

    """
    executable = shutil.which("pdflatex")
    if executable is None:
        raise InputError("pdflatex is not installed; install texlive-latex-base to build the PDF")
    tex_path = Path(tex_path).resolve()
    with tempfile.TemporaryDirectory() as build:
        for _ in range(2):  # the second pass settles references
            result = subprocess.run(
                [
                    executable,
                    "-interaction=nonstopmode",
                    "-halt-on-error",
                    "-output-directory",
                    build,
                    str(tex_path),
                ],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
            if result.returncode != 0:
                errors = [line for line in result.stdout.splitlines() if line.startswith("!")]
                raise InputError(
                    f"pdflatex failed on {tex_path.name}: {errors[0] if errors else 'see its log'}"
                )
        pdf = tex_path.with_suffix(".pdf")
        shutil.copyfile(Path(build) / pdf.name, pdf)
    return pdf
