"""Canonicalisation before matching, so that few patterns cover many code shapes."""
from __future__ import annotations

import torch.fx as fx

from .match_utils import aten

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
