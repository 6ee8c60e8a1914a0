"""Machine-checked symbolic derivations of the alignment theorem (theory/alignment.md, sections 2-4).

Every derivation is a list of steps checked by sympy when it is built (:mod:`.steps`); the
derivations cover Lemma 1, Theorem 1, the second-order coefficient and the init-distance law for
generic jets (:mod:`.general`), the output curvature of each imitation loss (:mod:`.losses`) and
an exact check on a tanh MLP with symbolic weights (:mod:`.network`). :func:`export` writes them
as a LaTeX document and a Markdown page.
"""

from sublim_theory.symbolic.catalog import DERIVATIONS, build_all
from sublim_theory.symbolic.export import compile_pdf, export, render_latex, render_markdown
from sublim_theory.symbolic.network import lambdified_coefficients
from sublim_theory.symbolic.steps import CheckKind, Derivation, DerivationStepError, Step

__all__ = [
    "DERIVATIONS",
    "CheckKind",
    "Derivation",
    "DerivationStepError",
    "Step",
    "build_all",
    "compile_pdf",
    "export",
    "lambdified_coefficients",
    "render_latex",
    "render_markdown",
]
