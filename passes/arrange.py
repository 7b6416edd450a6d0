"""Building a fused op's arguments and result as views of the graph's own tensors:
the replacement half of the attention rewrites (passes/attention.py,
passes/latent_attention.py). `pieces` is anything with `batch_role` and `head_role`:
which batch roles of the scores are the op's B and H axes."""
from __future__ import annotations

import torch.fx as fx

from ..compat import known_equal
from .attention_forms import AttentionCall
from .graph_edit import call_with_meta as _call, shape_args
from .layout import Axis
from .match_utils import aten, prims, require, val
from .mla_pieces import Piece


def arrange(graph: fx.Graph, piece: Piece) -> fx.Node:
    """piece.node viewed so that its axes are piece.axes in order (None: size 1)."""
    node, axes = piece.node, piece.axes
    if piece.window:
        node = _call(graph, aten.slice.Tensor, (node, *piece.window))
    shape = val(node).shape
    require(all(a is None or a.whole for a in axes), "an operand axis is a factor of its tensor's")
    used = [a.base_axis for a in axes if a is not None]
    require(len(set(used)) == len(used), "two roles index one axis")
    free = [i for i in range(len(shape)) if i not in used]
    require(all(known_equal(shape[i], 1) for i in free), "an operand has an axis no role indexes")
    # a size-1 role takes a size-1 axis the tensor has, else a new one (unsqueeze)
    src = [a.base_axis if a is not None else (free.pop(0) if free else None) for a in axes]
    x = node
    if free:
        x = _call(graph, aten.squeeze.dims, (x, free))
    kept = [i for i in range(len(shape)) if i not in free]
    perm = [kept.index(i) for i in src if i is not None]
    if perm != list(range(len(perm))):
        x = _call(graph, aten.permute.default, (x, perm))
    for pos, i in enumerate(src):
        if i is None:
            x = _call(graph, aten.unsqueeze.default, (x, pos))
    return x


def arrange_mask(graph: fx.Graph, call: AttentionCall, p) -> fx.Node | None:
    if call.mask is None:
        return None
    shape = val(call.mask).shape
    nb = len(call.batch)
    lead = nb + 2 - len(shape)
    require(lead >= 0, f"mask of rank {len(shape)} for scores of rank {nb + 2}")
    axes = [None] * lead + [None if known_equal(s, 1) else Axis(i, 1, s, s) for i, s in enumerate(shape)]
    roles = [p.batch_role, p.head_role, nb, nb + 1]
    return arrange(graph, Piece(call.mask, tuple(None if i is None else axes[i] for i in roles)))


def arrange_result(graph: fx.Graph, out: fx.Node, call: AttentionCall, p) -> fx.Node:
    """The op's [B, H, Sq, Dv] in the layout of the node it replaces."""
    nb = len(call.batch)
    b, h = val(out).shape[:2]
    axes = [Axis(0, 1, b, b) if i == p.batch_role else Axis(1, 1, h, h) for i in range(nb)]
    axes = [None if known_equal(a.size, 1) else a for a in axes]
    sq, dv = val(out).shape[2:]
    axes += [None if known_equal(sq, 1) else Axis(2, 1, sq, sq), None if known_equal(dv, 1) else Axis(3, 1, dv, dv)]
    x = arrange(graph, Piece(out, tuple(axes)))
    want = list(val(call.output).shape)
    if len(want) != len(val(x).shape) or not all(known_equal(a, b) for a, b in zip(want, val(x).shape)):
        sizes = shape_args(graph, want, [x, out])  # eager: batch axes merged, as the bmm has them
        if sizes is None and nb > 1:
            sizes = shape_args(graph, [-1] + want[1:], [x, out])
        require(sizes is not None, "no symbolic size for the attention output's shape")
        x = _call(graph, aten.reshape.default, (x, sizes))
    return x


_PASS_THROUGH = {aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.permute.default,
                 aten.clone.default, aten.expand.default, aten.transpose.int, aten.unsqueeze.default}


def rounded_back(node: fx.Node, dtype) -> bool:
    """Whether every reader of node, through views, casts it to `dtype`: then an
    attention computed in fp32 from `dtype` inputs may as well return `dtype`."""
    users = list(node.users)
    while users:
        u = users.pop()
        if u.op == "call_function" and u.target in _PASS_THROUGH:
            users.extend(u.users)
        elif not (u.target is prims.convert_element_type.default and u.args[1] == dtype):
            return False
    return True
