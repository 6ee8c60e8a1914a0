"""Machine-checked symbolic derivations of the alignment theorem (theory/alignment.md, sections 2-4).

Every derivation is a list of steps checked by sympy when it is built (:mod:`.steps`); the
derivations cover Lemma 1, Theorem 1, the second-order coefficient and the init-distance law for
generic jets (:mod:`.general`), the output curvature of each imitation loss (:mod:`.losses`) and
an exact check on a tanh MLP with symbolic weights (:mod:`.network`). :func:`export` writes them
as a LaTeX document and a Markdown page. A second document (theory/optimizers.md, :mod:`.optimizers`)
carries the theorem beyond plain gradient descent: preconditioned steps, Adam/SignSGD/momentum
first steps, AdamW's decay and LoRA; :func:`export_document` writes it (``OPTIMIZERS``).
"""

from sublim_theory.symbolic.catalog import (
    DERIVATIONS,
    OPTIMIZER_DERIVATIONS,
    build_all,
    build_optimizers,
)
from sublim_theory.symbolic.export import (
    ALIGNMENT,
    DOCUMENTS,
    OPTIMIZERS,
    Document,
    compile_pdf,
    export,
    export_document,
    export_documents,
    render_latex,
    render_markdown,
)
from sublim_theory.symbolic.network import lambdified_coefficients
from sublim_theory.symbolic.steps import CheckKind, Derivation, DerivationStepError, Step

__all__ = [
    "ALIGNMENT",
    "DERIVATIONS",
    "DOCUMENTS",
    "OPTIMIZERS",
    "OPTIMIZER_DERIVATIONS",
    "Document",
    "build_optimizers",
    "export_document",
    "export_documents",
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
