"""MLA attention fusion: every attention proven to be MLA (passes/mla_pieces.py) over
the latent becomes one `torch.ops.mla.prefill_attention`, whose form (decompressed
or absorbed) lowering picks from the shapes.

Search and replacement side by side: `search` reads an anchor (the P @ V bmm of
eager attention, or a fused SDPA op) into MlaPieces; `replace` builds the op's
arguments as views of the graph's own tensors and the weight, and puts the result
where the attention output was. Training graphs are left alone: the joint graph
saves attention's intermediates for the backward.
"""
from __future__ import annotations

import math

import torch
import torch.fx as fx

from ..compat import is_joint_graph, known_equal
from ..lowering.attention_form import choose_attention_form
from ..report import Match, NearMiss, PassRecord
from .attention_forms import SDPA_OPS, AttentionCall, NotAttention, search_eager, search_sdpa
from .canonicalize import slice_assign_to_cat
from .layout import Axis
from .match_utils import NoMatch, aten, prims, require, val
from .mla_pieces import MlaPieces, Piece, mla_pieces
from .graph_edit import call_with_meta as _call, plain_size as _plain, shape_args

prefill_op = torch.ops.mla.prefill_attention.default


def _anchor(node: fx.Node):
    if node.op != "call_function":
        return None
    if node.target is aten.bmm.default:
        return search_eager
    if node.target in SDPA_OPS:
        return search_sdpa
    return None


def _arrange(graph: fx.Graph, piece: Piece) -> fx.Node:
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


def _head_weights(graph: fx.Graph, proj, views: dict) -> fx.Node:
    """W [H*width, R] -> W.view(H, width, R)[:, offset:offset + length] (one view per W)."""
    w = proj.weight
    require(val(w).is_contiguous(), "the up-projection's weight is not contiguous")
    if w not in views:
        views[w] = _call(graph, aten.view.default, (w, [proj.heads, proj.width, val(w).shape[1]]))
    heads = views[w]
    if proj.offset == 0 and known_equal(proj.length, proj.width):
        return heads
    return _call(graph, aten.slice.Tensor, (heads, 1, proj.offset, proj.offset + proj.length))


def _mask(graph: fx.Graph, call: AttentionCall, p: MlaPieces) -> fx.Node | None:
    if call.mask is None:
        return None
    shape = val(call.mask).shape
    nb = len(call.batch)
    lead = nb + 2 - len(shape)
    require(lead >= 0, f"mask of rank {len(shape)} for scores of rank {nb + 2}")
    axes = [None] * lead + [None if known_equal(s, 1) else Axis(i, 1, s, s) for i, s in enumerate(shape)]
    roles = [p.batch_role, p.head_role, nb, nb + 1]
    return _arrange(graph, Piece(call.mask, tuple(None if i is None else axes[i] for i in roles)))


def _result(graph: fx.Graph, out: fx.Node, call: AttentionCall, p: MlaPieces) -> fx.Node:
    """The op's [B, H, Sq, Dv] in the layout of the node it replaces."""
    nb = len(call.batch)
    b, h = val(out).shape[:2]
    axes = [Axis(0, 1, b, b) if i == p.batch_role else Axis(1, 1, h, h) for i in range(nb)]
    axes = [None if known_equal(a.size, 1) else a for a in axes]
    sq, dv = val(out).shape[2:]
    axes += [None if known_equal(sq, 1) else Axis(2, 1, sq, sq), None if known_equal(dv, 1) else Axis(3, 1, dv, dv)]
    x = _arrange(graph, Piece(out, tuple(axes)))
    want = list(val(call.output).shape)
    if len(want) != len(val(x).shape) or not all(known_equal(a, b) for a, b in zip(want, val(x).shape)):
        sizes = shape_args(graph, want, [x, out])  # eager: batch axes merged, as the bmm has them
        if sizes is None and nb > 1:
            sizes = shape_args(graph, [-1] + want[1:], [x, out])
        require(sizes is not None, "no symbolic size for the attention output's shape")
        x = _call(graph, aten.reshape.default, (x, sizes))
    return x


def replace(graph: fx.Graph, call: AttentionCall, p: MlaPieces, kernel: str) -> str:
    s = p.sizes
    form = choose_attention_form(s["Sq"], s["Sk"], s["H"], s["Dn"], s["Dr"], s["Dv"], s["R"])
    with graph.inserting_before(call.output):
        args = [_arrange(graph, piece) for piece in (p.q_nope, p.q_pe, p.keys.latent, p.k_pe)]
        views: dict = {}
        args += [_head_weights(graph, p.keys, views), _head_weights(graph, p.values, views)]
        dtypes = {val(a).dtype for a in args}
        require(len(dtypes) == 1, f"operands mix dtypes {sorted(map(str, dtypes))}")
        dtype, out_dtype = dtypes.pop(), val(call.output).dtype
        require(out_dtype == dtype or (call.upcast and _rounded_back(call.output, dtype)),
                f"attention output is {out_dtype}, operands {dtype}")
        mask = _mask(graph, call, p)
        try:
            out = _call(graph, prefill_op, (*args, call.scale, call.causal, form, kernel, mask,
                                            call.zero_empty_rows))
        except ValueError as e:  # the op's own checks: shapes that do not agree
            raise NoMatch(str(e)) from None
        result = _result(graph, out, call, p)
        if out_dtype != dtype:  # exact: every reader rounds it back to `dtype`
            result = _call(graph, prims.convert_element_type.default, (result, out_dtype))
    call.output.replace_all_uses_with(result)
    return form


_PASS_THROUGH = {aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.permute.default,
                 aten.clone.default, aten.expand.default, aten.transpose.int, aten.unsqueeze.default}


def _rounded_back(node: fx.Node, dtype) -> bool:
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


def _describe(call: AttentionCall, p: MlaPieces, form: str) -> dict:
    s = {k: _plain(v) for k, v in p.sizes.items()}
    qk = s["Dn"] + s["Dr"] if all(isinstance(s[k], int) for k in ("Dn", "Dr")) else None
    rest = call.scale * math.sqrt(qk) if qk else None
    mask = "causal" if call.causal else ("additive" if call.mask is not None else "none")
    return {
        "form": form, "call": call.kind, **s, "dtype": str(val(p.q_nope.node).dtype).replace("torch.", ""),
        "scale": round(call.scale, 8),
        "scale_from": " * ".join(f"{where} {c:.6g}" for where, c in call.scale_factors) or "none",
        "scale_decomposition": f"({s['Dn']}+{s['Dr']})^-0.5 * {rest:.6g}" if rest else "dynamic",
        "mask": mask + (" (safe softmax)" if call.zero_empty_rows else ""),
    }


def fuse_attention(graph: fx.Graph, options, record: PassRecord) -> None:
    if is_joint_graph(graph):
        if any(_anchor(n) for n in graph.nodes):
            record.near_misses.append(NearMiss("attention.mla", "graph", "training (joint forward/backward) graph: "
                                               "attention's intermediates are saved for the backward"))
        return
    slice_assign_to_cat(graph)
    for node in list(graph.nodes):
        search = _anchor(node)
        if search is None:
            continue
        try:
            call = search(node)
            pieces = mla_pieces(call)
            form = replace(graph, call, pieces, options.kernel)
        except NotAttention:  # a bmm with no softmax before it: not a near miss
            continue
        except NoMatch as reason:
            record.near_misses.append(NearMiss("attention.mla", f"%{node.name} = {node.target}", str(reason)))
            continue
        record.matches.append(Match("attention.mla", _describe(call, pieces, form)))
