"""Proving from its construction that an attention mask is causal (plus key padding),
and what then replaces it.

transformers' mask is where(AND of terms, 0, fill) (or where(NOT (AND of terms), fill,
0): SDPA's boolean mask made additive on CUDA; or where(c, fill, 0) with c one
comparison marking the masked keys: DeepSeek's `full(-inf).triu(1)` decomposes so, and
only c = (k - q >= 1) is causal); passes/mask_terms.py reads its terms by
structure: order comparisons of index vectors bound k - q, key-only terms (size 1 on
the query axis: the key padding), packed-sequence equalities that are all True, and
True itself. Anything else (a lower bound on k - q, i.e. a sliding window; an offset
other than 0; an unknown term) and the mask is left as it is. The mask's last two
dims are the scores' (q, k) roles (AttentionCall), the axes the kernel's causal flag
speaks of.

The result must equal eager's, so what replaces the mask depends on its fill:
  - bound k - q <= 0 exactly: the op's top-left causal (key j visible to row i iff
    j <= i);
  - with key-only terms and fill -inf: causal + the additive mask where(AND of the
    key-only terms, 0, -inf) ([B, 1, 1, Sk]): every score is the same as eager's (a
    key above the diagonal is -inf either way), so rows with no visible key give
    what they gave (NaN, or 0 with safe softmax);
  - without key-only terms: causal, no mask, for fill -inf or a finite fill <=
    FINITE_FILL_MAX (fp16's finfo.min, the largest "minus infinity" in use: SDPA
    turns a boolean mask into 0 / -65504 for its CUDA kernels, bf16 rounds it to
    -65536): every row sees key 0, and a masked key's eager weight
    exp(qk * scale + fill - max) underflows to exactly 0 (fp32) while the scores stay
    below (|fill| - 104) / 2 in magnitude; the report states that bound;
  - key-only terms with a finite fill (eager's finfo.min, SDPA's CUDA -65504: a
    left-padded batch): causal + the key-only mask where(AND of the key-only terms,
    0, fill) + the op's `empty_row_fill` = fill. A row with no visible unmasked key
    (a left-pad query: every key j <= i padded) is eager's softmax over ALL keys, each
    at qk * scale + fill; empty_row_fill gives exactly that (the op decides emptiness
    from the mask's values, reference.empty_rows_mask). Every other row sees an
    unmasked key (mask 0), so a key above the diagonal, which eager scores
    qk * scale + fill and the op -inf, weighs exactly 0 in both under the same bound
    (|scores| < (|fill| - 104) / 2), stated in the report.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.fx as fx

from ..compat import known_equal
from .graph_edit import call_with_meta
from .mask_terms import ALIASES, bound, conjuncts, leading_dims_only, same_rows_eq, scalar
from .match_utils import NoMatch, aten, val

FINITE_FILL_MAX = -65504.0  # a finite fill at most this masks like -inf for bounded scores (see above)


class NotProven(Exception):
    """The mask is not proven causal; str(self) says why (for the report)."""


class NotBuilt(NotProven):
    """The mask is no where(condition, ...) at all (an input, say): nothing to report."""


@dataclass(frozen=True)
class CausalMask:
    keys: tuple          # key-only terms (bool nodes) to keep as an additive mask
    branches: tuple      # the mask's (zero, fill) where() arguments
    fill: float

    @property
    def empty_rows_attend_all(self) -> bool:
        """Key padding under a finite fill: rows with no visible unmasked key are
        eager's softmax over every key (the op's empty_row_fill)."""
        return bool(self.keys) and self.fill != -math.inf


def analyse(mask: fx.Node, sizes: tuple) -> CausalMask:
    """The proof for scores of (Sq, Sk) = `sizes`; raises NotProven with the reason."""
    where = mask
    while where.target in ALIASES or leading_dims_only(where):  # mask[None, None] and the like
        where = where.args[0]
    if where.target is not aten.where.self or val(where).dtype == torch.bool:
        raise NotBuilt("mask is not where(condition, 0, fill)")
    cond, zero, fill = where.args
    if isinstance(cond, fx.Node) and cond.target in (aten.logical_not.default, aten.bitwise_not.default) \
            and val(cond.args[0]).dtype == torch.bool:
        # where(not c, fill, 0): SDPA's boolean mask as it becomes additive on CUDA
        cond, zero, fill = cond.args[0], fill, zero
    z, f = scalar(zero, val(where).dtype), scalar(fill, val(where).dtype)
    masked_where_true = f == 0.0 and z is not None and z != 0.0
    if masked_where_true:  # where(c, fill, 0): c marks the masked keys (full(-inf).triu(1))
        zero, fill, z, f = fill, zero, f, z
    if z != 0.0 or f is None or not (f == -math.inf or f <= FINITE_FILL_MAX):
        raise NotProven(f"mask is where(condition, {z}, {f}), not (0, -inf or finfo.min)")
    if not isinstance(cond, fx.Node) or val(cond).dtype != torch.bool:
        raise NotProven("mask condition is not boolean")
    if masked_where_true:  # cond (True: masked) must be exactly k - q >= 1, the visible keys
        # k - q <= 0; one comparison only: the negation of an AND is no AND of terms
        masked = bound(cond, sizes) if cond.op == "call_function" else None
        if masked == ("lower", 1):
            return CausalMask((), (zero, fill), f)
        if masked is None:
            raise NotProven("mask is where(condition, fill, 0) with a condition that is not one index comparison")
        raise NotProven(f"masked where k - q {'<=' if masked[0] == 'upper' else '>='} {masked[1]}: "
                        "not top-left causal")
    upper, keys = [], []
    for term in conjuncts(cond):
        if not isinstance(term, fx.Node):
            raise NotProven(f"condition term {term!r}")
        shape = val(term).shape
        b = bound(term, sizes) if term.op == "call_function" else None
        if b is not None:
            if b[0] == "lower":
                raise NotProven("k - q is bounded below (a sliding window or k >= q), not causal")
            upper.append(b[1])
        elif len(shape) < 2 or known_equal(shape[-2], 1):
            keys.append(term)
        elif not same_rows_eq(term):
            raise NotProven(f"condition term {term.target} is not an index comparison or key-only")
    if not upper or min(upper) != 0:
        raise NotProven(f"k - q <= {min(upper) if upper else 'inf'}: not top-left causal")
    return CausalMask(tuple(keys), (zero, fill), f)


def rewrite(graph: fx.Graph, call, proof: CausalMask):
    """The call with causal=True and the key-only mask (or none), built before
    call.output; under a finite fill with key padding, the op's empty_row_fill too."""
    mask = None
    if proof.keys:
        with graph.inserting_before(call.output):
            cond = proof.keys[0]
            for term in proof.keys[1:]:
                cond = call_with_meta(graph, aten.bitwise_and.Tensor, (cond, term))
            mask = call_with_meta(graph, aten.where.self, (cond, *proof.branches))
    fill = proof.fill if proof.empty_rows_attend_all else None
    return replace(call, causal=True, mask=mask, empty_row_fill=fill)


def prove(graph: fx.Graph, call, sizes: tuple):
    """(call, note): the call rewritten to causal where its mask is proven causal
    (plus key padding) for scores of (Sq, Sk) = `sizes`; note says what was proven,
    or why not (None: no mask)."""
    if call.mask is None or call.causal:
        return call, None
    try:
        proof = analyse(call.mask, sizes)
    except NotBuilt:
        return call, None
    except (NotProven, NoMatch) as why:
        return call, f"not causal: {why}"
    note = "causal (k <= q from iota comparisons)"
    if proof.fill != -math.inf:
        note += f"; finite fill {proof.fill:g}: exact while |scores| < {(-proof.fill - 104) / 2:g}"
    if proof.empty_rows_attend_all:
        note += (f" + key padding ({len(proof.keys)} key-only term(s), additive, fill {proof.fill:g}; "
                 "rows with no visible unmasked key attend all keys, as eager)")
    elif proof.keys:
        note += f" + key padding ({len(proof.keys)} key-only term(s), additive -inf)"
    return rewrite(graph, call, proof), note


__all__ = ["prove", "analyse", "NotProven", "FINITE_FILL_MAX"]
