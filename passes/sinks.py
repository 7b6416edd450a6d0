"""Attention sinks as model code writes them (gpt-oss, HY-V4 in transformers 5.23):

    combined = cat([scores * scale + mask, sinks.reshape(1, H, 1, 1).expand(B, H, Sq, 1)], -1)
    combined = combined - combined.max(-1, keepdim=True).values      (optional)
    p = softmax(combined)[..., :-1]                                   the sink dropped

A learned logit per head joins every row's softmax denominator and has no value:
exactly what `sinks=` of the fused ops computes. The subtracted row max changes no
probability (softmax subtracts it again, and max(x - max x) is exactly 0).

`sink_softmax(p)` reads P as that slice and returns the softmax node; `split_sinks(x)`
the logits and the sink column out of the softmax input. Anything else is NoMatch.
"""
from __future__ import annotations

import operator

import torch.fx as fx

from ..compat import known_equal
from .match_utils import NoMatch, aten, is_last_dim, is_op, norm_dim, require, val


def sink_softmax(sliced: fx.Node, is_softmax) -> fx.Node:
    """P = softmax(..)[..., :-1] (the last column dropped): the softmax node.
    `is_softmax(node)` says whether node is a last-dim softmax."""
    src = sliced.args[0]
    if not is_softmax(src):
        raise NoMatch("probabilities are a slice of something other than a softmax", structural=True)
    args = list(sliced.args) + [0, None, None, 1][len(sliced.args) - 1:]
    _, dim, start, end, step = args[:5]
    width = val(src).shape[-1]
    end = end.meta["val"] if isinstance(end, fx.Node) else end  # a dynamic width: a SymInt
    require(norm_dim(dim, val(src).dim()) == val(src).dim() - 1 and start in (0, None) and step == 1
            and end is not None and (end == -1 or known_equal(end, width - 1)),
            "probabilities are a slice of a wider softmax other than its last column dropped")
    return src


def _row_max_of(m: fx.Node, x: fx.Node) -> bool:
    if is_op(m, operator.getitem) and m.args[1] == 0 and is_op(m.args[0], aten.max.dim):
        m = m.args[0]
        return m.args[0] is x and is_last_dim(m.args[1], x) and (m.args[2] if len(m.args) > 2 else False)
    return (is_op(m, aten.amax.default) and m.args[0] is x and len(m.args[1]) == 1
            and is_last_dim(m.args[1][0], x) and (m.args[2] if len(m.args) > 2 else False))


def split_sinks(x: fx.Node, unconvert) -> tuple[fx.Node, fx.Node]:
    """The softmax input (row max subtracted or not) = cat([logits, sink column], -1):
    (logits, sink column [..., 1]). `unconvert` skips float casts (a softmax in fp32)."""
    x = unconvert(x)
    if is_op(x, aten.sub.Tensor) and isinstance(x.args[1], fx.Node) and _row_max_of(x.args[1], x.args[0]):
        x = unconvert(x.args[0])
    require(is_op(x, aten.cat.default), "the softmax over a column more than P has is not of cat([scores, sinks])")
    parts = list(x.args[0])
    dim = x.args[1] if len(x.args) > 1 else 0
    require(len(parts) == 2 and norm_dim(dim, val(x).dim()) == val(x).dim() - 1
            and val(parts[1]).shape[-1] == 1, "the extra softmax column is not one logit concatenated last")
    return parts[0], parts[1]
