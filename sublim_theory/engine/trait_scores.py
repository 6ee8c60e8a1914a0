"""Per-example trait scores from one forward and one backward: c_ik = <g_k, grad l_i(theta)>.

The screen (``engine.screen``) needs, for K fixed directions g_k (the candidate traits'
gradients, possibly preconditioned: ``d_k = P grad L_k``) and every example i, the inner product
of g_k with example i's loss gradient. The jvp path pays one forward-mode pass over the data per
direction. Here every direction is scored from ONE forward and ONE backward of sum_i l_i, with no
per-example gradient of the whole network ever formed, because a parameter enters the network
through a few kinds of operation whose per-example gradient is a product of two factors that the
forward and the backward already hold:

* Linear ``z = W a + b`` (a_{i,t} the layer's input at position t of example i, delta_{i,t} =
  d(sum_j l_j)/d z_{i,t} = d l_i / d z_{i,t}, since example i's loss alone depends on its own
  positions):

      grad_W l_i = sum_t delta_{i,t} a_{i,t}^T,   so   <G_k, grad_W l_i> = sum_t delta_{i,t}^T G_k a_{i,t}
      grad_b l_i = sum_t delta_{i,t},             so   <h_k, grad_b l_i> = sum_t delta_{i,t} . h_k

  Two contraction orders, chosen by their multiply-add counts (n examples, T positions, W of
  shape (out, in)): project (delta G_k, then meet a): n T K out in; or per-example layer
  gradients sum_t delta a^T (n T out in) met by all G_k in one GEMM (n K out in).
* Embedding ``z_{i,t} = E[token_{i,t}]``: <G_k, grad_E l_i> = sum_t delta_{i,t} . G_k[token_{i,t}]
  (a gather, or each example's deltas summed per distinct token and met by all G_k in one GEMM;
  positions holding ``padding_idx`` get no gradient, as in torch's backward).
* Layer and RMS norm ``z = w * xhat + b``: per example sum_t delta_t * xhat_t and sum_t delta_t
  (xhat recomputed once); a parameter broadcast against the activations (``w * x``, ``x + b``,
  as in transformers' RMSNorm): delta (times x) summed per example to the parameter's shape.
* Anything else (a convolution, a matmul with ``W.T``): the operation alone is differentiated,
  exactly, either per example (vmap over the examples of its vjp: n x |p| numbers) or per
  direction (its jvp along each G_k: K x |output| numbers), whichever holds fewer numbers.

When the directions are the gradients of probe losses, d_k = P grad L_k (P diagonal, I for the
plain step), the probes' own forward and backward give grad_W L_k = sum_s delta'_{k,s} a'_s^T
for every Linear weight they read (s over the probe's positions), and then

    <grad_W L_k, sum_t delta_t a_t^T> = sum_s delta'_{k,s} . (sum_t (a'_s . a_t) delta_t)

costs n S (T in + T out + K out) instead of n K out in (``probe_factors``,
``probe_trait_scores``; with P: the per-example layer gradient, scaled, applied to a'_s).

Tied or reused parameters (an embedding tied to the output head, a block applied twice) get the
sum over all their uses, as their gradient does. Parameters that reach a use through
parameter-only operations (``W.t()``, ``E.to(dtype)``, a position embedding ``P[arange(T)]``)
carry their directions along: the derived tensor's direction is the jvp of those operations.

How the uses are found: a ``TorchFunctionMode`` sees every torch call of the forward. Tensors that
depend on the data are tagged from the inputs on; a call that meets a parameter (or a tensor
derived from parameters alone) and data is a *use*, its output is kept, and the backward returns
d(sum_i l_i)/d(output) for every use at once (activation gradients only: no parameter gradient
is accumulated). Assumptions, checked where they can be: examples are independent (the model is
a per-example function, as ``FunctionalModel`` requires) and every use's output keeps the
examples on its leading axis (a use that does not raises ``InputError``: use the jvp path).

Scores are accumulated in float64; contractions run in the model's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, jvp, vjp, vmap
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.weak import WeakIdKeyDictionary

from sublim_theory.engine.functional import FunctionalModel, check_module_is_functional
from sublim_theory.errors import InputError

__all__ = [
    "MEMORY_BOUND_COST",
    "MEMORY_BUDGET",
    "ParameterUse",
    "ProbeFactors",
    "factored_uses",
    "probe_factors",
    "probe_trait_scores",
    "trait_scores",
]

MEMORY_BUDGET = 2**24  # numbers in one temporary block of a contraction (64 MiB in float32)

ExampleLoss = Callable[[Tensor, Tensor], Tensor]

_LINEAR_ARGS = ("input", "weight", "bias")
_EMBEDDING_ARGS = (
    "input",
    "weight",
    "padding_idx",
    "max_norm",
    "norm_type",
    "scale_grad_by_freq",
    "sparse",
)
_HARMLESS_INPLACE = {"requires_grad_", "retain_grad"}
_NORMS = {
    F.layer_norm: ("input", "normalized_shape", "weight", "bias", "eps"),
    F.rms_norm: ("input", "normalized_shape", "weight", "eps"),
}
_ADD = (torch.add, torch._C.TensorBase.add)
_SUB = (torch.sub, torch._C.TensorBase.sub)
_MUL = (torch.mul, torch._C.TensorBase.mul)


# --------------------------------------------------------------------------------------------
# what the recorder keeps
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParameterUse:
    """One use found in the forward: how it is scored and which parameters it reads.

    ``kind`` is ``linear``, ``embedding`` or ``generic`` (the exact per-operation fallback);
    ``function`` the torch call; ``parameters`` the names of the parameters it reads, directly
    or through parameter-only operations.
    """

    kind: str
    function: str
    parameters: tuple[str, ...]


@dataclass(eq=False)
class _Param:
    """A trainable parameter: the ``index``-th of ``FunctionalModel.names``."""

    index: int


@dataclass(eq=False)
class _Call:
    """One torch call, its arguments flattened; the leaves at ``tracked`` read ``nodes``."""

    func: Callable
    leaves: list
    spec: object
    tracked: list[int]
    nodes: list[_Param | _Derived]

    def function(self, replace: dict[int, Tensor] | None = None) -> Callable:
        """The call as a function of its tracked leaves (other leaves fixed, or ``replace``d)."""
        fixed = list(self.leaves)
        for position, value in (replace or {}).items():
            fixed[position] = value

        def call(*values: Tensor):
            leaves = list(fixed)
            for position, value in zip(self.tracked, values):
                leaves[position] = value
            args, kwargs = tree_unflatten(leaves, self.spec)
            return self.func(*args, **kwargs)

        return call

    def primals(self) -> tuple[Tensor, ...]:
        return tuple(self.leaves[p] for p in self.tracked)


@dataclass(eq=False)
class _Derived:
    """Output number ``output`` of a call on parameters and constants only (no data)."""

    call: _Call
    output: int


@dataclass(eq=False)
class _Use:
    """A call that meets parameters and data; ``outputs`` its flattened outputs, kept or None."""

    kind: str  # "linear", "embedding" or "generic"
    call: _Call
    outputs: list[Tensor | None]
    example_axis: list[bool]  # per leaf: data with the examples on its leading axis


def _name(func: Callable) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


def _bind(names: Sequence[str], call: _Call) -> dict:
    args, kwargs = tree_unflatten(call.leaves, call.spec)
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


class _Recorder(TorchFunctionMode):
    """Tags data-dependent tensors, follows parameter-only tensors and records every use."""

    def __init__(self, examples: int) -> None:
        super().__init__()
        self.examples = examples
        self.nodes: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensor -> _Param | _Derived
        self.data: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensor -> True
        self.uses: list[_Use] = []
        self.kept: list[tuple[Tensor, int]] = []  # (output, its version when recorded)
        self.params: dict[str, Tensor] = {}  # the parameter views the forward reads

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        leaves, spec = tree_flatten((args, kwargs))
        tracked, has_data = [], False
        for position, leaf in enumerate(leaves):
            if isinstance(leaf, Tensor):
                if leaf in self.nodes:
                    tracked.append(position)
                elif leaf in self.data:
                    has_data = True
        out = func(*args, **kwargs)
        if not tracked and not has_data:
            return out
        outputs = tree_flatten(out)[0]
        inputs = {id(leaf) for leaf in leaves if isinstance(leaf, Tensor)}
        if tracked:
            name = _name(func).rsplit(".", 1)[-1]
            inplace = name.endswith("_") and not name.endswith("__")
            if name == "__setitem__" or (inplace and name not in _HARMLESS_INPLACE):
                raise InputError(
                    f"the model writes a parameter in place ({_name(func)}): the factored trait "
                    "scores need a functional forward; use method='jvp'"
                )
        if not tracked:
            for o in outputs:
                if isinstance(o, Tensor) and id(o) not in inputs:
                    self.data[o] = True
            return out
        call = _Call(func, leaves, spec, tracked, [self.nodes[leaves[p]] for p in tracked])
        if not has_data:
            for j, o in enumerate(outputs):
                if isinstance(o, Tensor) and id(o) not in inputs:
                    self.nodes[o] = _Derived(call, j)
            return out
        self.uses.append(self._use(call, outputs, inputs))
        return out

    def _use(self, call: _Call, outputs: list, inputs: set[int]) -> _Use:
        n, name = self.examples, _name(call.func)
        kept: list[Tensor | None] = []
        for o in outputs:
            if not isinstance(o, Tensor):
                kept.append(None)
                continue
            if id(o) in inputs:
                raise InputError(
                    f"the model combines parameters with the activations in place ({name}); the "
                    "factored trait scores need out-of-place operations: use method='jvp'"
                )
            self.data[o] = True
            if not o.is_floating_point():
                kept.append(None)
                continue
            if o.ndim == 0 or o.shape[0] != n:
                raise InputError(
                    f"{name} combines parameters with the data but its output has shape "
                    f"{tuple(o.shape)}, not the {n} examples on the leading axis: the factored "
                    "trait scores cannot assign it to examples; use method='jvp'"
                )
            if not o.requires_grad:
                o.requires_grad_(True)  # a leaf (nothing upstream needs a gradient): keep it
            self.kept.append((o, o._version))
            kept.append(o)
        axis = [
            isinstance(leaf, Tensor) and leaf in self.data and leaf.ndim > 0 and leaf.shape[0] == n
            for leaf in call.leaves
        ]
        return _Use(self._kind(call), call, kept, axis)

    def _kind(self, call: _Call) -> str:
        tracked = {id(call.leaves[p]) for p in call.tracked}
        n = self.examples
        if call.func is F.linear or call.func is torch._C._nn.linear:
            bound = _bind(_LINEAR_ARGS, call)
            x, bias = bound["input"], bound.get("bias")
            if (
                id(bound["weight"]) in tracked
                and id(x) not in tracked
                and x.ndim >= 1
                and x.shape[0] == n
                and (bias is None or id(bias) in tracked or bias not in self.data)
            ):
                return "linear"
        if call.func is F.embedding:
            bound = _bind(_EMBEDDING_ARGS, call)
            if bound.get("max_norm") is not None or bound.get("scale_grad_by_freq"):
                raise InputError(
                    "an embedding with max_norm or scale_grad_by_freq rewrites or couples its "
                    "gradient across examples; the factored trait scores need neither: use "
                    "method='jvp'"
                )
            if id(bound["weight"]) in tracked and id(bound["input"]) not in tracked:
                return "embedding"
        if call.func in _NORMS:
            bound = _bind(_NORMS[call.func], call)
            x, shape = bound["input"], bound["normalized_shape"]
            trailing = 1 if isinstance(shape, int) else len(shape)
            if id(x) not in tracked and x.ndim > trailing and x.shape[0] == n:
                return "norm"
        if any(call.func in group for group in (_ADD, _SUB, _MUL)):
            args, kwargs = tree_unflatten(call.leaves, call.spec)
            if len(args) == 2 and set(kwargs) <= {"alpha"} and len(call.tracked) == 1:
                other = args[1 - call.tracked[0]] if call.tracked[0] < 2 else None
                if isinstance(other, Tensor) and other in self.data:
                    return "elementwise"
        return "generic"


# --------------------------------------------------------------------------------------------
# directions of parameters and of tensors derived from them
# --------------------------------------------------------------------------------------------
class _Directions:
    """The K directions of every parameter and of derived tensors (jvp of their calls).

    A derived tensor's directions are kept across chunks: the next chunk's forward makes the
    same parameter-only call again (a position embedding ``P[arange(T)]``), found by
    :func:`_same_call`, and reuses them.
    """

    def __init__(
        self,
        model: FunctionalModel,
        directions: Tensor | ProbeFactors,
        reference: Tensor,
        scale: Tensor | None = None,
    ) -> None:
        # blocks are cut (flat directions) or read (probe factors), scaled by P and cast to
        # ``reference``'s dtype and device when first asked for: parameters contracted through
        # the probes' factors never need theirs
        self.model, self.directions, self.scale = model, directions, scale
        self.dtype, self.device = reference.dtype, reference.device
        flat = isinstance(directions, Tensor)
        self.count = directions.shape[0] if flat else directions.count
        self.offsets = [0]
        for size in model.sizes:
            self.offsets.append(self.offsets[-1] + size)
        self.params: dict[int, Tensor] = {}
        self.derived: dict[int, list[Tensor | None]] = {}  # id(call) -> tangents, this chunk
        self.kept: list[tuple[_Call, list[Tensor | None]]] = []  # across chunks

    def forget_derived(self) -> None:
        self.derived = {}

    def of(self, node: _Param | _Derived) -> Tensor:
        """(K, *shape): the directions of a parameter or of a derived tensor."""
        if isinstance(node, _Param):
            i = node.index
            if i not in self.params:
                cut = slice(self.offsets[i], self.offsets[i + 1])
                if isinstance(self.directions, Tensor):
                    block = self.directions[:, cut]
                else:
                    block = self.directions.block(i)
                if self.scale is not None:
                    block = block * self.scale[cut].to(block)
                block = block.to(dtype=self.dtype, device=self.device)
                self.params[i] = block.reshape(self.count, *self.model.shapes[i]).contiguous()
            return self.params[i]
        call = node.call
        if id(call) not in self.derived:
            found = next((t for c, t in self.kept if _same_call(c, call)), None)
            if found is None:
                tangents = [self.of(parent) for parent in call.nodes]
                found = _along(call.function(), call.primals(), tangents)
                self.kept.append((call, found))
            self.derived[id(call)] = found
        derivative = self.derived[id(call)][node.output]
        if derivative is None:
            raise InputError(f"{_name(call.func)} of a parameter has no derivative")
        return derivative


def _same_node(a: _Param | _Derived, b: _Param | _Derived) -> bool:
    if isinstance(a, _Param) or isinstance(b, _Param):
        return isinstance(a, _Param) and isinstance(b, _Param) and a.index == b.index
    return a.output == b.output and _same_call(a.call, b.call)


def _same_leaf(a: object, b: object) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (
            isinstance(a, Tensor)
            and isinstance(b, Tensor)
            and (a.shape, a.dtype, a.device) == (b.shape, b.dtype, b.device)
            and bool(torch.equal(a, b))
        )
    try:
        return type(a) is type(b) and bool(a == b)
    except (TypeError, ValueError, RuntimeError):
        return False


def _same_call(a: _Call, b: _Call) -> bool:
    """Whether two parameter-only calls compute the same tensor (same function and arguments)."""
    if a is b:
        return True
    if a.func is not b.func or a.tracked != b.tracked or len(a.leaves) != len(b.leaves):
        return False
    if a.spec != b.spec or not all(_same_node(x, y) for x, y in zip(a.nodes, b.nodes)):
        return False
    tracked = set(a.tracked)
    return all(
        _same_leaf(x, y) for p, (x, y) in enumerate(zip(a.leaves, b.leaves)) if p not in tracked
    )


def _along(
    function: Callable, primals: tuple[Tensor, ...], tangents: Sequence[Tensor]
) -> list[Tensor | None]:
    """The flattened outputs' directional derivatives along K tangents: (K, *shape) each.

    One ``jvp`` of ``function`` per direction, batched over the K directions by ``vmap`` (a
    Python loop where vmap cannot batch an operation).
    """

    def one(*tangent: Tensor):
        return jvp(function, primals, tangent)[1]

    try:
        stacked = tree_flatten(vmap(one)(*tangents))[0]
        return [t if isinstance(t, Tensor) else None for t in stacked]
    except (RuntimeError, NotImplementedError):  # an operation vmap cannot batch
        rows = [tree_flatten(one(*(t[k] for t in tangents)))[0] for k in range(len(tangents[0]))]
        return [
            torch.stack([row[j] for row in rows]) if isinstance(rows[0][j], Tensor) else None
            for j in range(len(rows[0]))
        ]


def _parameter_names(node: _Param | _Derived, names: list[str]) -> set[str]:
    if isinstance(node, _Param):
        return {names[node.index]}
    return set().union(*(_parameter_names(parent, names) for parent in node.call.nodes))


# --------------------------------------------------------------------------------------------
# contractions with flat directions: (n, K) scores of one use
# --------------------------------------------------------------------------------------------
# Weighs the contraction orders: a memory-bound multiply-add (a gather, an elementwise product
# of large temporaries) costs about as much as this many multiply-adds inside a matrix product
# (measured on one CPU thread: ~6 ns per gathered element, ~0.06 ns per GEMM multiply-add).
MEMORY_BOUND_COST = 64


def _linear_scores(
    x: Tensor, delta: Tensor, weight: Tensor | None, bias: Tensor | None, budget: int
) -> Tensor:
    """sum_t delta_{i,t}^T G_k a_{i,t} + sum_t delta_{i,t} . h_k: shape (n, K).

    Args:
        x: the layer's inputs a, shape (n, ..., in).
        delta: d(sum_j l_j)/d(output), shape (n, ..., out).
        weight: the K directions G_k of the weight, (K, out, in), or None (not scored here).
        bias: the K directions h_k of the bias, (K, out), or None.
        budget: numbers in one temporary block.

    """
    reference = weight if weight is not None else bias
    n, k = x.shape[0], reference.shape[0]
    d_out = delta.shape[-1]
    d = delta.reshape(n, -1, d_out).to(reference.dtype)
    scores = torch.zeros(n, k, dtype=reference.dtype, device=reference.device)
    if bias is not None:
        scores += d.sum(1) @ bias.T
    if weight is None:
        return scores
    d_in = weight.shape[2]
    a = x.reshape(n, -1, d_in).to(weight.dtype)
    t = a.shape[1]
    narrow = min(d_in, d_out)
    project = n * t * k * (d_out * d_in + MEMORY_BOUND_COST * narrow)
    per_example = n * d_out * d_in * (t + k)
    if project < per_example:  # few directions or one position: project, then meet
        step = max(1, budget // max(1, n * t * narrow))
        for s in range(0, k, step):
            g = weight[s : s + step]
            if d_in <= d_out:  # delta_{i,t}^T G_k, then . a_{i,t}
                moved = d.reshape(n * t, d_out) @ g.permute(1, 0, 2).reshape(d_out, -1)
                met = moved.view(n, t, -1, d_in) * a.unsqueeze(2)
            else:  # G_k a_{i,t}, then . delta_{i,t}
                moved = a.reshape(n * t, d_in) @ g.permute(2, 0, 1).reshape(d_in, -1)
                met = moved.view(n, t, -1, d_out) * d.unsqueeze(2)
            scores[:, s : s + step] += met.sum((1, 3))
        return scores
    # per-example layer gradients sum_t delta a^T, met by every G_k in one matrix product
    flat = weight.reshape(k, -1).T
    step = max(1, budget // max(1, d_out * d_in))
    for s in range(0, n, step):
        layer = torch.bmm(d[s : s + step].transpose(1, 2), a[s : s + step])
        scores[s : s + step] += layer.reshape(layer.shape[0], -1) @ flat
    return scores


def _embedding_mask(tokens: Tensor, delta: Tensor, padding_idx: int | None, rows: int) -> Tensor:
    """Output gradients with the ``padding_idx`` positions zeroed (torch's backward skips them)."""
    if padding_idx is None:
        return delta
    pad = padding_idx if padding_idx >= 0 else padding_idx + rows
    return delta * (tokens != pad).unsqueeze(-1).to(delta.dtype)


def _embedding_scores(
    tokens: Tensor, delta: Tensor, table: Tensor, padding_idx: int | None, budget: int
) -> Tensor:
    """sum_t delta_{i,t} . G_k[token_{i,t}]: shape (n, K).

    Two ways, by cost: gather G_k at every position (K n T d memory-bound products), or sum
    each example's output gradients per distinct token of the chunk and meet all G_k in one
    matrix product (n U d K multiply-adds, U the distinct tokens).
    """
    n, k, width = tokens.shape[0], table.shape[0], table.shape[-1]
    ids = tokens.reshape(n, -1)
    d = _embedding_mask(
        ids, delta.reshape(n, -1, width).to(table.dtype), padding_idx, table.shape[1]
    )
    t = ids.shape[1]
    distinct, inverse = torch.unique(ids, return_inverse=True)
    u = distinct.numel()
    scores = torch.zeros(n, k, dtype=table.dtype, device=table.device)
    if n * u + MEMORY_BOUND_COST * u <= MEMORY_BOUND_COST * n * t:
        sums = torch.zeros(n * u, width, dtype=d.dtype, device=d.device)
        rows = (torch.arange(n, device=ids.device).unsqueeze(1) * u + inverse).reshape(-1)
        sums.index_add_(0, rows, d.reshape(-1, width))
        step = max(1, budget // max(1, u * width))
        for s in range(0, k, step):
            picked = table[s : s + step, distinct].reshape(-1, u * width)
            scores[:, s : s + step] = sums.view(n, u * width) @ picked.T
        return scores
    step = max(1, budget // max(1, n * t * width))
    for s in range(0, k, step):
        picked = table[s : s + step, ids.reshape(-1)].view(-1, n, t * width)
        scores[:, s : s + step] = (picked * d.reshape(1, n, t * width)).sum(-1).T
    return scores


def _generic_scores(
    use: _Use, deltas: list[Tensor | None], tangents: list[Tensor], n: int, budget: int
) -> Tensor:
    """The exact fallback for any other use: per-example vjp or per-direction jvp of the call."""
    k, dtype = tangents[0].shape[0], tangents[0].dtype
    kept = [j for j, dl in enumerate(deltas) if dl is not None]
    size = sum(t[0].numel() for t in tangents)
    width = sum(deltas[j].numel() for j in kept)
    if n * size <= k * width:
        try:
            return _per_example_scores(use, deltas, kept, tangents, n, budget)
        except (RuntimeError, NotImplementedError, ValueError, TypeError):
            pass  # an operation vmap cannot batch per example: the per-direction form below
    scores = torch.zeros(n, k, dtype=dtype, device=tangents[0].device)
    step = max(1, budget // max(1, width))
    function = use.call.function()
    for s in range(0, k, step):
        moved = _along(function, use.call.primals(), [t[s : s + step] for t in tangents])
        for j in kept:
            change = moved[j].reshape(moved[j].shape[0], n, -1)
            scores[:, s : s + step] += (change * deltas[j].reshape(1, n, -1).to(dtype)).sum(-1).T
    return scores


def _per_example_scores(
    use: _Use,
    deltas: list[Tensor | None],
    kept: list[int],
    tangents: list[Tensor],
    n: int,
    budget: int,
) -> Tensor:
    """Per-example gradients of the call (vmap of its vjp, one example a batch of one) met by G_k."""
    call = use.call
    data = [p for p, on_axis in enumerate(use.example_axis) if on_axis]
    primals = call.primals()

    def one(*example: Tensor):
        rows, cotangents = example[: len(data)], example[len(data) :]
        function = call.function({p: row.unsqueeze(0) for p, row in zip(data, rows)})

        def outputs(*values: Tensor):
            flat = tree_flatten(function(*values))[0]
            return tuple(flat[j] for j in kept)

        _, pull = vjp(outputs, *primals)
        return pull(tuple(c.unsqueeze(0) for c in cotangents))

    k, dtype = tangents[0].shape[0], tangents[0].dtype
    flat = [t.reshape(k, -1).T for t in tangents]
    scores = torch.zeros(n, k, dtype=dtype, device=tangents[0].device)
    step = max(1, budget // max(1, sum(f.shape[0] for f in flat)))
    batched = vmap(one)
    for s in range(0, n, step):
        rows = [call.leaves[p][s : s + step] for p in data]
        grads = batched(*rows, *(deltas[j][s : s + step] for j in kept))
        for g, f in zip(grads, flat):
            scores[s : s + step] += g.reshape(g.shape[0], -1).to(dtype) @ f
    return scores


def _norm_scores(
    call: _Call, delta: Tensor, nodes: dict[int, _Param | _Derived], directions: _Directions
) -> Tensor:
    """Layer or RMS norm: per-example sum_t delta_t * xhat_t (weight) and sum_t delta_t (bias).

    xhat is the normalized input (the norm without its affine part, recomputed once).
    """
    names = _NORMS[call.func]
    bound = _bind(names, call)
    x, shape = bound["input"], bound["normalized_shape"]
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    n, size = x.shape[0], math.prod(shape)
    d = delta.to(directions.dtype)
    scores = torch.zeros(n, directions.count, dtype=directions.dtype, device=directions.device)
    weight = nodes.get(id(bound.get("weight")))
    if weight is not None:
        if call.func is F.layer_norm:
            unit = F.layer_norm(x, shape, None, None, bound.get("eps", 1e-5))
        else:
            unit = F.rms_norm(x, shape, None, bound.get("eps"))
        per_example = (d * unit.to(d.dtype)).reshape(n, -1, size).sum(1)
        scores += per_example @ directions.of(weight).reshape(-1, size).T
    bias = nodes.get(id(bound.get("bias")))
    if bias is not None:
        scores += d.reshape(n, -1, size).sum(1) @ directions.of(bias).reshape(-1, size).T
    return scores


def _elementwise_scores(use: _Use, delta: Tensor, directions: _Directions, n: int) -> Tensor | None:
    """Elementwise p + x, p - x, x - p, p * x (p broadcast over the examples), per example.

    Returns None where p is not broadcast along the examples (the generic fallback then).
    """
    call = use.call
    args, kwargs = tree_unflatten(call.leaves, call.spec)
    position = call.tracked[0]
    p, other = args[position], args[1 - position]
    padded = (1,) * (delta.ndim - p.ndim) + tuple(p.shape)
    if len(padded) != delta.ndim or padded[0] != 1:
        return None
    tangent = directions.of(call.nodes[0])
    d = delta.to(tangent.dtype)
    if call.func in _MUL:
        change = d * other.to(tangent.dtype)
    else:
        alpha = kwargs.get("alpha", 1) if position == 1 else 1
        sign = -1 if call.func in _SUB and position == 1 else 1
        change = d * (sign * alpha)
    per_example = change.sum_to_size((n, *padded[1:])).reshape(n, -1)
    return per_example @ tangent.reshape(tangent.shape[0], -1).T


# --------------------------------------------------------------------------------------------
# directions that are gradients of probe losses: their own factors
# --------------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Factor:
    """One probe use's share of grad L_k on one parameter, for the probes ``traits``.

    ``role`` ``weight``: G_k = sum_s delta'_{k,s} a'_s^T with ``inputs`` a' (S, in) and
    ``gradients`` delta' (K_g, S, out); ``bias``: h_k = ``gradients`` (K_g, out);
    ``embedding``: G_k[v] = sum_{s: token'_s = v} delta'_{k,s}, ``inputs`` the tokens (S,).
    """

    role: str
    traits: Tensor
    inputs: Tensor | None
    gradients: Tensor


@dataclass
class ProbeFactors:
    """The trait gradients grad L_k(theta), as factors where they factor, else as blocks.

    Attributes:
        model: the network the probes were read on.
        count: K, the number of probes.
        factors: parameter index -> the factors of every probe use of that parameter, for the
            parameters whose every probe use reads them directly as a Linear weight or bias or
            an Embedding table (a parameter no probe reads has an empty list).
        blocks: parameter index -> grad L_k restricted to that parameter, float64 (K, size),
            for every other parameter.

    """

    model: FunctionalModel
    count: int
    factors: dict[int, list[_Factor]]
    blocks: dict[int, Tensor]

    def roles(self, index: int) -> set[str] | None:
        """The roles of a parameter's factors (empty: unused by the probes); None: not factored."""
        if index not in self.factors:
            return None
        return {factor.role for factor in self.factors[index]}

    def block(self, index: int) -> Tensor:
        """The trait gradients restricted to parameter ``index``: float64, shape (K, size)."""
        if index in self.blocks:
            return self.blocks[index]
        shape = self.model.shapes[index]
        out = torch.zeros(self.count, *shape, dtype=torch.float64)
        for factor in self.factors[index]:
            out = out.to(factor.gradients.device)
            delta = factor.gradients.double()
            if factor.role == "weight":  # sum_s delta'_s a'_s^T
                out[factor.traits] += delta.transpose(1, 2) @ factor.inputs.double()
            elif factor.role == "bias":
                out[factor.traits] += delta
            else:  # rows of the probe's tokens
                rows = torch.zeros(delta.shape[0], *shape, dtype=torch.float64, device=out.device)
                out[factor.traits] += rows.index_add_(1, factor.inputs, delta)
        return out.reshape(self.count, -1)

    @property
    def gradients(self) -> Tensor:
        """The trait gradients grad L_k(theta): float64, shape (K, P), assembled when asked for."""
        return torch.cat([self.block(i) for i in range(len(self.model.names))], 1)


def _groups(probes: Sequence) -> list[list[int]]:
    """Probe indices grouped by identical inputs (one forward and one batched backward each)."""
    groups: list[list[int]] = []
    for k, probe in enumerate(probes):
        for group in groups:
            first = probes[group[0]].inputs
            same = first.shape == probe.inputs.shape and first.dtype == probe.inputs.dtype
            if same and bool(torch.equal(first, probe.inputs)):
                group.append(k)
                break
        else:
            groups.append([k])
    return groups


def probe_factors(model: FunctionalModel, theta: Tensor, probes: Sequence) -> ProbeFactors:
    """The trait gradients grad L_k(theta) of every probe, factored where they factor.

    Probes with the same inputs share one forward. A parameter every probe use reads directly
    as a Linear weight or bias or an Embedding table is kept as factors: one batched backward
    (``is_grads_batched``) of the vector (L_k) returns each use's output gradient delta'_k, and
    grad_W L_k = sum_s delta'_{k,s} a'_s^T (s over the probe's positions). For an example's layer
    gradient sum_t delta a^T that gives

        <grad_W L_k, sum_t delta_t a_t^T> = sum_s delta'_{k,s}^T (sum_t (a'_s . a_t) delta_t),

    n S (T in + T out + K out) multiply-adds instead of n K out in. Every other parameter's
    gradient comes from the same backward as a (K, size) block.

    Args:
        model: the network as f(theta, x).
        theta: the parameters.
        probes: ``engine.screen.TraitProbe`` objects (name, inputs, loss of the outputs).

    Returns:
        A :class:`ProbeFactors`.

    Raises:
        InputError: no probes, a probe whose loss is not a finite scalar, or a gradient that is
            not finite.

    """
    if not probes:
        raise InputError("no candidate traits: pass at least one TraitProbe")
    theta = theta.detach()
    names = model.names
    passes = []
    factorable = set(range(len(names)))
    for group in _groups(probes):
        recorder, outputs = _record(
            model, theta.clone().requires_grad_(True), probes[group[0]].inputs
        )
        values = []
        for k in group:
            value = probes[k].loss(outputs)
            if value.ndim != 0 or not torch.isfinite(value):
                raise InputError(f"trait probe '{probes[k].name}' must give a finite scalar loss")
            values.append(value)
        _check_versions(recorder)
        for use in recorder.uses:
            factorable -= _read_indirectly(use, names)
        passes.append((group, recorder, torch.stack(values)))
    flat = [i for i in range(len(names)) if i not in factorable]
    factors: dict[int, list[_Factor]] = {i: [] for i in sorted(factorable)}
    blocks = {
        i: torch.zeros(len(probes), model.sizes[i], dtype=torch.float64, device=theta.device)
        for i in flat
    }
    for group, recorder, values in passes:
        kept = [output for output, _ in recorder.kept]
        views = [recorder.params[names[i]] for i in flat]
        basis = torch.eye(len(group), dtype=values.dtype, device=theta.device)
        grads = torch.autograd.grad(
            values, [*kept, *views], basis, is_grads_batched=True, allow_unused=True
        )
        for i, g in zip(flat, grads[len(kept) :]):
            if g is not None:
                blocks[i][group] = g.reshape(len(group), -1).double()
        delta_of = {id(output): g for output, g in zip(kept, grads[: len(kept)])}
        traits = torch.tensor(group, device=theta.device)
        for use in recorder.uses:
            deltas = [None if o is None else delta_of.get(id(o)) for o in use.outputs]
            if deltas and deltas[0] is not None and use.kind in ("linear", "embedding"):
                _factor_use(use, deltas[0], traits, factors)
    finite = [g.sum() for g in blocks.values()]
    finite += [f.gradients.sum() for fs in factors.values() for f in fs]
    if finite and not torch.isfinite(torch.stack(finite).sum()):
        raise InputError("a trait gradient contains NaN or inf: check the probes' losses")
    return ProbeFactors(model, len(probes), factors, blocks)


def _read_indirectly(use: _Use, names: list[str]) -> set[int]:
    """Parameters a probe use reads other than directly as a Linear weight/bias or a table."""
    call = use.call
    direct: set[int] = set()
    if use.kind in ("linear", "embedding"):
        bound = _bind(_LINEAR_ARGS if use.kind == "linear" else _EMBEDDING_ARGS, call)
        roles = ("weight", "bias") if use.kind == "linear" else ("weight",)
        direct = {id(bound.get(role)) for role in roles if bound.get(role) is not None}
    out: set[int] = set()
    for p, node in zip(call.tracked, call.nodes):
        if id(call.leaves[p]) in direct and isinstance(node, _Param):
            continue
        out |= {names.index(name) for name in _parameter_names(node, names)}
    return out


def _factor_use(
    use: _Use, delta: Tensor, traits: Tensor, factors: dict[int, list[_Factor]]
) -> None:
    """Add one probe use's factors for the parameters it reads directly and that factor."""
    call = use.call
    nodes = {id(call.leaves[p]): node for p, node in zip(call.tracked, call.nodes)}
    k, width = delta.shape[0], delta.shape[-1]
    flat_delta = delta.detach().reshape(k, -1, width)
    if use.kind == "linear":
        bound = _bind(_LINEAR_ARGS, call)
        x, weight, bias = bound["input"], bound["weight"], bound.get("bias")
        node = nodes.get(id(weight))
        if isinstance(node, _Param) and node.index in factors:
            inputs = x.detach().reshape(-1, x.shape[-1])
            factors[node.index].append(_Factor("weight", traits, inputs, flat_delta))
        node = nodes.get(id(bias))
        if isinstance(node, _Param) and node.index in factors:
            factors[node.index].append(_Factor("bias", traits, None, flat_delta.sum(1)))
        return
    bound = _bind(_EMBEDDING_ARGS, call)
    node = nodes.get(id(bound["weight"]))
    if isinstance(node, _Param) and node.index in factors:
        tokens = bound["input"].reshape(-1)
        rows = bound["weight"].shape[0]
        masked = _embedding_mask(tokens, flat_delta, bound.get("padding_idx"), rows)
        factors[node.index].append(_Factor("embedding", traits, tokens, masked))


def _factored_weight(
    a: Tensor, d: Tensor, factor: _Factor, scale: Tensor | None, budget: int
) -> Tensor:
    """<P . sum_s delta'_{k,s} a'_s^T, sum_t delta_{i,t} a_{i,t}^T> for one factor: (n, K_g)."""
    n, t, d_in = a.shape
    d_out = d.shape[-1]
    probe_a = factor.inputs.to(a.dtype)
    probe_d = factor.gradients.to(a.dtype)
    k, s = probe_d.shape[:2]
    met = probe_d.reshape(k, s * d_out).T
    if scale is None:
        # W_{i,s} = sum_t (a'_s . a_{i,t}) delta_{i,t}, then . delta'_{k,s}
        overlap = (a.reshape(n * t, d_in) @ probe_a.T).view(n, t, s)
        weighted = torch.bmm(overlap.transpose(1, 2), d)
        return weighted.reshape(n, s * d_out) @ met
    # P couples the factors: per-example layer gradients, scaled, applied to a'
    scores = torch.empty(n, k, dtype=a.dtype, device=a.device)
    step = max(1, budget // max(1, d_out * d_in))
    for start in range(0, n, step):
        layer = torch.bmm(d[start : start + step].transpose(1, 2), a[start : start + step])
        applied = (layer * scale) @ probe_a.T  # (n, out, S)
        scores[start : start + step] = applied.transpose(1, 2).reshape(-1, s * d_out) @ met
    return scores


def _factored_embedding(tokens: Tensor, d: Tensor, factor: _Factor, scale: Tensor | None) -> Tensor:
    """sum_{s,t: token'_s = token_{i,t}} delta'_{k,s} . (P[token'_s] delta_{i,t}): (n, K_g)."""
    n = tokens.shape[0]
    probe_tokens, probe_d = factor.inputs, factor.gradients.to(d.dtype)
    k, s, width = probe_d.shape
    match = (tokens.reshape(n, -1, 1) == probe_tokens.view(1, 1, s)).to(d.dtype)
    weighted = torch.bmm(match.transpose(1, 2), d)  # (n, S, width)
    if scale is not None:
        weighted = weighted * scale[probe_tokens]
    return weighted.reshape(n, s * width) @ probe_d.reshape(k, s * width).T


# --------------------------------------------------------------------------------------------
# one forward and one backward per chunk; every use contracted
# --------------------------------------------------------------------------------------------
def _record(model: FunctionalModel, theta: Tensor, inputs: Tensor) -> tuple[_Recorder, Tensor]:
    """One forward of the module at ``theta`` under the recorder: (recorder, outputs)."""
    check_module_is_functional(model.module)
    params = model.unflatten(theta)
    recorder = _Recorder(inputs.shape[0])
    for i, name in enumerate(model.names):
        recorder.nodes[params[name]] = _Param(i)
    data = inputs.view_as(inputs)  # a tensor of our own to tag, not the caller's
    recorder.data[data] = True
    recorder.params = params
    with recorder:
        outputs = functional_call(model.module, params, (data,))
    return recorder, outputs


def _check_versions(recorder: _Recorder) -> None:
    for output, version in recorder.kept:
        if output._version != version:
            raise InputError(
                "the model modifies a layer's output in place after computing it; the factored "
                "trait scores need out-of-place operations: use method='jvp'"
            )


@dataclass
class _Plan:
    """What a chunk contracts with: flat directions, and optionally probe factors and P."""

    directions: _Directions
    factors: ProbeFactors | None = None
    scale: Tensor | None = None  # the diagonal preconditioner P, flat (P,), or None (P = I)

    def scale_of(self, index: int) -> Tensor | None:
        if self.scale is None:
            return None
        d = self.directions
        block = self.scale[d.offsets[index] : d.offsets[index + 1]]
        return block.view(d.model.shapes[index])

    def factored(self, node: object, role: str) -> bool:
        if self.factors is None or not isinstance(node, _Param):
            return False
        roles = self.factors.roles(node.index)
        return roles is not None and roles <= {role}


def _use_scores(use: _Use, deltas: list[Tensor | None], plan: _Plan, n: int, budget: int) -> Tensor:
    call, directions = use.call, plan.directions
    nodes = {id(call.leaves[p]): node for p, node in zip(call.tracked, call.nodes)}
    scores = torch.zeros(n, directions.count, dtype=directions.dtype, device=directions.device)
    if use.kind == "linear":
        bound = _bind(_LINEAR_ARGS, call)
        x, delta = bound["input"], deltas[0]
        weight, bias = nodes[id(bound["weight"])], nodes.get(id(bound.get("bias")))
        flat_weight = flat_bias = None
        d = delta.reshape(n, -1, delta.shape[-1]).to(scores.dtype)
        if plan.factored(weight, "weight"):
            a = x.reshape(n, -1, x.shape[-1]).to(scores.dtype)
            for factor in plan.factors.factors[weight.index]:
                scale = plan.scale_of(weight.index)
                scores[:, factor.traits] += _factored_weight(a, d, factor, scale, budget)
        else:
            flat_weight = directions.of(weight)
        if bias is not None and plan.factored(bias, "bias"):
            summed = d.sum(1)
            scale = plan.scale_of(bias.index)
            if scale is not None:
                summed = summed * scale
            for factor in plan.factors.factors[bias.index]:
                scores[:, factor.traits] += summed @ factor.gradients.to(summed.dtype).T
        elif bias is not None:
            flat_bias = directions.of(bias)
        if flat_weight is not None or flat_bias is not None:
            scores += _linear_scores(x, delta, flat_weight, flat_bias, budget)
        return scores
    if use.kind == "embedding":
        bound = _bind(_EMBEDDING_ARGS, call)
        table, tokens, padding = (
            nodes[id(bound["weight"])],
            bound["input"],
            bound.get("padding_idx"),
        )
        if plan.factored(table, "embedding"):
            width = deltas[0].shape[-1]
            ids = tokens.reshape(n, -1)
            rows = bound["weight"].shape[0]
            d = _embedding_mask(
                ids, deltas[0].reshape(n, -1, width).to(scores.dtype), padding, rows
            )
            scale = plan.scale_of(table.index)
            for factor in plan.factors.factors[table.index]:
                scores[:, factor.traits] += _factored_embedding(ids, d, factor, scale)
            return scores
        return _embedding_scores(tokens, deltas[0], directions.of(table), padding, budget)
    if use.kind == "norm":
        return _norm_scores(call, deltas[0], nodes, directions)
    if use.kind == "elementwise":
        scores = _elementwise_scores(use, deltas[0], directions, n)
        if scores is not None:
            return scores
    tangents = [directions.of(node) for node in call.nodes]
    return _generic_scores(use, deltas, tangents, n, budget)


def _chunk_scores(
    model: FunctionalModel,
    theta: Tensor,
    inputs: Tensor,
    targets: Tensor,
    example_loss: ExampleLoss,
    plan: _Plan,
    budget: int,
) -> Tensor:
    n = inputs.shape[0]
    recorder, outputs = _record(model, theta, inputs)
    losses = example_loss(outputs, targets)
    if losses.shape != (n,):
        raise InputError(
            f"example_loss must return one loss per example, shape ({n},), got "
            f"{tuple(losses.shape)}"
        )
    scores = torch.zeros(n, plan.directions.count, dtype=torch.float64, device=theta.device)
    if not recorder.kept or not losses.requires_grad:
        return scores  # no parameter reaches the losses: every score is 0
    _check_versions(recorder)
    kept = [output for output, _ in recorder.kept]
    gradients = torch.autograd.grad(losses.sum(), kept, allow_unused=True)
    delta_of = {id(output): g for output, g in zip(kept, gradients)}
    plan.directions.forget_derived()
    with torch.no_grad():
        for use in recorder.uses:
            deltas = [None if o is None else delta_of.get(id(o)) for o in use.outputs]
            if all(dl is None for dl in deltas):
                continue  # no example's loss depends on this use
            scores += _use_scores(use, deltas, plan, n, budget).double()
    return scores


def _scores(
    model: FunctionalModel,
    theta: Tensor,
    inputs: Tensor,
    targets: Tensor,
    example_loss: ExampleLoss,
    directions: Tensor | ProbeFactors,
    batch_size: int | None,
    memory_budget: int,
    scale: Tensor | None = None,
) -> Tensor:
    from sublim_theory.engine.screen import check_data, check_directions, example_chunks

    check_data(inputs, targets, batch_size)
    factors = None
    if isinstance(directions, Tensor):
        check_directions(model, directions)
    else:
        factors = directions  # checked finite when formed (probe_factors)
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 1:
        raise InputError(f"memory_budget must be a positive integer, got {memory_budget!r}")
    theta = theta.detach()
    along = _Directions(model, directions, theta, scale)
    plan = _Plan(
        along,
        factors,
        None if scale is None else scale.to(dtype=theta.dtype, device=theta.device),
    )
    out = torch.empty(inputs.shape[0], along.count, dtype=torch.float64)
    for s in example_chunks(inputs.shape[0], batch_size):
        out[s] = _chunk_scores(
            model, theta, inputs[s], targets[s], example_loss, plan, memory_budget
        ).cpu()
    return out


# --------------------------------------------------------------------------------------------
# the public functions
# --------------------------------------------------------------------------------------------
def factored_uses(model: FunctionalModel, theta: Tensor, inputs: Tensor) -> list[ParameterUse]:
    """Every use of a parameter in one forward on ``inputs``, as the factored scores treat it.

    Returns:
        One :class:`ParameterUse` per call that meets parameters and data, in forward order (a
        tied weight appears once per use).

    Raises:
        InputError: a use the factored scores cannot assign to examples (see the module
            docstring), or a module in train mode.

    """
    with torch.no_grad():
        recorder, _ = _record(model, theta.detach(), inputs)
    out = []
    for use in recorder.uses:
        names = set().union(*(_parameter_names(node, model.names) for node in use.call.nodes))
        out.append(ParameterUse(use.kind, _name(use.call.func), tuple(sorted(names))))
    return out


def trait_scores(
    model: FunctionalModel,
    theta: Tensor,
    inputs: Tensor,
    targets: Tensor,
    example_loss: ExampleLoss,
    directions: Tensor,
    batch_size: int | None = None,
    *,
    memory_budget: int = MEMORY_BUDGET,
) -> Tensor:
    """c_ik = <g_k, grad l_i(theta)> for every example and any K directions: (N, K) float64.

    The same numbers as ``engine.screen.example_attributions`` (one jvp per direction), from
    one forward and one backward of sum_i l_i per chunk and one contraction per use of a
    parameter (module docstring).

    Args:
        model: the network as f(theta, x).
        theta: the parameters at which the gradients are taken.
        inputs: the examples' inputs, (N, ...), examples on the leading axis.
        targets: what each example's loss compares with, (N, ...).
        example_loss: (outputs, targets) -> per-example losses, shape (n,).
        directions: the K directions g_k, shape (K, P), in ``theta``'s layout.
        batch_size: examples per chunk (one forward and one backward each); default all.
        memory_budget: numbers in one temporary block of a contraction.

    Returns:
        The scores, float64, shape (N, K), on the CPU.

    Raises:
        InputError: empty data, mismatched targets, directions not shaped (K, P) or not
            finite, a loss not shaped (n,), or a model whose parameter uses cannot be assigned
            to examples (use the jvp path for it).

    """
    return _scores(
        model, theta, inputs, targets, example_loss, directions, batch_size, memory_budget
    )


def probe_trait_scores(
    model: FunctionalModel,
    theta: Tensor,
    inputs: Tensor,
    targets: Tensor,
    example_loss: ExampleLoss,
    factors: ProbeFactors,
    scale: Tensor | None = None,
    batch_size: int | None = None,
    *,
    memory_budget: int = MEMORY_BUDGET,
) -> Tensor:
    """c_ik = <P grad L_k(theta), grad l_i(theta)> with the probes' own factors: (N, K) float64.

    :func:`trait_scores` for the directions d_k = P grad L_k (P = diag(``scale``), or I), where
    every Linear and Embedding parameter read by the probes is contracted through the probes'
    factors (:func:`probe_factors`): the cost no longer grows as K times the layer's size.

    Args:
        model: the network as f(theta, x).
        theta: the parameters (those ``factors`` were taken at).
        inputs: the examples' inputs, (N, ...).
        targets: what each example's loss compares with, (N, ...).
        example_loss: (outputs, targets) -> per-example losses, shape (n,).
        factors: :func:`probe_factors` at ``theta``.
        scale: the diagonal preconditioner P, shape (P,), or None for P = I.
        batch_size: examples per chunk; default all.
        memory_budget: numbers in one temporary block of a contraction.

    Returns:
        The scores, float64, shape (N, K), on the CPU.

    Raises:
        InputError: as :func:`trait_scores`, or a ``scale`` not shaped (P,) or not finite.

    """
    if scale is not None and (
        scale.shape != (model.num_params,) or not torch.isfinite(scale.sum())
    ):
        raise InputError(
            f"scale must be a finite vector of shape ({model.num_params},), got "
            f"{tuple(scale.shape)}"
        )
    return _scores(
        model,
        theta,
        inputs,
        targets,
        example_loss,
        factors,
        batch_size,
        memory_budget,
        scale,
    )
