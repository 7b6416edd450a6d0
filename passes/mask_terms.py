"""Reading the terms of an attention mask's condition, by structure only (for
passes/causal_mask.py, which decides what a mask read so may be replaced by).

transformers builds its mask under torch.compile as (masking_utils, 5.17)

    mask = where(AND of terms, 0, fill)        # fill: -inf (sdpa) or finfo.min (eager)

with terms such as `k_idx <= q_idx` (iota vectors, unsqueezed to the key and query
axes), the key padding `attention_mask[b_idx, k_idx]` (one value per key: size 1 on
the query axis), a packed-sequence term `seq[b, q_idx] == seq[b, k_idx]` whose `seq`
(a cumsum over position-id jumps) is constant along each row when the positions are
contiguous, and a literal True. What is read here:

  - an order comparison of two index vectors `k + ck <= q + cq` (le/lt/ge/gt in
    either operand order; a vector is an iota of step 1, shifted by int constants,
    reshaped only by unsqueeze/size-1 views/expand/slices), or of their difference
    with an int, `(k - q) <= c` (torch's tril / triu, as SDPA's math path builds
    is_causal), bounds k - q (`bound`);
  - `T[i, k] <= T[i, q]` (transformers >= 5.18 compares positions so) reads as
    `k <= q` when T, computed concretely (no graph input, small), is an integer table
    whose rows strictly increase (one T, one i on both sides);
  - `eq(index(T, [i, x]), index(T, [i, y]))` with one T and one i is all True when T,
    computed concretely, has constant rows: both sides are T[i, 0] (`same_rows_eq`);
  - the AND of the terms, through expands and leading unit dims, full(True) dropped
    (`conjuncts`); a where() branch that is one number (`scalar`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.fx as fx

from ..compat import known_equal, real_tensors
from .match_utils import aten, prims, val

_CONCRETE_LIMIT = 1 << 20  # elements of a tensor computed concretely for a proof
ALIASES = {aten.expand.default, aten.alias.default, aten.clone.default}


class _Refused(Exception):
    """A value that is not computed concretely (see `_concrete`)."""



@dataclass(frozen=True)
class _Vec:
    """An index vector: value idx(axis) + offset, constant along every other axis."""
    rank: int
    axis: int
    size: object
    offset: int

    @property
    def pos(self) -> int:  # axis counted from the right: -2 query, -1 key
        return self.axis - self.rank


def _int(x) -> Optional[int]:
    return x if isinstance(x, int) and not isinstance(x, bool) else None


def _vec(node) -> Optional[_Vec]:
    """The node as an index vector, or None."""
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return None
    t, a = node.target, node.args
    if t in (prims.iota.default, aten.arange.default, aten.arange.start):
        # integers only: exact, and k < q is then k <= q - 1
        if val(node).dtype.is_floating_point or val(node).dtype == torch.bool:
            return None
        if t is prims.iota.default:
            start, step = _int(node.kwargs.get("start")), _int(node.kwargs.get("step"))
        else:
            start, step = (_int(a[0]) if t is aten.arange.start else 0), 1
        if start is None or step != 1:
            return None
        return _Vec(1, 0, val(node).shape[0], start)
    if t in (aten.add.Tensor, aten.add.Scalar, aten.sub.Tensor, aten.sub.Scalar) and len(a) == 2:
        v, c = _vec(a[0]), _int(a[1])
        if v is None or c is None or node.kwargs.get("alpha", 1) != 1:
            return None
        return replace(v, offset=v.offset + (c if t in (aten.add.Tensor, aten.add.Scalar) else -c))
    if t is aten.unsqueeze.default:
        v = _vec(a[0])
        if v is None:
            return None
        d = a[1] + v.rank + 1 if a[1] < 0 else a[1]
        return _Vec(v.rank + 1, v.axis + (1 if d <= v.axis else 0), v.size, v.offset)
    if t in ALIASES:  # expand: constant along the new or broadcast dims
        v = _vec(a[0])
        if v is None or len(val(node).shape) < v.rank:
            return None
        return _Vec(len(val(node).shape), v.axis + len(val(node).shape) - v.rank, v.size, v.offset)
    if t in (aten.view.default, aten.reshape.default, aten._unsafe_view.default):
        v = _vec(a[0])
        shape = val(node).shape
        big = [i for i, s in enumerate(shape) if not known_equal(s, 1)]
        old = [s for s in val(a[0]).shape if not known_equal(s, 1)]
        if v is None or len(big) != 1 or len(old) != 1 or not known_equal(shape[big[0]], v.size):
            return None
        return _Vec(len(shape), big[0], v.size, v.offset)
    if t is aten.slice.Tensor:
        v = _vec(a[0])
        dim = a[1] if len(a) > 1 else 0
        start = a[2] if len(a) > 2 and a[2] is not None else 0
        step = a[4] if len(a) > 4 else 1
        if v is None or _int(start) is None or start < 0 or step != 1:
            return None
        dim = dim + v.rank if dim < 0 else dim
        if dim != v.axis:
            return v
        return replace(v, size=val(node).shape[dim], offset=v.offset + start)
    return None


# comparisons as (op, swap): swap reads `a op b` as `b op' a`; le/lt bound the left side
_ORDER = {aten.le.Tensor: ("le", False), aten.lt.Tensor: ("lt", False),
          aten.ge.Tensor: ("le", True), aten.gt.Tensor: ("lt", True)}
_SCALAR_ORDER = {aten.le.Scalar: ("le", False), aten.lt.Scalar: ("lt", False),
                 aten.ge.Scalar: ("le", True), aten.gt.Scalar: ("lt", True)}


def _pair_bound(node) -> Optional[tuple[_Vec, _Vec, int]]:
    """(a, b, d) with a_idx - b_idx <= d for `x op y` of two index vectors (or of two
    lookups in a table with increasing rows), or for `(x - y) op c` with c an int
    (torch's tril / triu decompose to `(k - q) <= diagonal`, `>=`); None otherwise."""
    if node.target in _ORDER:
        op, swap = _ORDER[node.target]
        lo, hi = (node.args[1], node.args[0]) if swap else (node.args[0], node.args[1])
        a, b = _vec(lo), _vec(hi)  # a (op) b
        if a is None and b is None:  # T[i, a] (op) T[i, b] with T's rows increasing
            a, b = _increasing_rows_pair(lo, hi)
        if a is None or b is None:
            return None
        return a, b, b.offset - a.offset - (1 if op == "lt" else 0)
    if node.target in _SCALAR_ORDER:
        op, swap = _SCALAR_ORDER[node.target]
        diff, c = node.args[0], _int(node.args[1])
        if (c is None or not isinstance(diff, fx.Node) or diff.target is not aten.sub.Tensor
                or diff.kwargs.get("alpha", 1) != 1):
            return None
        x, y = _vec(diff.args[0]), _vec(diff.args[1])
        if x is None or y is None:
            return None
        e = c - x.offset + y.offset  # x_idx - y_idx (op) e
        strict = 1 if op == "lt" else 0
        return (y, x, -e - strict) if swap else (x, y, e - strict)  # ge / gt: y - x <= -e (- 1)
    return None


def bound(node, sizes) -> Optional[tuple[str, int]]:
    """An order comparison of a key and a query vector as ('upper' | 'lower', d):
    k - q <= d or k - q >= d; None if the node is no such comparison. Each vector
    must span its whole axis (sizes = (Sq, Sk)): one of size 1 would broadcast one
    value over the axis, not idx + offset."""
    pair = _pair_bound(node)
    if pair is None:
        return None
    a, b, d = pair  # a_idx - b_idx <= d
    if {a.pos, b.pos} != {-2, -1} or not all(known_equal(v.size, sizes[v.pos]) for v in (a, b)):
        return None
    if a.pos == -1:  # k - q <= d
        return "upper", d
    return "lower", -d  # q - k <= d  <=>  k - q >= -d


def _row_lookup(node):
    """index(T, [i, v]) with v an index vector on the last two axes: (T, i, v), or None."""
    if not isinstance(node, fx.Node) or node.target is not aten.index.Tensor:
        return None
    table, idx = node.args
    if len(idx) != 2 or None in idx:
        return None
    v = _vec(idx[1])
    if v is None or v.offset < 0 or len(val(node).shape) != v.rank:  # a negative index wraps
        return None
    return table, idx[0], v


def _increasing_rows_pair(lo, hi) -> tuple:
    """(a, b) for T[i, a] and T[i, b] (one T, one i) when T, computed concretely, is an
    integer table whose every row strictly increases: T[i, a] <= T[i, b] iff a <= b
    (and < iff <), so the comparison reads as one of a and b. transformers >= 5.18
    compares positions `position_ids[b, k] <= position_ids[b, q]` so; (None, None)
    otherwise."""
    x, y = _row_lookup(lo), _row_lookup(hi)
    if x is None or y is None or x[0] is not y[0] or x[1] is not y[1]:
        return None, None
    table = _concrete(x[0])
    if table is None or table.dim() != 2 or table.dtype.is_floating_point or table.dtype == torch.bool:
        return None, None
    with real_tensors():
        if not bool((table[:, 1:] > table[:, :-1]).all()):
            return None, None
    return x[2], y[2]


def _placeholder_free(node: fx.Node) -> bool:
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "placeholder":
            return False
        todo.extend(n.all_input_nodes)
    return True


def _concrete(node: fx.Node):
    """The node's value computed on the CPU from graph constants, or None (it reads
    an input, a size is symbolic, or something is large)."""
    if not _placeholder_free(node):
        return None
    cache: dict = {}

    def ev(n):
        if n in cache:
            return cache[n]
        v = val(n) if n.op != "get_attr" else None
        if v is not None and (not all(isinstance(s, int) for s in v.shape) or v.numel() > _CONCRETE_LIMIT):
            raise _Refused("too large or symbolic to compute")
        if n.op == "get_attr":
            out = getattr(n.graph.owning_module, n.target)
        elif n.op == "call_function":
            args = fx.node.map_arg(n.args, ev)
            kwargs = {k: (torch.device("cpu") if k == "device" else v) for k, v in
                      fx.node.map_arg(n.kwargs, ev).items()}
            out = n.target(*args, **kwargs)
        else:
            raise _Refused(f"cannot compute {n.op}")
        cache[n] = out
        return out

    try:
        with real_tensors():
            out = ev(node)
    except Exception:  # anything it cannot compute is simply not a proof
        return None
    return out if isinstance(out, torch.Tensor) and not isinstance(
        out, torch._subclasses.FakeTensor) else None


def same_rows_eq(node) -> bool:
    """eq(index(T, [i, x]), index(T, [i, y])) with T's rows constant: all True."""
    if node.target is not aten.eq.Tensor:
        return False
    a, b = node.args
    if not all(isinstance(x, fx.Node) and x.target is aten.index.Tensor for x in (a, b)):
        return False
    if a.args[0] is not b.args[0] or len(a.args[1]) != 2 or len(b.args[1]) != 2:
        return False
    if a.args[1][0] is None or a.args[1][0] is not b.args[1][0] or None in (a.args[1][1], b.args[1][1]):
        return False
    table = _concrete(a.args[0])
    if table is None or table.dim() != 2 or table.dtype.is_floating_point:  # NaN != NaN
        return False
    with real_tensors():  # outside it, the pass's fake mode refuses real tensors
        return bool((table == table[:, :1]).all())


def scalar(x, dtype) -> Optional[float]:
    """The value of a where() branch that is one number (a scalar, or a `full` of any
    shape), as the where's output dtype holds it (a fill rounds, e.g. fp32's finfo.min
    is -inf in bf16), or None."""
    if isinstance(x, fx.Node) and x.target is aten.scalar_tensor.default:
        x = torch.tensor(x.args[0], dtype=x.kwargs.get("dtype") or torch.float32)
    elif isinstance(x, fx.Node) and x.target is aten.full.default and isinstance(x.args[1], (int, float)):
        x = torch.tensor(x.args[1], dtype=x.kwargs.get("dtype") or torch.float32)  # one value, any shape
    elif isinstance(x, fx.Node):
        x = _concrete(x) if val(x).numel() == 1 else None
    elif isinstance(x, bool) or not isinstance(x, (int, float)):
        x = None
    if x is None:
        return None
    with real_tensors():
        return float(torch.as_tensor(x).reshape(()).to(dtype))


def leading_dims_only(n: fx.Node) -> bool:
    """n only adds leading dims to its input (values aligned from the right kept):
    unsqueeze before the last two dims, or a view that prepends ones."""
    if n.target not in (aten.unsqueeze.default, aten.view.default, aten.reshape.default):
        return False
    src = n.args[0]
    if not isinstance(src, fx.Node) or val(src).dim() < 2:
        return False
    old, new = tuple(val(src).shape), tuple(val(n).shape)
    if n.target is aten.unsqueeze.default:
        d = n.args[1] + len(new) if n.args[1] < 0 else n.args[1]
        return d <= len(new) - 3
    if n.target in (aten.view.default, aten.reshape.default):
        lead = len(new) - len(old)
        return lead >= 0 and all(known_equal(a, b) for a, b in zip(new[lead:], old)) and all(
            known_equal(s, 1) for s in new[:lead])
    return False


def conjuncts(cond) -> list:
    out, todo = [], [cond]
    while todo:
        n = todo.pop()
        if isinstance(n, fx.Node) and n.target in (aten.bitwise_and.Tensor, aten.logical_and.default):
            todo.extend(n.args)
        elif isinstance(n, fx.Node) and n.target is aten.expand.default:
            todo.append(n.args[0])
        elif isinstance(n, fx.Node) and n.target in (aten.unsqueeze.default, aten.view.default,
                                                     aten.reshape.default) and leading_dims_only(n):
            todo.append(n.args[0])
        elif isinstance(n, fx.Node) and n.target is aten.full.default and n.args[1] is True:
            continue
        else:
            out.append(n)
    return out


__all__ = ["ALIASES", "bound", "conjuncts", "leading_dims_only", "same_rows_eq", "scalar"]
