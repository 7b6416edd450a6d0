"""DeepSeek sparse attention (DSA): MLA attention whose mask keeps only the keys the
model's own indexer chose becomes one `torch.ops.mla.sparse_attention` fed by those
same indices, so a query reads its K chosen latent rows instead of all Sk.

transformers (deepseek_v32, glm_moe_dsa, axk2, dots3_note, mistral_large4, hy_v4)
writes, after its indexer's `topk`:

    unchosen = ones(B, Sq, Sk, bool).scatter(-1, indices, False).unsqueeze(1)
    mask = base & ~unchosen                     # sdpa: a bool base mask
    mask = base.masked_fill(unchosen, fill)     # eager: an additive base, fill finfo.min

which reach the pass as `where(base & ~unchosen, 0, -inf)` and
`where(unchosen, fill, base)`. Search and replacement side by side: `search` proves
that structure on the attention's mask; `replace` emits the op with the indices and
the base mask (as an additive mask; a chosen key the base hides stays hidden).

Exactness. With fill -inf an unchosen key is -inf in eager's scores: the op (every
unchosen key excluded) is the same function, empty rows included (NaN, or 0 under
SDPA's safe softmax, which the call carries). With a finite fill (finfo.min) an
unchosen key's weight is exactly 0 only in a row whose best chosen key is visible; in
a row with none, eager's softmax is uniform over ALL keys, which no sparse read can
give. So a finite fill needs a proof that every row keeps a visible chosen key: the
indices are the top-k of scores plus this same base mask (a visible key outranks a
hidden one), and the base mask is proven causal without key padding
(passes/causal_mask.py: row i sees key 0). Otherwise the dense rewrite stays and the
report says why.

Attention sinks (HY-V4: a logit per head joins the softmax, passes/sinks.py) go to the
op as its `sinks` (emit_attention passes arrange_sinks' [H]); the same term in both
denominators, so the argument above holds unchanged. With fill -inf, a row with no
visible chosen key is the sink alone in eager (0), as in the op.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, replace as dc_replace

import torch
import torch.fx as fx

from ..compat import known_equal, statically_known_true
from .arrange import arrange, emit_attention
from .attention_forms import AttentionCall
from .causal_mask import FINITE_FILL_MAX, NotProven, analyse
from .mask_terms import scalar as _scalar
from .graph_edit import call_with_meta as _call
from .match_utils import NoMatch, aten, is_op, prims, require, val
from .mla_pieces import MlaPieces

sparse_op = torch.ops.mla.sparse_attention.default

_ALIASES = (aten.expand.default, aten.alias.default)
_AND = (aten.bitwise_and.Tensor, aten.logical_and.default)
_NOT = (aten.bitwise_not.default, aten.logical_not.default)
_INT_CASTS = (prims.convert_element_type.default, aten._to_copy.default)


class NotDsa(Exception):
    """The mask is no top-k scatter at all: plain (dense) attention, nothing to report."""


@dataclass(frozen=True)
class DsaMask:
    indices: fx.Node          # [B, Sq, K] integer, what the scatter wrote
    base: fx.Node | None      # the base mask: bool (keep = True) or additive float
    base_is_bool: bool
    where: fx.Node            # the mask's where(...) (its scalar args are reused)
    fill: float               # what an unchosen key's score gets
    proof: str                # for the report
    distinct: bool            # the indices are topk's over the key axis: no row repeats one


def _strip(node, targets=_ALIASES):
    while is_op(node, *targets):
        node = node.args[0]
    return node


def _unchosen(node, p: MlaPieces):
    """node = scatter(full(True), key axis, indices, False) viewed as [B, 1, Sq, Sk]
    (batch at the batch role, 1 at the head role): the indices, or None."""
    node = _strip(node)
    if not is_op(node, aten.unsqueeze.default):
        return None
    scatter = node.args[0]
    if not is_op(scatter, aten.scatter.value):
        return None
    s = p.sizes
    require(p.batch_role in (0, None) and p.head_role == 1 and node.args[1] == 1,
            "top-k mask is not laid out [B, 1, Sq, Sk] over the scores")
    full, dim, idx, value = scatter.args[:4]
    require(is_op(full, aten.full.default) and full.args[1] is True and value is False,
            "a scatter that does not clear chosen keys out of an all-True mask (other indices)")
    shape = val(scatter).shape
    require(len(shape) == 3 and dim in (-1, 2), "the scatter is not along the key axis")
    require(all(known_equal(a, b) for a, b in zip(shape, (s["B"], s["Sq"], s["Sk"]))),
            f"the scatter's mask {tuple(shape)} is not [B, Sq, Sk]")
    ishape = val(idx).shape
    require(len(ishape) == 3 and known_equal(ishape[0], shape[0]) and known_equal(ishape[1], shape[1]),
            f"indices {tuple(ishape)} do not cover every (batch, query) row of {tuple(shape)}")
    require(not val(idx).dtype.is_floating_point, "scatter indices are not integers")
    return idx


def _topk_over(idx: fx.Node):
    """The input of topk(x, k, -1, largest=True) whose indices idx is (through
    integer casts), or None."""
    node = _strip(idx, _INT_CASTS)
    if not (node.target is operator.getitem and node.args[1] == 1):
        return None
    topk = node.args[0]
    if not is_op(topk, aten.topk.default):
        return None
    args = list(topk.args) + [None] * 5
    dim = args[2] if args[2] is not None else topk.kwargs.get("dim", -1)
    largest = args[3] if args[3] is not None else topk.kwargs.get("largest", True)
    x = topk.args[0]
    if largest is not True or dim not in (-1, val(x).dim() - 1):
        return None
    return x


def _distinct(idx: fx.Node) -> bool:
    """idx is topk's indices along a last axis (any `largest`), through integer casts
    wide enough for that axis's positions: no row repeats an index."""
    node = idx
    while is_op(node, *_INT_CASTS):
        dtype = val(node).dtype
        if dtype not in (torch.int32, torch.int64):
            return False
        node = node.args[0]
    if not (node.target is operator.getitem and node.args[1] == 1 and is_op(node.args[0], aten.topk.default)):
        return False
    topk = node.args[0]
    x = topk.args[0]
    dim = topk.args[2] if len(topk.args) > 2 else topk.kwargs.get("dim", -1)
    n = val(x).shape[-1] if val(x).dim() else 1
    return dim in (-1, val(x).dim() - 1) and statically_known_true(n < 2**31)


def _adds_base(x: fx.Node, base: fx.Node) -> bool:
    """x = y + base[:, 0] (either order): the top-k ranks visible keys above hidden."""
    if not is_op(x, aten.add.Tensor) or x.kwargs.get("alpha", 1) != 1:
        return False
    for term in x.args:
        t = _strip(term)
        if is_op(t, aten.select.int) and t.args[1] == 1 and t.args[2] == 0 and _strip(t.args[0]) is base \
                and known_equal(val(base).shape[1], 1):
            return True
    return False


def _finite_fill_proof(dsa_base: fx.Node, idx: fx.Node, sizes) -> str:
    """Why every row keeps a visible chosen key, or NoMatch with the reason."""
    x = _topk_over(idx)
    require(x is not None, "finite fill, and the indices are no top-k: a row with no visible chosen key "
                           "would be eager's uniform softmax over all keys")
    require(_adds_base(x, dsa_base), "finite fill, and the top-k does not rank scores plus this base mask")
    try:
        causal = analyse(dsa_base, sizes)
    except (NotProven, NoMatch) as why:
        raise NoMatch(f"finite fill, and the base mask is not proven to leave every row a key ({why})") from None
    require(not causal.keys, "finite fill, and the base mask is not proven to leave every row a key (key "
                             "padding: a padded row's eager softmax is over all keys)")
    return "top-k of scores + causal base: every row keeps a visible chosen key"


def search(call: AttentionCall, p: MlaPieces) -> DsaMask:
    """The DSA structure of call.mask; NotDsa when there is none, NoMatch (the
    reason) when it is there but not proven."""
    if call.mask is None:
        raise NotDsa()
    where = _strip(call.mask)
    if not is_op(where, aten.where.self):
        raise NotDsa()
    cond, a, b = where.args
    dtype = val(where).dtype
    idx = _unchosen(cond, p)
    if idx is not None:  # eager: where(unchosen, fill, base)
        fill = _scalar(a, dtype)
        require(fill is not None and isinstance(b, fx.Node), "unchosen keys get no constant fill")
        base, is_bool = b, False
    else:  # sdpa: where(base & ~unchosen, 0, fill)
        if not is_op(cond, *_AND):
            raise NotDsa()
        terms = [_strip(t) for t in cond.args]
        nots = [i for i, t in enumerate(terms) if is_op(t, *_NOT) and _unchosen(t.args[0], p) is not None]
        if not nots:
            raise NotDsa()
        idx = _unchosen(terms[nots[0]].args[0], p)
        base, is_bool = cond.args[1 - nots[0]], True
        require(_scalar(a, dtype) == 0.0, "the top-k mask keeps its keys at a value other than 0")
        fill = _scalar(b, dtype)
        require(fill is not None, "unchosen keys get no constant fill")
        require(val(base).dtype == torch.bool, "the base mask and-ed with the top-k mask is not boolean")
    require(fill == -math.inf or fill <= FINITE_FILL_MAX, f"unchosen keys get {fill}, not -inf or finfo.min")
    require(len(call.mask.users) == 1 and (call.mask is where or len(where.users) == 1),
            "the DSA mask is also read elsewhere")
    proof = "top-k mask, unchosen keys -inf"
    if fill != -math.inf:
        proof = _finite_fill_proof(base, idx, (p.sizes["Sq"], p.sizes["Sk"]))
    # topk returns k different positions of its row: the op may skip deduplicating them
    return DsaMask(idx, base, is_bool, where, fill, proof, _distinct(idx))


def replace(graph: fx.Graph, call: AttentionCall, p: MlaPieces, dsa: DsaMask, kernel: str, head_weights) -> None:
    with graph.inserting_before(call.output):
        mask = dsa.base
        if dsa.base_is_bool:  # additive: kept keys 0, hidden ones the where's fill (-inf)
            mask = _call(graph, aten.where.self, (dsa.base, dsa.where.args[1], dsa.where.args[2]))
    call = dc_replace(call, mask=mask)

    def operands() -> list:
        views: dict = {}
        return [*(arrange(graph, piece) for piece in (p.q_nope, p.q_pe, p.keys.latent, p.k_pe)),
                head_weights(graph, p.keys, views), head_weights(graph, p.values, views), dsa.indices]

    emit_attention(graph, call, p, sparse_op, operands, (call.scale, kernel), (dsa.distinct,))


__all__ = ["search", "replace", "NotDsa", "DsaMask"]
