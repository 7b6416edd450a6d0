"""Whether a bmm the attention reader refused still looks like attention: a softmax
whose result reaches one of its operands the way probabilities reach P @ V. Such a
bmm is reported as a near miss (strict mode raises), so an attention the reader
cannot read is never left alone silently (issue 17).

The walk goes back from the bmm's operands through views, slices, casts and
elementwise ops (a per-head gate, a dropout mask) and stops at anything else: a
matmul, a reduction, a selection such as topk, a graph input. A softmax behind one
of those (the previous layer's attention, a mixture-of-experts router whose top-k
weights reach the next layer through the residual stream) belongs to something
else, and reporting it would be noise.
"""
from __future__ import annotations

import operator
from typing import Optional

import torch
import torch.fx as fx

from .match_utils import aten, describe, is_op

_SOFTMAX = tuple(getattr(aten, name).default for name in ("_softmax", "_safe_softmax") if hasattr(aten, name))
# Ops that move or re-type values without changing them: left out of the reason.
_PASSIVE = {aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.permute.default,
            aten.transpose.int, aten.expand.default, aten.unsqueeze.default, aten.squeeze.dim,
            aten.clone.default, aten.alias.default, aten._to_copy.default,
            torch.ops.prims.convert_element_type.default}
# Non-elementwise ops the walk follows besides those: parts of a tensor, pieces joined,
# dropout (an elementwise mask, as one op in training graphs).
_PIECES = {aten.slice.Tensor, aten.select.int, aten.split.Tensor, aten.split_with_sizes.default,
           aten.cat.default, aten.native_dropout.default, operator.getitem}


def is_softmax(node: fx.Node) -> bool:
    """A softmax as the joint graph has it: the op, or its exp / sum(exp) decomposition."""
    if is_op(node, *_SOFTMAX):
        return True
    if not is_op(node, aten.div.Tensor) or len(node.args) != 2:
        return False
    exp, total = node.args
    return (is_op(exp, aten.exp.default) and is_op(total, aten.sum.dim_IntList)
            and total.args[0] is exp)


def _follows(node: fx.Node) -> bool:
    """Whether probabilities pass through `node` unchanged in kind: a view, a piece, or
    an elementwise op (torch's pointwise tag)."""
    if node.op != "call_function":
        return False
    target = node.target
    if target in _PASSIVE or target in _PIECES:
        return True
    return isinstance(target, torch._ops.OpOverload) and torch.Tag.pointwise in target.tags


def softmax_path(operand: fx.Node) -> Optional[list[fx.Node]]:
    """[softmax, ..., operand]: a path from a softmax to `operand` through ops the walk
    follows (module docstring), or None. Breadth first, so the shortest such path."""
    parent: dict[fx.Node, Optional[fx.Node]] = {operand: None}
    queue = [operand]
    for node in queue:
        if is_softmax(node):
            path = [node]
            while parent[path[-1]] is not None:
                path.append(parent[path[-1]])
            return path
        if not _follows(node):
            continue
        for arg in node.all_input_nodes:
            if arg not in parent:
                parent[arg] = node
                queue.append(arg)
    return None


def softmax_reach_reason(bmm: fx.Node, why: str) -> Optional[str]:
    """A near-miss reason for a bmm the reader refused (`why`), if a softmax reaches it."""
    for side, operand in (("left", bmm.args[0]), ("right", bmm.args[1])):
        if not isinstance(operand, fx.Node):
            continue
        path = softmax_path(operand)
        if path is None:
            continue
        softmax, between = path[0], [n for n in path[1:] if n.target not in _PASSIVE]
        what = f"softmax %{softmax.name} reaches this bmm's {side} operand"
        if between:
            ops = ", ".join(dict.fromkeys(describe(n) for n in between))
            return (f"{what} through {ops}: not attention probabilities as the fused op computes them "
                    f"(softmax(scores) @ V, nothing in between)")
        return f"{what}, but it is not attention's softmax: {why}"
    return None
