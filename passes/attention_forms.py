"""Attention calls as the aten graph has them, each read into one AttentionCall:
softmax(q k^T * scale + mask) v over roles (L..., q|k, d|v), where L are the batch
axes of the scores (batch and heads, in the scores' order).

Two search functions, one per anchor:
  - `search_eager`: the P @ V `bmm` of eager attention (matmul or einsum, both
    decomposed into view/permute + bmm), and SDPA's math decomposition on CPU;
  - `search_sdpa`: a fused SDPA op (CPU flash, CUDA flash / efficient / cudnn),
    with V zero-padded to the q/k dim and the output cropped, or not.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.fx as fx

from ..compat import known_equal, real_tensors
from .layout import Axis, AxisMap, trace_axes
from .bmm_roles import operand_dims, output_order, probs_places, rhs_batch, scores_places, whole
from .match_utils import NoMatch, aten, describe, expect_op, is_op, norm_dim, require, val
from . import sinks as sinks_form
from .softmax_form import parse_softmax, unconvert


@dataclass(frozen=True)
class Operand:
    """A value read through views and scalar multiplies: `axes[i]` is the axis of
    `base` that role i indexes (None: constant along it); value = base * factor."""
    base: fx.Node
    axes: AxisMap
    factor: float = 1.0
    factors: tuple = ()          # the scalar multiplies peeled, for the report
    upcast: bool = False         # read through a cast to a wider float (SDPA's math in fp32)


@dataclass(frozen=True)
class AttentionCall:
    q: Operand                   # roles (L..., q, d)
    k: Operand                   # roles (L..., k, d)
    v: Operand                   # roles (L..., k, v)
    batch: tuple                 # the sizes of L
    scale: float                 # everything multiplying q k^T, read from the graph
    scale_factors: tuple         # (where, factor) of each multiply, for the report
    mask: Optional[fx.Node]      # additive, broadcasting to (L..., q, k)
    causal: bool                 # top-left causal (SDPA's is_causal)
    zero_empty_rows: bool        # SDPA's safe softmax: all -inf row -> 0
    upcast: bool                 # q, k, v read through casts to a wider float
    output: fx.Node              # the node the fused result replaces
    kind: str                    # "eager" or "sdpa"
    qk2: Optional[tuple] = None  # (q2, k2): scores = q k^T + q2 k2^T (two bmms, e.g. latent + rope)
    out_order: Optional[tuple] = None  # roles (L..., q, v) in the order `output` flattens them
    sinks: Optional[Operand] = None  # a sink logit column, roles (L..., q): in the denominator only
    roles: Optional[tuple] = None  # the scores' axis of each role (None: in order), e.g. [B, S, H, T]
    empty_row_fill: Optional[float] = None  # the op's rule for rows with no unmasked key (causal_mask.py)


class NotAttention(NoMatch):
    """The anchor is no attention at all (a bmm with no softmax before it)."""


_SCALAR_MULS = {aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar}


def _scalar_factor(node: fx.Node) -> Optional[float]:
    """c for x * c or x / c with a Python number c (the graph's own constant)."""
    if not is_op(node, *_SCALAR_MULS) or len(node.args) != 2:
        return None
    c = node.args[1]
    if isinstance(c, bool) or not isinstance(c, (int, float)):
        return None
    if node.target in (aten.div.Tensor, aten.div.Scalar):
        return 1.0 / c if c != 0 else None
    return float(c)


def compose(outer: AxisMap, inner: AxisMap) -> AxisMap:
    """Axes over an intermediate node, re-expressed over that node's own base."""
    out = []
    for a in outer:
        b = None if a is None else inner[a.base_axis]
        out.append(None if b is None else Axis(b.base_axis, b.inner * a.inner, a.size, b.base_size))
    return tuple(out)


def _is_upcast(node: fx.Node) -> bool:
    inner = unconvert(node, once=True)
    return inner is not node and val(inner).element_size() < val(node).element_size()


def trace_operand(node: fx.Node) -> Operand:
    """Follow views, scalar multiplies and upcasts back to the first other op."""
    base, axes = trace_axes(node)
    factor, factors, upcast = 1.0, [], False
    while (c := _scalar_factor(base)) is not None or _is_upcast(base):
        if c is not None:
            factor *= c
            factors.append(c)
        upcast = upcast or c is None
        base, inner = trace_axes(base.args[0])
        axes = compose(axes, inner)
    return Operand(base, axes, factor, tuple(factors), upcast)


def unflatten_operand(node: fx.Node, places: list, what: str) -> Operand:
    """A bmm operand read at the roles' places (bmm_roles): roles (.., x, y) of its source."""
    src, dims = operand_dims(node, places, what)
    op = trace_operand(src)
    return replace(op, axes=tuple(None if j is None else op.axes[j] for j in dims))


# ------------------------------------------------------------------ eager attention

def _parse_logits(x: fx.Node) -> tuple[fx.Node, Optional[fx.Node], list]:
    """softmax input -> (scores node, additive mask, scale factors), reading
    x = scores * c (or / c) + mask, in any operand order, dtype casts skipped."""
    mask, factors = None, []
    x = unconvert(_same_shape_views(unconvert(x)))  # the copy `scores += mask` may make, either side of a cast
    if is_op(x, aten.add.Tensor) and x.kwargs.get("alpha", 1) == 1 and len(_score_terms(x)) == 1:
        a, b = x.args  # scores + mask (two bmm terms are both scores: `_score_terms`)
        scores_side = [(s, m) for s, m in ((a, b), (b, a)) if isinstance(m, fx.Node) and _reaches_scores(s)]
        require(scores_side, "the softmax input adds no scores")
        x, mask = scores_side[0]
        require(val(mask).is_floating_point(), f"mask of dtype {val(mask).dtype} is not additive")
        x = unconvert(x)
    while (c := _scalar_factor(x)) is not None:
        factors.append(("scores", c))
        x = unconvert(x.args[0])
    if _runtime_scalar_factor(x):
        raise NoMatch("the scores are scaled by a runtime 0-d tensor (with dynamic=True, Dynamo makes "
                      "float attributes graph inputs); the fused op needs the scale as a constant: "
                      "use torch._dynamo.mark_dynamic on the inputs, or "
                      "torch._dynamo.config.specialize_float = True")
    return x, mask, factors


_RESHAPES = (aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.alias.default,
             aten.clone.default)  # clone: the same values (`scores += mask` may copy)
_REINDEX = _RESHAPES + (aten.permute.default, aten.unsqueeze.default, aten.squeeze.dim)


def _same_shape_views(node: fx.Node) -> fx.Node:
    """Skip a chain of views that is the identity: `scores += mask` on a matmul's or
    einsum's output (a view of the bmm) is functionalised as add(view(bmm), mask),
    written back to the bmm's shape and read again through views. Reshapes alone are
    row-major, so a chain of them back to the same shape is the identity; a chain with
    permutes is the identity when it maps an arange to itself (static shapes only)."""
    shape, cur, best = tuple(val(node).shape), node, node
    while is_op(cur, *_REINDEX):
        cur = cur.args[0]
        if tuple(val(cur).shape) == shape and _identity_chain(node, cur):
            best = cur
    return best


def _identity_chain(end: fx.Node, start: fx.Node) -> bool:
    """Whether the view ops from `start` to `end` read every element where it was."""
    chain, cur = [], end
    while cur is not start:
        chain.append(cur)
        cur = cur.args[0]
    if all(is_op(n, *_RESHAPES) for n in chain):
        return True
    shapes = [tuple(val(n).shape) for n in chain] + [tuple(val(start).shape)]
    leaves: list = []
    fx.node.map_aggregate([n.args[1:] for n in chain], leaves.append)
    if not all(isinstance(d, int) for sh in shapes for d in sh) or any(
            isinstance(a, (fx.Node, torch.SymInt)) for a in leaves):
        return False  # symbolic sizes: no concrete proof
    with real_tensors():
        x = ref = torch.arange(math.prod(shapes[-1])).view(shapes[-1])
        for n in reversed(chain):  # the same ops on indices: pure index maps, exact on ints
            x = n.target(x, *n.args[1:], **n.kwargs)
        return torch.equal(x, ref)


def _runtime_scalar_factor(node) -> bool:
    return (is_op(node, aten.mul.Tensor, aten.div.Tensor) and isinstance(node.args[1], fx.Node)
            and val(node.args[1]).dim() == 0)


def _score_terms(node: fx.Node) -> list[fx.Node]:
    """The scores as a sum of bmm results: [node], or the two sides of node = a + b
    where both are bmms (absorbed code adds the latent and the rope scores)."""
    node = _same_shape_views(unconvert(node))
    if is_op(node, aten.add.Tensor) and node.kwargs.get("alpha", 1) == 1 and all(
            isinstance(t, fx.Node) and _reaches_bmm(t) for t in node.args[:2]):
        return list(node.args[:2])
    return [node]


def _reaches_scores(node) -> bool:
    """Whether node is scores (one or two bmm terms) through casts and scalar multiplies."""
    if not isinstance(node, fx.Node):
        return False
    node = unconvert(node)
    while _scalar_factor(node) is not None or _runtime_scalar_factor(node):
        node = unconvert(node.args[0])
    return all(_reaches_bmm(t) for t in _score_terms(node))


def _reaches_bmm(node) -> bool:
    """Whether node is scores: a bmm seen through views, casts and scalar multiplies."""
    while isinstance(node, fx.Node):
        if unconvert(node) is not node:
            node = unconvert(node)
        elif _scalar_factor(node) is not None or _runtime_scalar_factor(node):
            node = node.args[0]
        else:
            try:
                return is_op(trace_axes(node)[0], aten.bmm.default)
            except NoMatch:
                return False
    return False


def _is_softmax(node: fx.Node) -> bool:
    try:
        parse_softmax(node)
    except NoMatch:
        return False
    return True


def _sink_operand(col: fx.Node, nb: int, perm: list) -> Operand:
    """The sink column [L..., q, 1] (scores' axes) read back to its parameter: roles (L..., q)."""
    op = trace_operand(col)
    require(op.factor == 1.0, "the sink logits are scaled")
    axes = tuple(op.axes[j] for j in perm[:nb + 1])
    require(axes[nb] is None, "the sink logit varies over the queries")
    return replace(op, axes=axes)


def _role_order(places: list, nb: int) -> list:
    """The scores' axis of each role (L..., q, k). The query is a row of the q k^T bmm
    (the key cannot vary along it); scores written [B, S, H, T] (DeepSeek's naive
    einsum "bshd,bthd->bsht") have the heads, a bmm batch axis, next to the keys and the
    positions before them: the one row role among the batch axes is then the query (or,
    with none, a size-1 one: a decode step's single position)."""
    perm = list(range(nb + 2))
    if places[nb] is None or places[nb][0] == 1:
        return perm
    rows = [i for i in range(nb) if places[i] is not None and places[i][0] == 1]
    rows = rows or [i for i in range(nb) if places[i] is None]
    if len(rows) == 1:
        perm[rows[0]], perm[nb] = nb, rows[0]
    return perm


def search_eager(pv: fx.Node) -> AttentionCall:
    """Anchor: the P @ V bmm of an attention."""
    p3, v3 = pv.args
    p_src = p3.args[0] if is_op(p3, aten.view.default, aten._unsafe_view.default) else p3
    try:
        p_base, _ = trace_axes(p_src)
    except NoMatch as e:
        raise NotAttention(str(e)) from None
    softmax, sinks = p_base, None
    if is_op(unconvert(p_base), aten.slice.Tensor):  # sliced in fp32, then cast back: the same
        if not _is_softmax(unconvert(p_base).args[0]):  # no softmax: no attention here
            raise NotAttention("probabilities are a slice of something other than a softmax")
        softmax = sinks_form.sink_softmax(unconvert(p_base), _is_softmax)  # P = softmax(..)[..., :-1]
    try:
        x, zero_empty = parse_softmax(softmax)
    except NoMatch as e:
        raise NotAttention(str(e)) from None
    batch = tuple(val(p_base).shape[:-2])
    nb = len(batch)
    require(tuple(val(x).shape) == tuple(val(softmax).shape), "softmax input broadcasts the scores")
    col = None
    if softmax is not p_base:  # attention sinks: the softmax's last column is a logit per head
        x, col = sinks_form.split_sinks(x, unconvert)
    scores, mask, factors = _parse_logits(x)
    score_terms = _score_terms(scores)
    perm = _role_order(_term_places(score_terms[0], nb, val(scores).shape)[1], nb)
    batch = tuple(val(p_base).shape[j] for j in perm[:nb])
    sinks = None if col is None else _sink_operand(col, nb, perm)
    pv_places = [probs_places(p3, p_base, nb)[j] for j in perm]  # where P @ V holds each role
    terms = [_qk_term(t, nb, val(scores).shape, perm) for t in score_terms]
    (q, k, term_factors), rest = terms[0], terms[1:]
    if rest:  # one scale for both: a per-term scale is not one attention's
        require(math.prod(c for _, c in rest[0][2]) == math.prod(c for _, c in term_factors),
                "the two score terms are scaled differently")
    factors += term_factors
    sk, dv = val(v3).shape[1:]
    v = unflatten_operand(v3, rhs_batch(pv_places[:nb]) + [whole(1, sk), whole(2, dv)], "value")
    require(v.factor == 1.0, "value is scaled")
    upcast = any(op.upcast for t in terms for op in t[:2]) or v.upcast
    out_places = pv_places[:nb + 1] + [whole(2, dv)]
    return AttentionCall(q, k, v, batch, math.prod(c for _, c in factors), tuple(factors),
                         mask, False, zero_empty, upcast, pv, "matmul",
                         tuple(rest[0][:2]) if rest else None, tuple(output_order(out_places)), sinks,
                         None if perm == sorted(perm) else tuple(perm))


def _term_places(node: fx.Node, nb: int, shape) -> tuple[fx.Node, list, list]:
    """One q k^T bmm of the scores (scalar multiplies on it peeled): (bmm, the places of
    the scores' axes on it, factors)."""
    factors = []
    node = unconvert(node)
    while (c := _scalar_factor(node)) is not None:
        factors.append(("scores", c))
        node = unconvert(node.args[0])
    qk, s_axes = trace_axes(node)
    expect_op(qk, aten.bmm.default, what="scores")
    require(tuple(val(node).shape) == tuple(shape), "a score term broadcasts to the scores")
    return qk, scores_places(s_axes, qk, nb), factors


def _qk_term(node: fx.Node, nb: int, shape, perm: list) -> tuple[Operand, Operand, list]:
    """One q k^T bmm of the scores, its roles in `perm`'s order: (q, k, factors)."""
    qk, places, factors = _term_places(node, nb, shape)
    places = [places[j] for j in perm]
    d = val(qk.args[0]).shape[2]
    q = unflatten_operand(qk.args[0], places[:nb + 1] + [whole(2, d)], "query")
    k = unflatten_operand(qk.args[1], rhs_batch(places[:nb]) + [places[nb + 1], whole(1, d)], "key")
    return q, k, factors + [("query", c) for c in q.factors] + [("key", c) for c in k.factors]


# ------------------------------------------------------------------ fused SDPA

def _sdpa_args(node: fx.Node) -> tuple:
    """(q, k, v, mask, dropout_p, causal, scale) of a fused SDPA op."""
    a, kw, t = node.args, node.kwargs, node.target

    def arg(i, default):
        return a[i] if len(a) > i else default

    if t is aten._scaled_dot_product_flash_attention_for_cpu.default:
        return a[0], a[1], a[2], kw.get("attn_mask"), arg(3, 0.0), arg(4, False), kw.get("scale")
    if t is aten._scaled_dot_product_flash_attention.default:
        return a[0], a[1], a[2], None, arg(3, 0.0), arg(4, False), kw.get("scale")
    if t in (aten._scaled_dot_product_efficient_attention.default,
             aten._scaled_dot_product_cudnn_attention.default):
        return a[0], a[1], a[2], a[3], arg(5, 0.0), arg(6, False), kw.get("scale")
    raise NoMatch(f"{describe(node)} is not a fused SDPA op", structural=True)


SDPA_OPS = tuple(getattr(aten, name).default for name in (
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")
    if hasattr(aten, name))


def _unpad_value(v: Operand) -> tuple[Operand, object]:
    """V zero-padded at the end of its last dim -> (V unpadded, its width)."""
    if not is_op(v.base, aten.constant_pad_nd.default):
        return v, None
    pad = list(v.base.args[1])
    value = v.base.args[2] if len(v.base.args) > 2 else 0
    require(len(pad) == 2 and pad[0] == 0 and value == 0, f"value padding {pad} (value {value}) is not zeros at the end")
    require(v.axes[-1] is not None and v.axes[-1].base_axis == val(v.base).dim() - 1 and v.axes[-1].whole,
            "padding is not along the value dim")
    inner = trace_operand(v.base.args[0])
    width = val(v.base.args[0]).shape[-1]
    axes = compose(v.axes[:-1] + (Axis(v.axes[-1].base_axis, 1, width, width),), inner.axes)
    return replace(inner, axes=axes), width


def search_sdpa(node: fx.Node) -> AttentionCall:
    q_arg, k_arg, v_arg, mask, dropout, causal, scale = _sdpa_args(node)
    require(dropout == 0, f"dropout_p={dropout}")
    require(mask is None or val(mask).is_floating_point(),
            "boolean SDPA mask (only additive float masks are carried)")
    q, k, v = trace_operand(q_arg), trace_operand(k_arg), trace_operand(v_arg)
    v, width = _unpad_value(v)
    outs = [u for u in node.users if is_op(u, operator.getitem) and u.args[1] == 0]
    require(len(outs) == 1, "SDPA output is not read once")
    out = outs[0]
    if width is not None:  # the crop that undoes the padding is what gets replaced
        crops = list(out.users)
        require(len(crops) == 1 and is_op(crops[0], aten.slice.Tensor), "padded output is not cropped")
        _, dim, start, end = (list(crops[0].args) + [None])[:4]
        require(norm_dim(dim, val(out).dim()) == val(out).dim() - 1 and start in (0, None)
                and known_equal(val(crops[0]).shape[-1], width), "output crop does not undo the value padding")
        out = crops[0]
    batch = tuple(val(q_arg).shape[:-2])
    d = val(q_arg).shape[-1]
    given = scale if scale is not None else 1.0 / math.sqrt(d) if isinstance(d, int) else None
    require(given is not None, "default SDPA scale of a dynamic head dim")
    factors = [("sdpa", given)] + [("query", c) for c in q.factors] + [("key", c) for c in k.factors]
    require(v.factor == 1.0, "value is scaled")
    # zero_empty_rows: SDPA's "safe softmax" (torch >= 2.5): a query row whose keys are
    # all masked gives 0, not NaN, in the fused ops as in the math path (found by the fuzzer)
    return AttentionCall(q, k, v, batch, math.prod(c for _, c in factors), tuple(factors),
                         mask, bool(causal), True, q.upcast or k.upcast or v.upcast, out, "sdpa")
