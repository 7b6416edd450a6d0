"""RoPE fusion: every recognised RoPE becomes `torch.ops.mla.rope`, and RoPEs
that share cos/sin (q_pe and k_pe) are merged into one launch.

The op is functional: the rotated tensor is new and the pre-RoPE tensor keeps
its value for any later reader (seed 003b); nothing here mutates.
"""
from __future__ import annotations

import operator
from collections import defaultdict

import torch
import torch.fx as fx

from ..compat import known_equal
from ..report import Match, NearMiss, PassRecord
from .canonicalize import dedupe_views
from .graph_edit import call_with_meta as _call, plain_size as _plain
from .match_utils import NoMatch, aten, val
from .rope_forms import SEARCHES, RopeMatch, check_operands

rope_op = torch.ops.mla.rope.default


def _heads(m: RopeMatch) -> int | str:
    """Heads: x's size along the innermost leading dim that cos/sin broadcast
    over, not counting the batch dim of a 4-D or 5-D x."""
    x = val(m.x).shape[:-1]
    lead = val(m.cos).shape[:-1]
    lead = (1,) * (len(x) - len(lead)) + tuple(lead)
    first = 1 if len(x) >= 3 else 0
    for xs, cs in reversed(list(zip(x, lead))[first:]):
        if known_equal(cs, 1) and not known_equal(xs, 1):
            return _plain(xs)
    return 1


def _describe(m: RopeMatch) -> dict:
    x = val(m.x)
    style = "interleaved" if m.interleaved_out else ("deinterleaved" if m.interleaved_in else "neox")
    return {
        "form": m.form, "style": style, "rotary_dim": int(x.shape[-1]), "heads": _heads(m),
        "shape": tuple(map(_plain, x.shape)), "dtype": str(x.dtype).replace("torch.", ""),
        "cos_width": int(val(m.cos).shape[-1]),
    }


def _real_parts(graph: fx.Graph, freqs: fx.Node, made: dict) -> tuple[fx.Node, fx.Node]:
    """cos/sin as views of complex freqs, made once per freqs node (right after
    it) so that RoPEs sharing freqs also share cos/sin and one launch."""
    if freqs not in made:
        # after freqs, or after the last input when freqs is one (inputs stay first)
        anchor = freqs if freqs.op != "placeholder" else [n for n in graph.nodes if n.op == "placeholder"][-1]
        with graph.inserting_after(anchor):
            as_real = _call(graph, aten.view_as_real.default, (freqs,))
        with graph.inserting_after(as_real):
            sin = _call(graph, aten.select.int, (as_real, -1, 1))
        with graph.inserting_after(as_real):
            cos = _call(graph, aten.select.int, (as_real, -1, 0))
        made[freqs] = (cos, sin)
    return made[freqs]


def _replace(graph: fx.Graph, m: RopeMatch, kernel: str, made: dict) -> None:
    cos, sin = _real_parts(graph, m.cos, made) if m.complex_freqs else (m.cos, m.sin)
    with graph.inserting_before(m.output):
        rope = _call(graph, rope_op, ([m.x], cos, sin, m.interleaved_in, m.interleaved_out, kernel))
        rotated = _call(graph, operator.getitem, (rope, 0))
    m.output.replace_all_uses_with(rotated)


def fuse_rope(graph: fx.Graph, options, record: PassRecord) -> None:
    dedupe_views(graph)
    made: dict = {}
    for node in list(graph.nodes):
        for pattern, looks_like, search in SEARCHES:
            if node.op != "call_function" or not looks_like(node):
                continue
            try:
                m = search(node)
                check_operands(m)
            except NoMatch as reason:
                record.near_misses.append(NearMiss(pattern, f"%{node.name} = {node.target}", str(reason)))
                continue
            record.matches.append(Match(pattern, _describe(m)))
            _replace(graph, m, options.kernel, made)
            break
    _merge_launches(graph, record)


def _merge_launches(graph: fx.Graph, record: PassRecord) -> None:
    """One launch for RoPEs that share cos, sin and style (q_pe and k_pe)."""
    groups: dict[tuple, list[fx.Node]] = defaultdict(list)
    for node in graph.nodes:
        if node.target is rope_op and len(node.args[0]) == 1:
            groups[tuple(node.args[1:])].append(node)
    for nodes in groups.values():
        i = 0
        while i + 1 < len(nodes):
            first, second = nodes[i], nodes[i + 1]
            at = _merge_point(graph, first, second)
            if at is not None:
                shapes = [tuple(map(_plain, val(n.args[0][0]).shape)) for n in (first, second)]
                _merge(graph, first, second, at)
                record.matches.append(Match("rope.one_launch", {"tensors": 2, "shapes": shapes}))
                i += 2
            else:
                i += 1


def _merge_point(graph: fx.Graph, first: fx.Node, second: fx.Node) -> fx.Node | None:
    """Where one op can replace both without reordering the graph: at `first`
    when all of `second`'s inputs come before it, else at `second` when every
    reader of `first`'s result comes after `second`; None when neither holds."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    if all(order[i] < order[first] for i in second.all_input_nodes):
        return first
    if all(order[r] > order[second] for item in first.users for r in item.users):
        return second
    return None


def _merge(graph: fx.Graph, first: fx.Node, second: fx.Node, at: fx.Node) -> None:
    xs = [first.args[0][0], second.args[0][0]]
    with graph.inserting_before(at):
        both = _call(graph, rope_op, (xs, *second.args[1:]))
        outs = [_call(graph, operator.getitem, (both, i)) for i in range(2)]
    for old, new in zip((first, second), outs):
        for item in list(old.users):
            item.replace_all_uses_with(new)
            graph.erase_node(item)
        graph.erase_node(old)
