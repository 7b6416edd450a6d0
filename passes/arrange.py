"""Building a fused op's arguments and result as views of the graph's own tensors:
the replacement half of the attention rewrites (passes/attention.py,
passes/latent_attention.py). `pieces` is anything with `batch_role` and `head_role`:
which batch roles of the scores are the op's B and H axes."""
from __future__ import annotations

import torch
import torch.fx as fx

from ..compat import known_equal
from .attention_forms import AttentionCall
from .graph_edit import call_with_meta as _call, shape_args
from .layout import Axis
from .match_utils import NoMatch, aten, prims, require, val
from .mla_pieces import Piece


def arrange(graph: fx.Graph, piece: Piece) -> fx.Node:
    """piece.node viewed so that its axes are piece.axes in order (None: size 1)."""
    node, axes = piece.node, piece.axes
    if piece.window:
        node = _call(graph, aten.slice.Tensor, (node, *piece.window))
    if not all(a is None or a.whole for a in axes):
        node, axes = _split_factors(graph, node, axes)
    shape = val(node).shape
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
    if piece.cut:
        x = _call(graph, aten.slice.Tensor, (x, -1, *piece.cut))
    return x


def _inputs(graph: fx.Graph) -> list[fx.Node]:
    """The graph's tensor inputs: where a symbolic size can always be read (sym_size)."""
    return [n for n in graph.nodes if n.op == "placeholder" and isinstance(n.meta.get("val"), torch.Tensor)]


def _split_factors(graph: fx.Graph, node: fx.Node, axes) -> tuple[fx.Node, tuple]:
    """node reshaped so that roles reading row-major factors of one of its axes (the
    batch and positions an einsum merged) read whole axes: (new node, their axes)."""
    shape = val(node).shape
    new_shape, where = [], {}
    for d, size in enumerate(shape):
        factors = [a for a in axes if a is not None and a.base_axis == d]
        if not factors or (len(factors) == 1 and factors[0].whole):
            where.update({id(a): len(new_shape) for a in factors})
            new_shape.append(size)
            continue
        chain, step = [], 1
        while not known_equal(step, size):
            nxt = [a for a in factors if known_equal(a.inner, step)]
            require(len(nxt) == 1, "an operand axis is a factor of its tensor's that the roles do not tile")
            chain.append(nxt[0])
            step = step * nxt[0].size
        for a in reversed(chain):
            where[id(a)] = len(new_shape)
            new_shape.append(a.size)
    sizes = shape_args(graph, new_shape, [node, *_inputs(graph)], infer_one=True)  # a factor is an input's size
    require(sizes is not None, "no symbolic size to split an operand axis")
    split = _call(graph, aten.reshape.default, (node, sizes))
    return split, tuple(None if a is None else Axis(where[id(a)], 1, a.size, a.size) for a in axes)


def arrange_mask(graph: fx.Graph, call: AttentionCall, p) -> fx.Node | None:
    if call.mask is None:
        return None
    shape = val(call.mask).shape
    nb = len(call.batch)
    lead = nb + 2 - len(shape)
    require(lead >= 0, f"mask of rank {len(shape)} for scores of rank {nb + 2}")
    axes = [None] * lead + [None if known_equal(s, 1) else Axis(i, 1, s, s) for i, s in enumerate(shape)]
    order = call.roles or tuple(range(nb + 2))  # the scores' axis of each role
    roles = [p.batch_role, p.head_role, nb, nb + 1]
    return arrange(graph, Piece(call.mask, tuple(None if i is None else axes[order[i]] for i in roles)))


def arrange_sinks(graph: fx.Graph, call: AttentionCall, p) -> fx.Node | None:
    """The sink logits as the op's [H]: they may vary over the heads only."""
    if call.sinks is None:
        return None
    axes = call.sinks.axes
    require(p.batch_role is None or axes[p.batch_role] is None, "the sink logit varies over the batch")
    head = axes[p.head_role] if p.head_role is not None else None
    x = arrange(graph, Piece(call.sinks.base, (head,)))
    if head is None:  # one logit for every head
        sizes = shape_args(graph, [p.sizes["H"]], [call.q.base, *_inputs(graph)])
        require(sizes is not None, "no symbolic size for the heads of the sink logits")
        x = _call(graph, aten.expand.default, (x, sizes))
    return x


def arrange_result(graph: fx.Graph, out: fx.Node, call: AttentionCall, p) -> fx.Node:
    """The op's [B, H, Sq, Dv] in the layout of the node it replaces."""
    nb = len(call.batch)
    b, h = val(out).shape[:2]
    axes = [Axis(0, 1, b, b) if i == p.batch_role else Axis(1, 1, h, h) for i in range(nb)]
    axes = [None if known_equal(a.size, 1) else a for a in axes]
    sq, dv = val(out).shape[2:]
    axes += [None if known_equal(sq, 1) else Axis(2, 1, sq, sq), None if known_equal(dv, 1) else Axis(3, 1, dv, dv)]
    if call.out_order is not None:  # the roles as the replaced bmm's output flattens them
        axes = [axes[i] for i in call.out_order]
    x = arrange(graph, Piece(out, tuple(axes)))
    want = list(val(call.output).shape)
    if len(want) != len(val(x).shape) or not all(known_equal(a, b) for a, b in zip(want, val(x).shape)):
        # eager: roles merged as the bmm has them; a merged symbolic size is inferred
        sizes = shape_args(graph, want, [x, out, *_inputs(graph)], infer_one=True)
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


def emit_attention(graph: fx.Graph, call: AttentionCall, p, op, operands, options: tuple,
                   tail: tuple = ()) -> None:
    """Replace call.output by op(*operands(), *options, mask, call.zero_empty_rows, *tail):
    the operands are built (at the insertion point) by `operands`, the float ones must
    share one dtype, and the result goes back in the replaced node's layout and dtype."""
    with graph.inserting_before(call.output):
        args = operands()
        dtypes = {val(a).dtype for a in args if val(a).is_floating_point()}  # not the indices
        require(len(dtypes) == 1, f"operands mix dtypes {sorted(map(str, dtypes))}")
        dtype, out_dtype = dtypes.pop(), val(call.output).dtype
        require(out_dtype == dtype or (call.upcast and rounded_back(call.output, dtype)),
                f"attention output is {out_dtype}, operands {dtype}")
        mask = arrange_mask(graph, call, p)
        sinks = arrange_sinks(graph, call, p)
        # sinks and empty_row_fill only when there are (graphs without print as before)
        extra = [sinks] if sinks is not None or call.empty_row_fill is not None else []
        extra += [call.empty_row_fill] if call.empty_row_fill is not None else []
        try:
            out = _call(graph, op, (*args, *options, mask, call.zero_empty_rows, *tail, *extra))
        except ValueError as e:  # the op's own checks: shapes that do not agree
            raise NoMatch(str(e)) from None
        result = arrange_result(graph, out, call, p)
        if out_dtype != dtype:  # exact: every reader rounds it back to `dtype`
            result = _call(graph, prims.convert_element_type.default, (result, out_dtype))
    call.output.replace_all_uses_with(result)
