"""Where each axis of a view comes from: the attention matcher's proof of layout.

`trace_axes(node)` walks back through pure view ops (permute, transpose, expand,
unsqueeze, squeeze, view/reshape, clone) to the first other op, the *base*, and
returns for every axis of `node` which axis of the base it indexes:

    Axis(base_axis, inner, size): node's index i along this axis reads base index
        i * inner (+ the other axes mapped to the same base axis) along base_axis;
        a base axis split by a view is several Axis entries with different inner.
    None: a broadcast axis (expand, unsqueeze): the base does not vary along it.

A view that merges base axes is not followed (NoMatch): the matcher's roles
(batch, head, position, feature) are whole axes or row-major factors of one.
Values are logical (row-major), so clone/contiguous and reshape-as-copy are
identities here, exactly as in the functional graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.fx as fx

from ..compat import known_equal
from .match_utils import NoMatch, aten, describe, is_op, norm_dim, require, val


@dataclass(frozen=True)
class Axis:
    base_axis: int
    inner: object       # int or SymInt: the step in the base axis per index step
    size: object
    base_size: object   # the size of base_axis

    @property
    def whole(self) -> bool:
        return known_equal(self.inner, 1) and known_equal(self.size, self.base_size)


AxisMap = tuple[Optional[Axis], ...]

_IDENTITY = {aten.clone.default, aten.alias.default, aten.contiguous.default, aten.lift_fresh_copy.default}
_VIEWS = {aten.view.default, aten._unsafe_view.default, aten.reshape.default}
_FOLLOWED = _IDENTITY | _VIEWS | {
    aten.permute.default, aten.transpose.int, aten.t.default, aten.expand.default,
    aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default,
}


def _size1(size) -> bool:
    return known_equal(size, 1)


def trace_axes(node: fx.Node) -> tuple[fx.Node, AxisMap]:
    """(base, axis map of node over base); see the module docstring."""
    chain = []
    while is_op(node, *_FOLLOWED):
        chain.append(node)
        node = node.args[0]
    base = node
    shape = val(base).shape
    axes: AxisMap = tuple(None if _size1(s) else Axis(i, 1, s, s) for i, s in enumerate(shape))
    sizes = list(shape)
    for op in reversed(chain):
        axes, sizes = _apply(op, axes, sizes)
    return base, axes


def _apply(op: fx.Node, axes: AxisMap, sizes: list) -> tuple[AxisMap, list]:
    t, args, n = op.target, op.args, len(axes)
    out_sizes = list(val(op).shape)
    if t in _IDENTITY:
        return axes, out_sizes
    if t is aten.permute.default:
        order = [norm_dim(d, n) for d in args[1]]
        return tuple(axes[d] for d in order), out_sizes
    if t in (aten.transpose.int, aten.t.default):
        a, b = (norm_dim(args[1], n), norm_dim(args[2], n)) if t is aten.transpose.int else (0, 1)
        new = list(axes)
        new[a], new[b] = new[b], new[a]
        return tuple(new), out_sizes
    if t is aten.unsqueeze.default:
        d = norm_dim(args[1], n + 1)
        return axes[:d] + (None,) + axes[d:], out_sizes
    if t in (aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default):
        dims = range(n) if t is aten.squeeze.default else (
            [args[1]] if t is aten.squeeze.dim else list(args[1]))
        drop = {norm_dim(d, n) for d in dims if _size1(sizes[norm_dim(d, n)])}
        return tuple(a for i, a in enumerate(axes) if i not in drop), out_sizes
    if t is aten.expand.default:
        lead = len(out_sizes) - n
        new = [None] * lead + [None if a is None or not known_equal(a.size, s) else a
                               for a, s in zip(axes, out_sizes[lead:])]
        return tuple(new), out_sizes
    return _regroup(axes, sizes, out_sizes, op), out_sizes


def _regroup(axes: AxisMap, sizes: list, out_sizes: list, op: fx.Node) -> AxisMap:
    """A view/reshape: each non-1 input axis becomes a run of output axes whose
    sizes multiply to its size (a row-major split); merging is refused."""
    out: list[Optional[Axis]] = []
    src = [(a, s) for a, s in zip(axes, sizes) if not _size1(s)]
    j = 0
    for a, s in src:
        run = []
        while j < len(out_sizes) and _size1(out_sizes[j]):
            out.append(None)
            j += 1
        prod = 1
        while j < len(out_sizes) and not known_equal(prod, s):
            run.append(out_sizes[j])
            prod = prod * out_sizes[j]
            j += 1
        require(run and known_equal(prod, s),
                f"{describe(op)} to {tuple(out_sizes)} merges axes (not a row-major split)")
        inner = 1
        pieces = []
        for size in reversed(run):
            pieces.append(None if a is None or _size1(size) else Axis(a.base_axis, a.inner * inner, size, a.base_size))
            inner = inner * size
        out.extend(reversed(pieces))
    while j < len(out_sizes):
        require(_size1(out_sizes[j]), f"{describe(op)} to {tuple(out_sizes)} does not follow its input")
        out.append(None)
        j += 1
    return tuple(out)


def whole_axis(axes: AxisMap, i: int, what: str) -> int:
    """The base axis that axis i of a view is, all of it (not a factor, not broadcast)."""
    a = axes[i]
    if a is None:
        raise NoMatch(f"{what} is broadcast")
    require(a.whole, f"{what} is a factor of base axis {a.base_axis}, not a whole axis")
    return a.base_axis
