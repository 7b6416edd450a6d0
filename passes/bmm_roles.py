"""Which attention roles a bmm's axes hold. Eager attention (matmul, einsum) reaches
the graph as bmm [N, M, P] between views that merge the roles row-major: a matmul
puts the batch axes in N, einsum may put some of them in M with the query axis
(DeepSeek's "bshc,btc->bsht" holds [b] in N and [s, h] in M).

A role's *place* on a bmm is (bmm axis, inner, size): the role's index i reads bmm
index i * inner along that axis (None: the role has size 1). Places are read off the
scores (a view of the q k^T bmm) and off the probabilities operand of the P @ V bmm,
then each operand is unflattened at the same places, so a role means the same index
in q, k, v, the scores and the output.
"""
from __future__ import annotations

from typing import Optional

import torch.fx as fx

from ..compat import known_equal
from .layout import AxisMap, trace_axes
from .match_utils import aten, is_op, require, val

Place = Optional[tuple]  # (bmm axis, inner, size)


def groups(shape, targets, what: str) -> list[list[int]]:
    """Axes of `shape` that a row-major view merges into each of `targets`."""
    out, i = [], 0
    for t in targets:
        group, prod = [], 1
        while i < len(shape) and (not known_equal(prod, t) or (group and known_equal(shape[i], 1))):
            group.append(i)
            prod = prod * shape[i]
            i += 1
        require(known_equal(prod, t), f"{what}: view of {tuple(shape)} to {tuple(targets)} is not a row-major merge")
        out.append(group)
    require(all(known_equal(shape[j], 1) for j in range(i, len(shape))), f"{what}: trailing axes")
    return out


def view_source(node: fx.Node) -> fx.Node:
    return node.args[0] if is_op(node, aten.view.default, aten._unsafe_view.default, aten.reshape.default) else node


def _dim_places(src: fx.Node, node: fx.Node, what: str) -> dict[int, tuple]:
    """(bmm axis, inner, size) of every non-1 dim of src, the view source of node."""
    shape = val(src).shape
    out = {}
    for axis, group in enumerate(groups(shape, val(node).shape, what)):
        inner = 1
        for j in reversed(group):
            if not known_equal(shape[j], 1):
                out[j] = (axis, inner, shape[j])
            inner = inner * shape[j]
    return out


def _same_place(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and known_equal(a[1], b[1]) and known_equal(a[2], b[2])


def operand_dims(node: fx.Node, places: list[Place], what: str) -> tuple[fx.Node, list[Optional[int]]]:
    """A bmm operand at the roles' places: (its view source, the source dim of each
    role, None for a size-1 role). Every other source dim must be 1."""
    src = view_source(node)
    dims = _dim_places(src, node, what)
    out = []
    for place in places:
        if place is None:
            out.append(None)
            continue
        hit = [j for j, p in dims.items() if _same_place(p, place)]
        require(hit, f"{what}: no axis of {tuple(val(src).shape)} at the place of a role of the scores "
                     f"(bmm axis {place[0]}, step {place[1]}, size {place[2]}): the operand's views do not "
                     "split as the scores'")
        out.append(hit[0])
    extra = sorted(set(dims) - set(out))
    require(not extra, f"{what}: axis {extra[0] if extra else ''} of {tuple(val(src).shape)} is no role of the "
                       "scores (a key that varies over the query axis, e.g. one rope key per head)")
    return src, out


def _tiles(places: list[Place], shape, what: str) -> None:
    """The roles on each bmm axis are row-major factors covering it exactly once."""
    for axis in range(3):
        factors = [p for p in places if p is not None and p[0] == axis]
        step = 1
        while factors:
            nxt = [p for p in factors if known_equal(p[1], step)]
            require(len(nxt) == 1, f"{what}: the roles do not tile bmm axis {axis}")
            factors.remove(nxt[0])
            step = step * nxt[0][2]
        require(known_equal(step, shape[axis]), f"{what}: the roles do not cover bmm axis {axis}")


def scores_places(s_axes: AxisMap, bmm: fx.Node, nb: int) -> list[Place]:
    """Places of the scores' roles (L..., q, k) on their q k^T bmm (s_axes: the scores
    traced to it): the keys fill the bmm's last axis, the rest its first two."""
    places = [None if a is None else (a.base_axis, a.inner, a.size) for a in s_axes]
    k = places[nb + 1]
    require(k is None or (k[0] == 2 and known_equal(k[1], 1)), "scores: the keys are not the bmm's columns")
    require(all(p is None or p[0] in (0, 1) for p in places[:nb + 1]), "scores: a query or batch axis is a bmm column")
    _tiles(places, val(bmm).shape, "scores")
    return places


def probs_places(p3: fx.Node, p_base: fx.Node, nb: int) -> list[Place]:
    """Places of the probabilities' roles (L..., q, k) on the P @ V bmm whose left
    operand p3 is a view of the softmax p_base (roles = p_base's axes)."""
    src = view_source(p3)
    base, axes = trace_axes(src)
    require(base is p_base, "P @ V does not read the softmax")
    dims = _dim_places(src, p3, "probabilities")
    places: list[Place] = [None] * (nb + 2)
    for j, place in dims.items():
        a = axes[j]
        require(a is not None and a.whole, "probabilities: P @ V reads the softmax broadcast or in pieces")
        require(places[a.base_axis] is None, "probabilities: a role read twice")
        places[a.base_axis] = place
    require(all(p is not None or known_equal(s, 1) for p, s in zip(places, val(p_base).shape)),
            "probabilities: P @ V does not read the whole softmax")
    k = places[nb + 1]
    require(k is None or (k[0] == 2 and known_equal(k[1], 1)), "probabilities: the keys are not contracted")
    return places


def whole(axis: int, size) -> Place:
    """The place of a role that is all of a bmm axis."""
    return None if known_equal(size, 1) else (axis, 1, size)


def rhs_batch(places: list[Place]) -> list[Place]:
    """The batch roles' places on a right operand [N, K, P]: those the output holds in
    N stay; those it holds in M (rows of the left operand only) are broadcast."""
    return [p if p is None or p[0] == 0 else None for p in places]


def output_order(places: list[Place]) -> list[int]:
    """The roles in the order a row-major reshape to the bmm's output needs them: by
    bmm axis, outermost factor first; size-1 roles first, where a batch of 1 usually
    is (places must tile)."""
    order = []
    for axis in range(3):
        factors = [i for i, p in enumerate(places) if p is not None and p[0] == axis]
        chain, step = [], 1
        while factors:
            nxt = next(i for i in factors if known_equal(places[i][1], step))
            chain.append(nxt)
            factors.remove(nxt)
            step = step * places[nxt][2]
        order += reversed(chain)
    return [i for i, p in enumerate(places) if p is None] + order
