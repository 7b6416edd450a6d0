"""An attention call proven to be MLA: the pieces `mla.prefill_attention` takes.

Given an AttentionCall (q, k, v over roles), this reads, by structure and shapes only:
  q = cat(q_nope, q_pe) along the feature axis;
  k = cat(k_nope, k_pe broadcast over heads);
  or, NoPE (no rope part: Kimi-Linear, GLM-5-Next, Mistral-Large-4's NoPE layers), q and
      k the no-rope parts alone, k and v windows of ONE up-projection (kv_b_proj);
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
    cut: tuple = ()              # (start, end): then [start:end] of the last role, once arranged


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
    q_pe: Optional[Piece]        # None: NoPE, q and k are the no-rope parts alone
    k_pe: Optional[Piece]        # (b, k, d), shared by the heads
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
    require(feat is not None, "query: the head dim is broadcast")
    require(isinstance(nope, int) and isinstance(feat.size, int) and nope < feat.size,
            "query: no static split of the head dim into no-rope and rope parts")
    if not (feat.whole and all(a is None or a.whole for a in q.axes)):
        # q used whole, e.g. a view of q_proj's output: split once viewed as the op's q
        return Piece(q.base, q.axes, cut=(0, nope)), Piece(q.base, q.axes, cut=(nope, feat.size))
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


def _key_parts(call: AttentionCall):
    """(k_nope, its role axes, k_pe, its role axes); k_pe None for a key with no
    rope part (not a concatenation: NoPE)."""
    if is_op(call.k.base, aten.cat.default):
        (k_nope, kn_axes), (k_pe, kr_axes) = _parts(call.k, "key")
        return k_nope, kn_axes, k_pe, kr_axes
    return call.k.base, call.k.axes, None, None


def mla_pieces(call: AttentionCall) -> MlaPieces:
    nb = len(call.batch)
    require(1 <= nb <= 2, f"scores have {nb} batch axes (expected heads, or batch and heads)")
    k_nope, kn_axes, k_pe, kr_axes = _key_parts(call)
    nope = k_pe is None
    try:
        k_rows = _rows(k_nope, kn_axes, "key (no rope part: NoPE)" if nope else "key no-rope part")
    except NoMatch as why:
        if not nope:
            raise
        raise NoMatch(f"key is no cat([k_nope, k_pe]) ({describe(k_nope)}), nor a NoPE key: {why}") from None
    if nope:
        require(not is_op(call.q.base, aten.cat.default), "the query has a rope part, the key none")
        q_nope, q_pe = Piece(call.q.base, call.q.axes), None
    else:
        q_nope, q_pe = _query_parts(call.q, k_rows.length)
    qn_axes = q_nope.axes
    v_rows = _rows(call.v.base, call.v.axes, "value")
    batch_role, head_role = _split_roles(k_rows.roles, nb)
    keys = _projection(k_rows, nb, batch_role, head_role, "key no-rope part")
    values = _projection(v_rows, nb, batch_role, head_role, "value")
    require(_same_piece(keys.latent, values.latent), "keys and values are not projections of one latent")
    # with no rope part the key alone does not say MLA (q_proj/k_proj/v_proj attention has
    # keys and values from one input too): MLA's are two windows of one up-projection
    require(not nope or keys.weight is values.weight,
            "no rope part, and keys and values are not windows of one up-projection (NoPE MLA's kv_b_proj)")
    dn = _width(q_nope)
    require(known_equal(keys.length, dn), f"key no-rope width {keys.length} differs from the query's {dn}")
    roles4 = [batch_role, head_role, nb, nb + 1]
    if nope:
        dr, sk, kpe = 0, kn_axes[nb].size if kn_axes[nb] else 1, None
    else:
        kpe_base, kpe_axes = trace_axes(k_pe)
        kpe_roles = compose(kr_axes, kpe_axes)
        if head_role is not None and kpe_roles[head_role] is not None:
            raise NoMatch("key rope part varies over heads (MLA shares one k_pe across heads)")
        dr = _width(q_pe)
        sk = val(kpe_base).shape[kpe_roles[nb].base_axis] if kpe_roles[nb] else 1
        kpe = Piece(kpe_base, _pick(kpe_roles, [batch_role, nb, nb + 1]))
        q_pe = Piece(q_pe.node, _pick(q_pe.axes, roles4), q_pe.window, q_pe.cut)
    sizes = dict(B=call.batch[batch_role] if batch_role is not None else 1,
                 H=call.batch[head_role] if head_role is not None else 1,
                 Sq=qn_axes[nb].size if qn_axes[nb] else 1,
                 Sk=sk, Dn=dn, Dr=dr, Dv=values.length, R=val(keys.weight).shape[1])
    return MlaPieces(Piece(q_nope.node, _pick(qn_axes, roles4), q_nope.window, q_nope.cut), q_pe, kpe,
                     keys, values, batch_role, head_role, sizes)


def _width(piece: Piece):
    """The size of a piece's last role (its feature width)."""
    return piece.cut[1] - piece.cut[0] if piece.cut else piece.axes[-1].size


def _pick(axes: AxisMap, roles: list) -> AxisMap:
    """axes in the order of `roles`; a missing role (None) reads as broadcast."""
    return tuple(None if i is None else axes[i] for i in roles)
