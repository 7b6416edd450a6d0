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
    and cast as `copy_` does. Anything else is left as it is.
    """
    for node in list(graph.nodes):
        pieces, base = [], node
        while is_op(base, aten.slice_scatter.default):
            pieces.append(base)
            base = base.args[0]
        if len(pieces) < 2 or not is_op(base, *_EMPTY):
            continue
        spans = [_span(p) for p in pieces]
        if any(s is None for s in spans) or len({s[0] for s in spans}) != 1:
            continue
        dim = spans[0][0]
        size = val(node).shape[dim]
        spans = sorted(zip(spans, pieces), key=lambda sp: sp[0][1])
        edges = [0] + [e for (_, _, e), _ in spans]
        if not all(s == e for ((_, s, _), _), e in zip(spans, edges)) or edges[-1] != size:
            continue
        with graph.inserting_before(node):
            parts = [_written(graph, p) for _, p in spans]
            if any(p is None for p in parts):  # left for dead-code elimination
                continue
            cat = _call(graph, aten.cat.default, (parts, dim))
        node.replace_all_uses_with(cat)


def _span(scatter: fx.Node):
    """(dim, start, end) of a step-1 slice_scatter with static bounds, else None."""
    args = list(scatter.args) + [0, None, None, 1][len(scatter.args) - 2:]
    _, src, dim, start, end, step = args[:6]
    shape = val(scatter).shape
    dim = norm_dim(dim, len(shape))
    start = 0 if start is None else start
    end = shape[dim] if end is None else end
    if step != 1 or not all(isinstance(v, int) for v in (start, end, shape[dim])):
        return None
    return dim, start, min(end, shape[dim])


def _written(graph: fx.Graph, scatter: fx.Node) -> fx.Node | None:
    """What a slice_scatter writes: `copy(slice, u)` writes u broadcast and cast."""
    src = scatter.args[1]
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
