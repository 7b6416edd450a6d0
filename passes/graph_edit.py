"""Inserting nodes the way the rest of the graph has them: with fake values."""
from __future__ import annotations

import contextlib

import torch
import torch.fx as fx

from ..compat import detect_fake_mode


def call_with_meta(graph: fx.Graph, target, args) -> fx.Node:
    """A new node with its fake value, computed from its inputs' fake values (so
    the op's own checks run on the new node's arguments)."""
    node = graph.call_function(target, args)
    fake_args = fx.node.map_arg(args, lambda n: n.meta["val"])
    tensors = []
    fx.node.map_aggregate(fake_args, lambda a: tensors.append(a) if isinstance(a, torch.Tensor) else a)
    try:
        with detect_fake_mode(tensors) or contextlib.nullcontext():
            node.meta["val"] = target(*fake_args)
    except Exception:
        graph.erase_node(node)
        raise
    return node


def plain_size(size) -> int | str:
    """A size for the report: an int, or the symbol's text for a dynamic size."""
    return size if isinstance(size, int) else str(size)


def shape_args(graph: fx.Graph, want, sources, infer_one: bool = False) -> list:
    """`want` as arguments of a view/reshape/expand node: ints stay, a symbolic size
    becomes an `aten.sym_size` node of a source tensor that has it (a raw SymInt
    in a node's args is not a graph value). None where no source has it, unless
    `infer_one` (a reshape): then one such size may be -1."""
    from ..compat import known_equal  # local: compat imports nothing from passes

    out = []
    for size in want:
        if isinstance(size, int):
            out.append(size)
            continue
        hit = next(((s, d) for s in sources for d, other in enumerate(s.meta["val"].shape)
                    if known_equal(other, size)), None)
        if hit is None:
            if not infer_one or -1 in out:
                return None
            out.append(-1)
            continue
        out.append(call_with_meta(graph, torch.ops.aten.sym_size.int, hit))
    return out
