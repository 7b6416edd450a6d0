"""Canonicalisation before matching, so that few patterns cover many code shapes."""
from __future__ import annotations

import torch.fx as fx

from ..compat import known_equal
from .graph_edit import call_with_meta as _call, shape_args
from .match_utils import aten, is_op, norm_dim, prims, val

_VIEW_OPS = {
    aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.unsqueeze.default,
    aten.squeeze.dim, aten.expand.default, aten.permute.default, aten.transpose.int,
    aten.slice.Tensor, aten.select.int, aten.view_as_real.default, aten.view_as_complex.default,
}


def dedupe_views(graph: fx.Graph) -> None:
    """One node for each distinct view of a tensor: code that views cos/sin (or
    freqs_cis) once for q and again for k then shares them, so both RoPEs can
    share a launch. Views are pure in the functional graph, and the first copy
    comes before every user of the later ones."""
    seen: dict[tuple, fx.Node] = {}
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _VIEW_OPS:
            continue
        key = (node.target, _hashable(node.args), _hashable(tuple(sorted(node.kwargs.items()))))
        try:
            hash(key)
        except TypeError:  # e.g. a SymInt argument: leave the node as it is
            continue
        if key in seen:
            node.replace_all_uses_with(seen[key])
            graph.erase_node(node)
        else:
            seen[key] = node


def _hashable(value):
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_hashable(v) for v in value))
    return value


_EMPTY = {aten.empty.memory_format, aten.new_empty.default, aten.empty_like.default}


def slice_assign_to_cat(graph: fx.Graph) -> None:
    """`t = x.new_empty(...); t[..., :a] = u; t[..., a:] = w` -> `cat([u, w], -1)`.

    Functionalised, that is slice_scatter(slice_scatter(empty, copy(slice, u)), ...);
    when the scatters tile one dim of the empty tensor exactly, every element is
    written and the result is the concatenation of the written values, broadcast
    and cast as `copy_` does. A slice that is the whole tensor is functionalised as
    copy(alias(empty), u) (a NoPE key: `t[..., :d].copy_(k_nope)` with d the whole
    width), and a zero-width slice writes nothing: both are pieces too, and one
    piece left is the written value itself, no cat. Anything else is left as it is.
    """
    for node in list(graph.nodes):
        pieces, base = [], node
        while is_op(base, aten.slice_scatter.default, aten.alias.default):
            if base.target is aten.slice_scatter.default:
                pieces.append(base)
            base = base.args[0]
        whole = None
        if is_op(base, aten.copy.default) and is_op(_unalias(base.args[0]), *_EMPTY):
            whole, base = base, _unalias(base.args[0])  # every element written
        if len(pieces) + (whole is not None) < 2 or not is_op(base, *_EMPTY):
            continue
        spans = [_span(p) for p in pieces]
        if any(s is None for s in spans) or len({s[0] for s in spans}) > 1:
            continue
        dim = spans[0][0] if spans else val(node).dim() - 1
        size = val(node).shape[dim]
        if whole is not None:  # the whole copy first: the scatters may only add nothing
            if any(s != e for _, s, e in spans):
                continue
            spans, pieces = [(dim, 0, size)], [whole]
        spans = sorted(zip(spans, pieces), key=lambda sp: sp[0][1])
        edges = [0] + [e for (_, _, e), _ in spans]
        if not all(s == e for ((_, s, _), _), e in zip(spans, edges)) or edges[-1] != size:
            continue
        spans = [(sp, p) for sp, p in spans if sp[1] != sp[2]]  # zero-width writes: nothing
        with graph.inserting_before(node):
            parts = [_written(graph, p) for _, p in spans]
            if any(p is None for p in parts):  # left for dead-code elimination
                continue
            new = parts[0] if len(parts) == 1 else _call(graph, aten.cat.default, (parts, dim))
        # an output keeps its own node: a graph output may not become an alias of an input
        node.replace_all_uses_with(new, delete_user_cb=lambda user: user.op != "output")


def drop_empty_cat_parts(graph: fx.Graph) -> None:
    """`cat([x, e], d)` with e zero-width along d (a NoPE layer's empty rope part)
    -> `cat([x], d)`, and a cat of one part -> that part (same values)."""
    for node in list(graph.nodes):
        if not is_op(node, aten.cat.default):
            continue
        parts = list(node.args[0])
        rank = val(node).dim()
        dim = norm_dim(node.args[1] if len(node.args) > 1 else 0, rank)
        if any(val(p).dim() != rank for p in parts):  # legacy 1-D empty parts: left alone
            continue
        kept = [p for p in parts if not (isinstance(val(p).shape[dim], int) and val(p).shape[dim] == 0)]
        if len(kept) == len(parts) or not kept:
            continue
        if len(kept) > 1:
            node.update_arg(0, kept)
        elif val(kept[0]).dtype == val(node).dtype:
            node.replace_all_uses_with(kept[0], delete_user_cb=lambda user: user.op != "output")


def read_back_written(graph: fx.Graph) -> None:
    """`buf[:, a:b] = u; ... buf[:, a:b]` -> u: a slice that reads exactly the window a
    slice_scatter just wrote is the written value (DeepSeek's naive mode writes K and V
    to its caches, then reads them back: at a prefill from position 0 the read is this
    step's keys). Other reads of the updated buffer, and the write itself, stay."""
    for node in list(graph.nodes):
        if not is_op(node, aten.slice.Tensor) or not is_op(node.args[0], aten.slice_scatter.default):
            continue
        scatter = node.args[0]
        read = _span(node)
        if read is None or read != _span(scatter) or not known_equal(read[2] - read[1], val(node).shape[read[0]]):
            continue
        with graph.inserting_before(node):
            value = _written(graph, scatter)
        if value is not None and tuple(val(value).shape) == tuple(val(node).shape):
            node.replace_all_uses_with(value, delete_user_cb=lambda user: user.op != "output")


def _unalias(node):
    while is_op(node, aten.alias.default):
        node = node.args[0]
    return node


def _span(scatter: fx.Node):
    """(dim, start, end) of a step-1 slice_scatter (or slice) with static bounds, else None."""
    if is_op(scatter, aten.slice.Tensor):  # slice(x, dim, start, end, step): no src
        args = list(scatter.args) + [0, None, None, 1][len(scatter.args) - 1:]
        _, dim, start, end, step = args[:5]
    else:
        args = list(scatter.args) + [0, None, None, 1][len(scatter.args) - 2:]
        _, src, dim, start, end, step = args[:6]
    shape = val(scatter.args[0]).shape  # the tensor sliced, or scattered into
    dim = norm_dim(dim, len(shape))
    start = 0 if start is None else start
    end = shape[dim] if end is None else end
    if step != 1 or not all(isinstance(v, int) for v in (start, end, shape[dim])) or start < 0 or end < 0:
        return None
    return dim, start, min(end, shape[dim])


def _written(graph: fx.Graph, scatter: fx.Node) -> fx.Node | None:
    """What a slice_scatter (or a whole copy) writes: `copy(slice, u)` writes u broadcast and cast."""
    src = scatter if is_op(scatter, aten.copy.default) else scatter.args[1]
    if not is_op(src, aten.copy.default):
        return src
    target, value = val(src.args[0]), src.args[1]
    if val(value).dtype != target.dtype:
        value = _call(graph, prims.convert_element_type.default, (value, target.dtype))
    shape, have = list(target.shape), val(value).shape
    lead = len(shape) - len(have)
    if lead or not all(known_equal(a, b) for a, b in zip(shape, have)):
        keep = [-1 if i >= lead and known_equal(s, have[i - lead]) else s for i, s in enumerate(shape)]
        sizes = shape_args(graph, keep, [src.args[0]])
        if sizes is None:
            return None
        value = _call(graph, aten.expand.default, (value, sizes))
    return value
