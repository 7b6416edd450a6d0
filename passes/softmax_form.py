"""A last-axis softmax as the aten graph has it (`aten._softmax`, or decomposed:
exp(x - amax) / sum), with SDPA's safe-softmax guard or not: `parse_softmax` gives its
input and whether rows with no visible key give 0. `unconvert` skips the float casts
around it (softmax in fp32, then back)."""
from __future__ import annotations

import math

import torch.fx as fx

from .match_utils import aten, expect_op, is_op, norm_dim, prims, require, val


def _is_last_dims(dims, node) -> bool:
    dims = [dims] if isinstance(dims, int) else list(dims)
    return len(dims) == 1 and norm_dim(dims[0], val(node).dim()) == val(node).dim() - 1


def unconvert(node: fx.Node, once: bool = False) -> fx.Node:
    """Skip dtype conversions between float types (softmax in fp32 and back)."""
    while is_op(node, prims.convert_element_type.default) or (
            is_op(node, aten._to_copy.default) and set(node.kwargs) <= {"dtype"}):
        if not (val(node.args[0]).is_floating_point() and val(node).is_floating_point()):
            break
        node = node.args[0]
        if once:
            break
    return node


def parse_softmax(node: fx.Node) -> tuple[fx.Node, bool]:
    """(softmax input, zero_empty_rows) of a last-dim softmax, decomposed or not."""
    node = unconvert(node)
    zero_empty = False
    if is_op(node, aten.where.self):  # SDPA's safe softmax: where(no key visible, 0, p)
        cond, zero, node = node.args
        require(is_op(zero, aten.full.default) and zero.args[1] == 0, "safe-softmax fill is not 0")
        any_ = expect_op(expect_op(cond, aten.logical_not.default, what="safe-softmax condition").args[0],
                         aten.any.dim, what="safe-softmax row test")
        eq = expect_op(expect_op(any_.args[0], aten.logical_not.default, what="safe-softmax test").args[0],
                       aten.eq.Scalar, what="safe-softmax test")
        require(eq.args[1] == -math.inf and _is_last_dims(any_.args[1], any_), "safe-softmax test")
        zero_empty, checked = True, eq.args[0]
    if is_op(node, aten._softmax.default):
        require(_is_last_dims(node.args[1], node), "softmax is not over the last dim")
        x = node.args[0]
    else:
        exp = expect_op(node, aten.div.Tensor, what="softmax").args[0]
        total = expect_op(node.args[1], aten.sum.dim_IntList, what="softmax denominator")
        expect_op(exp, aten.exp.default, what="softmax numerator")
        require(total.args[0] is exp and _is_last_dims(total.args[1], total), "softmax sum is not of its exp")
        sub = expect_op(exp.args[0], aten.sub.Tensor, what="softmax shift")
        x, amax = sub.args
        require(is_op(amax, aten.amax.default) and amax.args[0] is x and _is_last_dims(amax.args[1], amax),
                "softmax shift is not the row max")
    require(not zero_empty or checked is x, "safe-softmax tests another tensor")
    return x, zero_empty


__all__ = ["parse_softmax", "unconvert"]
