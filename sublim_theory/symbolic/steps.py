"""A small derivation engine: a derivation is a list of steps, each checked by sympy when added.

A step states one equality (shown in LaTeX), says why it holds, and names how it was checked:

* ``identity``: ``lhs - rhs`` simplifies to zero (entrywise for matrices);
* ``series``: the coefficient of ``variable**order`` in ``expression`` (its Taylor coefficient
  ``d^n/dvar^n expression / n!`` at ``variable = 0``) equals ``coefficient``;
* ``substitution``: ``expression`` with an earlier assumption or result substituted equals ``rhs``;
* ``assumption``: stated, not checked, and listed in the document's assumptions.

The check runs in the method that adds the step, so a derivation that exists has been checked;
a step that does not check raises :class:`DerivationStepError` naming the derivation and the step.
Positive semidefiniteness is never asked of sympy (it has no such assumption, and its
``positive_definite`` handler accepts J^T H J for a wide J): it is proven by an explicit identity
(a sum of squares) checked as an ``identity`` step. See theory/alignment.md.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

import sympy as sp

__all__ = [
    "SIMPLIFY_MAX_OPS",
    "CheckKind",
    "Derivation",
    "DerivationStepError",
    "Step",
    "SympyValue",
    "is_identically_zero",
    "taylor_coefficient",
]

SympyValue = sp.Expr | sp.MatrixBase
# Expressions larger than this (sympy.count_ops) are not handed to sympy.simplify.
SIMPLIFY_MAX_OPS = 400


class DerivationStepError(Exception):
    """A derivation step whose equality sympy could not confirm; the message names the step."""

    def __init__(self, derivation: str, step: str, detail: str) -> None:
        """Name the derivation, the step and what sympy found instead."""
        super().__init__(f"derivation '{derivation}', step '{step}' does not check: {detail}")
        self.derivation = derivation
        self.step = step
        self.detail = detail


class CheckKind(enum.Enum):
    """How a step's equality was confirmed."""

    IDENTITY = "identity"
    SERIES = "series"
    SUBSTITUTION = "substitution"
    ASSUMPTION = "assumption"


@dataclass(frozen=True)
class Step:
    """One line of a derivation.

    Attributes:
        label: short name, unique within the derivation (used in errors and as the equation tag).
        lhs_latex, relation, rhs_latex: the displayed equation ``lhs relation rhs``.
        justification: why it holds, in words (LaTeX allowed).
        kind: how sympy checked it.
        checked: True for every kind but ``assumption``.

    """

    label: str
    lhs_latex: str
    relation: str
    rhs_latex: str
    justification: str
    kind: CheckKind
    checked: bool


def _lowered(expr: sp.Expr) -> sp.Expr:
    """Replace every tanh(.) and then every exp(.) atom by a fresh symbol.

    If the result is the zero rational function of independent symbols, the original expression
    is zero for every value of the atoms, so this is a sound (never falsely positive) zero test
    that avoids sympy's slow transcendental simplification. exp atoms get positive symbols.

    Returns:
        The expression with the atoms replaced.

    """
    tanhs = sorted(expr.atoms(sp.tanh), key=sp.default_sort_key)
    expr = expr.xreplace({t: sp.Dummy("tanh") for t in tanhs})
    # sympy merges exp(a)*exp(a) into exp(2a) (and distributes the 2 over a sum): write every
    # argument as content * primitive and map exp(c a) to E_a**c so such products still cancel.
    bases: dict[sp.Expr, sp.Dummy] = {}

    def power_of_base(argument: sp.Expr) -> sp.Expr:
        content, primitive = sp.expand(argument).as_content_primitive()
        if primitive.could_extract_minus_sign():
            content, primitive = -content, -primitive
        if primitive not in bases:
            bases[primitive] = sp.Dummy("exp", positive=True)
        return bases[primitive] ** content

    return expr.replace(lambda e: isinstance(e, sp.exp), lambda e: power_of_base(e.args[0]))


def is_identically_zero(expr: sp.Expr) -> bool:
    """True when sympy proves ``expr == 0`` identically.

    First as a rational function of the lowered atoms (fast, sound), then, for small expressions
    only, by ``sympy.simplify``. False means "not proven", which fails the step.

    Returns:
        Whether it is zero.

    """
    expr = sp.sympify(expr)
    if expr == 0:
        return True
    if sp.cancel(sp.together(_lowered(expr))) == 0:
        return True
    # simplify can run for minutes on a large nonzero expression; it is only a last resort.
    return sp.count_ops(expr) <= SIMPLIFY_MAX_OPS and sp.simplify(expr) == 0


def _difference_is_zero(lhs: SympyValue, rhs: SympyValue) -> tuple[bool, str]:
    """Check ``lhs == rhs`` entrywise; return (ok, description of the first failing entry)."""
    if isinstance(lhs, sp.MatrixBase) or isinstance(rhs, sp.MatrixBase):
        lhs_m, rhs_m = sp.Matrix(lhs), sp.Matrix(rhs)
        if lhs_m.shape != rhs_m.shape:
            return False, f"shapes differ: {lhs_m.shape} vs {rhs_m.shape}"
        for index in range(len(lhs_m)):
            if not is_identically_zero(lhs_m[index] - rhs_m[index]):
                row, col = divmod(index, lhs_m.shape[1])
                return False, f"entry ({row}, {col}): {sp.sstr(lhs_m[index] - rhs_m[index])[:200]}"
        return True, ""
    difference = sp.sympify(lhs) - sp.sympify(rhs)
    if is_identically_zero(difference):
        return True, ""
    return False, f"lhs - rhs = {sp.sstr(difference)[:200]}"


def taylor_coefficient(expression: SympyValue, variable: sp.Symbol, order: int) -> SympyValue:
    """The coefficient of ``variable**order`` in the Taylor series of ``expression`` at 0."""
    if isinstance(expression, sp.MatrixBase):
        return expression.applyfunc(lambda e: taylor_coefficient(e, variable, order))
    derivative = sp.diff(expression, variable, order) if order else expression
    return derivative.subs(variable, 0) / sp.factorial(order)


@dataclass
class Derivation:
    """A titled list of checked steps with its statement and explicit assumptions.

    Attributes:
        key: identifier (used for section labels and the CLI).
        title: section title in the document.
        statement: the claim, in LaTeX (shown before the steps).
        setting: the concrete instance sympy works on (sizes, symbols), in LaTeX.
        source: the section of the hand-written notes that derives it.
        steps: the checked steps in order; ``assumption`` steps included.

    """

    key: str
    title: str
    statement: str
    setting: str
    source: str = "theory/alignment.md"
    steps: list[Step] = field(default_factory=list)

    @property
    def assumptions(self) -> list[Step]:
        """The stated, unchecked steps: everything the derivation relies on without proof."""
        return [s for s in self.steps if s.kind is CheckKind.ASSUMPTION]

    def _add(self, step: Step) -> Step:
        if any(s.label == step.label for s in self.steps):
            raise DerivationStepError(self.key, step.label, "label used twice in this derivation")
        self.steps.append(step)
        return step

    def _require(self, label: str, ok: bool, detail: str) -> None:
        if not ok:
            raise DerivationStepError(self.key, label, detail)

    def assume(self, label: str, latex: str, justification: str) -> Step:
        """State an assumption (shown as ``latex``); nothing is checked, everything is listed."""
        return self._add(Step(label, latex, "", "", justification, CheckKind.ASSUMPTION, False))

    def identity(
        self,
        label: str,
        lhs: SympyValue,
        rhs: SympyValue,
        latex: tuple[str, str],
        justification: str,
        relation: str = "=",
    ) -> Step:
        """Add ``lhs = rhs``, checked by simplifying ``lhs - rhs`` to zero."""
        ok, detail = _difference_is_zero(lhs, rhs)
        self._require(label, ok, detail)
        return self._add(
            Step(label, latex[0], relation, latex[1], justification, CheckKind.IDENTITY, True)
        )

    def series(
        self,
        label: str,
        expression: SympyValue,
        variable: sp.Symbol,
        order: int,
        coefficient: SympyValue,
        latex: tuple[str, str],
        justification: str,
    ) -> Step:
        """Add ``[variable^order] expression = coefficient``, checked on the Taylor coefficient."""
        ok, detail = _difference_is_zero(
            taylor_coefficient(expression, variable, order), coefficient
        )
        self._require(label, ok, f"coefficient of {variable}^{order}: {detail}")
        return self._add(
            Step(label, latex[0], "=", latex[1], justification, CheckKind.SERIES, True)
        )

    def substitution(
        self,
        label: str,
        expression: SympyValue,
        mapping: Mapping[sp.Basic, sp.Basic],
        rhs: SympyValue,
        latex: tuple[str, str],
        justification: str,
    ) -> Step:
        """Add ``expression|_{mapping} = rhs``: substitute an earlier result, then check the identity."""
        substituted = expression.subs(dict(mapping))
        ok, detail = _difference_is_zero(substituted, rhs)
        self._require(label, ok, f"after substituting {len(mapping)} value(s): {detail}")
        return self._add(
            Step(label, latex[0], "=", latex[1], justification, CheckKind.SUBSTITUTION, True)
        )
