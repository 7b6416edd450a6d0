"""An attention call proven to be MLA: the pieces `mla.prefill_attention` takes.

Given an AttentionCall (q, k, v over roles), this reads, by structure and shapes only:
  q = cat(q_nope, q_pe) along the feature axis;
  k = cat(k_nope, k_pe broadcast over heads);
  k_nope and v = per-head slices of up-projections `c @ W^T` of ONE latent c,
      W's rows head-major: W.view(H, width, R)[:, offset:offset + length];
and returns each piece with the axes of its node that the op's roles index.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Optional

import torch.fx as fx

from ..compat import known_equal
from .attention_forms import AttentionCall, Operand, compose
from .bmm_roles import groups as _groups
from .layout import Axis, AxisMap, trace_axes
from .match_utils import NoMatch, aten, describe, expect_op, is_op, norm_dim, require, val


@dataclass(frozen=True)
class Piece:
    node: fx.Node
    axes: AxisMap                # axes of node, in the op argument's role order
    window: tuple = ()           # (axis, start, end): the piece is node[start:end] along axis


@dataclass(frozen=True)
class Projection:
    """A per-head slice of `latent @ weight^T`: head h, feature j reads weight row
    h * width + offset + j."""
    latent: Piece                # roles (batch, key, latent dim); batch may be None
    weight: fx.Node              # [heads * width, R]
    heads: object
    width: object
    offset: int
    length: object
    head_role: Optional[int]     # which batch role of the scores is the head (None: 1 head)


@dataclass(frozen=True)
class MlaPieces:
    q_nope: Piece                # (b, h, q, d)
    q_pe: Piece
    k_pe: Piece                  # (b, k, d)
    keys: Projection
    values: Projection
    batch_role: Optional[int]    # which batch role of the scores is the batch (None: B = 1)
    head_role: Optional[int]
    sizes: dict                  # B, H, Sq, Sk, Dn, Dr, Dv, R


def _parts(op: Operand, what: str) -> list[tuple[fx.Node, AxisMap]]:
    """A cat along the feature role: [(part, role axes over part)]."""
    cat = expect_op(op.base, aten.cat.default, what=f"{what} (before the feature concatenation)")
    parts = list(cat.args[0])
    dim = norm_dim(cat.args[1] if len(cat.args) > 1 else 0, val(cat).dim())
    feat = op.axes[-1]
    require(feat is not None and feat.base_axis == dim and feat.whole,
            f"{what} concatenation is not along the head dim")
    require(len(parts) == 2, f"{what} concatenates {len(parts)} parts, not (no-rope, rope)")
    for a in op.axes[:-1]:
        require(a is None or a.whole, f"{what}: an axis is a factor of the concatenation's")
    out = []
    for p in parts:
        w = val(p).shape[dim]
        out.append((p, op.axes[:-1] + (Axis(dim, 1, w, w),)))
    return out


def _query_parts(q: Operand, nope: object) -> tuple[Piece, Piece]:
    """q_nope and q_pe: the two parts of a concatenation, or the two windows
    [:nope] and [nope:] of the feature axis of one tensor (q not rotated in the graph,
    or rotated in place)."""
    if is_op(q.base, aten.cat.default):
        (qn, qn_axes), (qr, qr_axes) = _parts(q, "query")
        return Piece(qn, qn_axes), Piece(qr, qr_axes)
    feat = q.axes[-1]
    require(feat is not None and feat.whole and all(a is None or a.whole for a in q.axes),
            "query: the head dim is not a whole axis of its tensor")
    require(isinstance(nope, int) and isinstance(feat.size, int) and nope < feat.size,
            "query: no static split of the head dim into no-rope and rope parts")
    ax = feat.base_axis
    return (Piece(q.base, q.axes[:-1] + (Axis(ax, 1, nope, nope),), (ax, 0, nope)),
            Piece(q.base, q.axes[:-1] + (Axis(ax, 1, feat.size - nope, feat.size - nope),),
                  (ax, nope, feat.size)))


def _window(g: fx.Node, feat: Axis, what: str) -> tuple[fx.Node, int, object]:
    """g = Z[..., offset:offset + length] along `feat`'s axis: (Z, offset, length)."""
    require(feat is not None and feat.whole, f"{what}: the head dim is not a whole axis")
    length = val(g).shape[feat.base_axis]
    if is_op(g, operator.getitem):
        split, i = g.args
        expect_op(split, aten.split_with_sizes.default, aten.split.Tensor, what=f"{what} split")
        z, sizes = split.args[0], split.args[1]
        dim = split.args[2] if len(split.args) > 2 else 0
        require(norm_dim(dim, val(z).dim()) == feat.base_axis, f"{what} split is not along the head dim")
        offset = sum(sizes[:i]) if isinstance(sizes, (list, tuple)) else sizes * i
        return z, offset, length
    expect_op(g, aten.slice.Tensor, what=f"{what} (a slice or split of an up-projection)")
    z, dim, start, _end, step = (list(g.args) + [0, None, None, 1][len(g.args) - 1:])[:5]
    require(norm_dim(dim, val(z).dim()) == feat.base_axis and step == 1 and isinstance(start, int),
            f"{what} slice is not a step-1 window of the head dim")
    return z, start, length


@dataclass(frozen=True)
class _Rows:
    """An up-projection slice before the roles are told apart."""
    roles: AxisMap               # role axes over the mm's [tokens, heads * width]
    tokens: fx.Node
    weight: fx.Node
    width: object
    offset: int
    length: object


def _rows(node: fx.Node, axes: AxisMap, what: str) -> _Rows:
    """node's role axes (batch..., key, feature) traced into `latent @ W^T`."""
    g, g_axes = trace_axes(node)
    roles = compose(axes, g_axes)
    if is_op(g, operator.getitem, aten.slice.Tensor):  # a window of each head's rows
        z, offset, length = _window(g, roles[-1], what)
        mm, z_axes = trace_axes(z)
        feat = z_axes[roles[-1].base_axis]
        roles = compose(roles, z_axes)
    else:  # the whole projection output
        mm, offset, feat = g, 0, roles[-1]
        length = None if feat is None else feat.size
    if is_op(mm, aten.addmm.default):
        raise NoMatch(f"{what}: the up-projection has a bias")
    expect_op(mm, aten.mm.default, what=f"{what} (an up-projection)")
    tokens, wt = mm.args
    weight, w_axes = trace_axes(wt)
    require(val(weight).dim() == 2 and w_axes[0] is not None and w_axes[0].base_axis == 1 and w_axes[0].whole
            and w_axes[1] is not None and w_axes[1].base_axis == 0 and w_axes[1].whole,
            f"{what}: the up-projection's weight is not a transposed [out, latent] matrix")
    require(feat is not None and feat.base_axis == 1 and known_equal(feat.inner, 1),
            f"{what}: the head dim is not the inner factor of the projection's output")
    return _Rows(roles[:-1], tokens, weight, feat.size, offset, length)


def _projection(rows: _Rows, nb: int, batch_role, head_role, what: str) -> Projection:
    roles = rows.roles
    out_dim = val(rows.weight).shape[0]
    h = roles[head_role] if head_role is not None else None
    if h is not None:
        require(h.base_axis == 1 and known_equal(h.inner, rows.width) and known_equal(h.inner * h.size, out_dim),
                f"{what}: projection rows are not head-major [heads, {rows.width}]")
    else:
        require(known_equal(rows.width, out_dim), f"{what}: no batch axis indexes the heads")
    b = roles[batch_role] if batch_role is not None else None
    latent = _latent(rows.tokens, [b, roles[nb]], what)
    return Projection(latent, rows.weight, h.size if h is not None else 1, rows.width,
                      rows.offset, rows.length, head_role)


def _split_roles(roles: AxisMap, nb: int) -> tuple[Optional[int], Optional[int]]:
    """(batch role, head role): the head indexes the projection's output, the batch its rows."""
    out = [i for i in range(nb) if roles[i] is not None and roles[i].base_axis == 1]
    rows = [i for i in range(nb) if roles[i] is not None and roles[i].base_axis == 0]
    require(len(out) <= 1 and len(rows) <= 1, "batch axes of the scores do not split into batch and heads")
    head, batch = (out or [None])[0], (rows or [None])[0]
    free = [i for i in range(nb) if i not in (head, batch)]
    if head is None and free:  # size-1 axes: any free one can be the single head
        head = free.pop()
    if batch is None and free:
        batch = free.pop()
    return batch, head


def _latent(tokens: fx.Node, token_axes: list, what: str) -> Piece:
    """The mm's [N, R] input as the latent c with roles (batch, key, R)."""
    src = tokens.args[0] if is_op(tokens, aten.view.default, aten._unsafe_view.default,
                                  aten.reshape.default) else tokens
    shape = val(src).shape
    n, r = val(tokens).shape
    g_n, g_r = _groups(shape, (n, r), f"{what} latent")
    big = [j for j in g_n if not known_equal(shape[j], 1)]
    inner, step = {}, 1
    for j in reversed(big):
        inner[j] = step
        step = step * shape[j]
    mapped = []
    for a in token_axes:
        if a is None:
            mapped.append(None)
            continue
        require(a.base_axis == 0, f"{what}: a token axis indexes the projection's output dim")
        hit = [j for j in big if known_equal(inner[j], a.inner) and known_equal(shape[j], a.size)]
        require(hit, f"{what}: token axes do not split the projection's rows")
        mapped.append(hit[0])
    require(sorted(j for j in mapped if j is not None) == big,
            f"{what}: latent rows hold more than batch and keys")
    r_axes = [j for j in g_r if not known_equal(shape[j], 1)]
    require(len(r_axes) == 1, f"{what}: latent dim is not one axis")
    c, c_axes = trace_axes(src)
    return Piece(c, tuple(None if j is None else c_axes[j] for j in mapped + r_axes))


def _same_piece(a: Piece, b: Piece) -> bool:
    return a.node is b.node and len(a.axes) == len(b.axes) and all(
        (x is None and y is None) or (x is not None and y is not None and x.base_axis == y.base_axis
                                      and known_equal(x.inner, y.inner) and known_equal(x.size, y.size))
        for x, y in zip(a.axes, b.axes))


def mla_pieces(call: AttentionCall) -> MlaPieces:
    nb = len(call.batch)
    require(1 <= nb <= 2, f"scores have {nb} batch axes (expected heads, or batch and heads)")
    (k_nope, kn_axes), (k_pe, kr_axes) = _parts(call.k, "key")
    k_rows = _rows(k_nope, kn_axes, "key no-rope part")
    q_nope, q_pe = _query_parts(call.q, k_rows.length)
    qn_axes, qr_axes = q_nope.axes, q_pe.axes
    v_rows = _rows(call.v.base, call.v.axes, "value")
    batch_role, head_role = _split_roles(k_rows.roles, nb)
    keys = _projection(k_rows, nb, batch_role, head_role, "key no-rope part")
    values = _projection(v_rows, nb, batch_role, head_role, "value")
    require(_same_piece(keys.latent, values.latent), "keys and values are not projections of one latent")
    dn, dr = qn_axes[-1].size, qr_axes[-1].size
    require(known_equal(keys.length, dn), f"key no-rope width {keys.length} differs from the query's {dn}")
    kpe_base, kpe_axes = trace_axes(k_pe)
    kpe_roles = compose(kr_axes, kpe_axes)
    if head_role is not None and kpe_roles[head_role] is not None:
        raise NoMatch("key rope part varies over heads (MLA shares one k_pe across heads)")
    sizes = dict(B=call.batch[batch_role] if batch_role is not None else 1,
                 H=call.batch[head_role] if head_role is not None else 1,
                 Sq=qn_axes[nb].size if qn_axes[nb] else 1,
                 Sk=val(kpe_base).shape[kpe_roles[nb].base_axis] if kpe_roles[nb] else 1,
                 Dn=dn, Dr=dr, Dv=values.length, R=val(keys.weight).shape[1])
    return MlaPieces(
        Piece(q_nope.node, _pick(qn_axes, [batch_role, head_role, nb, nb + 1]), q_nope.window),
        Piece(q_pe.node, _pick(qr_axes, [batch_role, head_role, nb, nb + 1]), q_pe.window),
        Piece(kpe_base, _pick(kpe_roles, [batch_role, nb, nb + 1])),
        keys, values, batch_role, head_role, sizes)


def _pick(axes: AxisMap, roles: list) -> AxisMap:
    """axes in the order of `roles`; a missing role (None) reads as broadcast."""
    return tuple(None if i is None else axes[i] for i in roles)
