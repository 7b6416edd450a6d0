"""MLA attention fusion: every attention proven to be MLA (passes/mla_pieces.py) over
the latent becomes one `torch.ops.mla.prefill_attention`, whose form (decompressed
or absorbed) lowering picks from the shapes; attention the model already wrote over
the latent (scores in two terms) becomes `mla.latent_attention`
(passes/latent_attention.py).

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
from .canonicalize import drop_empty_cat_parts, read_back_written, slice_assign_to_cat
from . import causal_mask, latent_attention, sparse_attention
from .arrange import arrange, emit_attention
from .match_utils import NoMatch, aten, require, val
from .mla_pieces import MlaPieces, mla_pieces
from .softmax_reach import softmax_reach_reason
from .graph_edit import call_with_meta as _call, plain_size as _plain

prefill_op = torch.ops.mla.prefill_attention.default


def _anchor(node: fx.Node):
    if node.op != "call_function":
        return None
    if node.target is aten.bmm.default:
        return search_eager
    if node.target in SDPA_OPS:
        return search_sdpa
    return None


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


def replace(graph: fx.Graph, call: AttentionCall, p: MlaPieces, kernel: str) -> str:
    s = p.sizes
    form = choose_attention_form(s["Sq"], s["Sk"], s["H"], s["Dn"], s["Dr"], s["Dv"], s["R"])
    def operands() -> list:
        views: dict = {}  # one W.view(H, width, R) per weight
        q_nope, c_kv = arrange(graph, p.q_nope), arrange(graph, p.keys.latent)
        if p.q_pe is None:  # NoPE: zero-width rope parts, views of q and the latent
            q_pe, k_pe = (_call(graph, aten.slice.Tensor, (t, -1, 0, 0)) for t in (q_nope, c_kv))
        else:
            q_pe, k_pe = arrange(graph, p.q_pe), arrange(graph, p.k_pe)
        return [q_nope, q_pe, c_kv, k_pe, _head_weights(graph, p.keys, views), _head_weights(graph, p.values, views)]

    emit_attention(graph, call, p, prefill_op, operands, (call.scale, call.causal, form, kernel))
    return form


def _mask_notes(call: AttentionCall) -> str:
    notes = ["key padding, finite fill: empty rows attend all keys"] * (call.empty_row_fill is not None)
    notes += ["safe softmax"] * call.zero_empty_rows
    return f" ({', '.join(notes)})" if notes else ""


def _describe(call: AttentionCall, p: MlaPieces, form: str, mask_proof: str | None = None) -> dict:
    s = {k: _plain(v) for k, v in p.sizes.items()}
    qk = s["Dn"] + s["Dr"] if all(isinstance(s[k], int) for k in ("Dn", "Dr")) else None
    rest = call.scale * math.sqrt(qk) if qk else None
    # "additive+causal" only from a mask proven causal (SDPA takes one or the other)
    mask = "+".join(["additive"] * (call.mask is not None) + ["causal"] * call.causal) or "none"
    return {
        "form": form, "call": call.kind, **s, "dtype": str(val(p.q_nope.node).dtype).replace("torch.", ""),
        "scale": round(call.scale, 8),
        "scale_from": " * ".join(f"{where} {c:.6g}" for where, c in call.scale_factors) or "none",
        "scale_decomposition": f"({s['Dn']}+{s['Dr']})^-0.5 * {rest:.6g}" if rest else "dynamic",
        "mask": mask + _mask_notes(call),
        **({"sinks": "per head"} if call.sinks is not None else {}),
        **({"mask_proof": mask_proof} if mask_proof else {}),
    }


def _fuse_mla(graph: fx.Graph, call: AttentionCall, pieces: MlaPieces, kernel: str) -> Match:
    """A DSA top-k mask proven: the sparse op; else the dense op, causal where the mask
    is proven causal. The report says why a top-k mask stayed dense."""
    dense_why = None
    try:
        dsa = sparse_attention.search(call, pieces)
    except sparse_attention.NotDsa:
        dsa = None
    except NoMatch as why:
        dsa, dense_why = None, f"left dense: {why}"
    # sinks pass through: the sparse op takes them (passes/arrange.py arrange_sinks)
    unsupported = ("scores in [B, S, H, T] order" if call.roles
                   else "no RoPE part (NoPE)" if pieces.q_pe is None else None)
    if dsa is not None and unsupported:  # the sparse op has none of these
        dsa, dense_why = None, f"left dense: {unsupported} (the sparse op does not take them)"
    if dsa is not None:
        try:  # nodes built before a refusal are dead: the pass manager drops them
            sparse_attention.replace(graph, call, pieces, dsa, kernel, _head_weights)
        except NoMatch as why:
            dsa, dense_why = None, f"left dense: {why}"
    if dsa is not None:
        params = _describe(call, pieces, "sparse")
        params.update(K=_plain(val(dsa.indices).shape[-1]), mask=("+".join(["additive"] * (dsa.base is not None))
                      or "none") + "+top-k" + (" (safe softmax)" if call.zero_empty_rows else ""),
                      sparse_proof=dsa.proof,
                      indices="distinct (top-k over the keys)" if dsa.distinct else "may repeat (the kernel sorts them)")
        return Match("attention.mla", params)
    # a mask built causal: causal=True (its proof reads the scores' axes in order)
    call, proof = (call, None) if call.roles else causal_mask.prove(
        graph, call, (pieces.sizes["Sq"], pieces.sizes["Sk"]))
    params = _describe(call, pieces, replace(graph, call, pieces, kernel), proof)
    if dense_why:
        params["sparse"] = dense_why
    return Match("attention.mla", params)


def _looks_like_attention(node: fx.Node) -> bool:
    """An SDPA op, or a bmm that a softmax reaches (passes/softmax_reach.py)."""
    search = _anchor(node)
    return search is search_sdpa or (search is search_eager and softmax_reach_reason(node, "") is not None)


def fuse_attention(graph: fx.Graph, options, record: PassRecord) -> None:
    if is_joint_graph(graph):
        if any(_looks_like_attention(n) for n in graph.nodes):
            record.near_misses.append(NearMiss("attention.mla", "graph", "training (joint forward/backward) graph: "
                                               "attention's intermediates are saved for the backward"))
        return
    slice_assign_to_cat(graph)
    drop_empty_cat_parts(graph)
    read_back_written(graph)
    for node in list(graph.nodes):
        search = _anchor(node)
        if search is None:
            continue
        try:
            call = search(node)
            if call.qk2 is not None:  # scores in two terms: attention over the latent itself
                pieces = latent_attention.search(call)
                latent_attention.replace(graph, call, pieces, options.kernel)
                match = Match("attention.mla", latent_attention.describe(call, pieces))
            else:
                pieces = mla_pieces(call)
                match = _fuse_mla(graph, call, pieces, options.kernel)
        except NotAttention as not_read:
            # the reader found no attention here; a softmax reaching the bmm anyway is
            # attention it cannot read: reported, never left alone silently
            reason = softmax_reach_reason(node, str(not_read))
            if reason is not None:
                record.near_misses.append(NearMiss("attention.mla", f"%{node.name} = {node.target}", reason))
            continue
        except NoMatch as reason:
            record.near_misses.append(NearMiss("attention.mla", f"%{node.name} = {node.target}", str(reason)))
            continue
        record.matches.append(match)
