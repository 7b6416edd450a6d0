"""Attention written over the latent itself (weights already absorbed by the model,
as DeepSeek's inference code does in "absorb" mode) becomes one
`torch.ops.mla.latent_attention`:

    scores = (q_lat @ c^T + q_pe @ k_pe^T) * scale (+ mask)     two bmms, one sum
    o_lat  = softmax(scores) @ c                                 the value IS the latent

Search and replacement side by side. `search` proves, on an AttentionCall whose
scores are a sum of two q k^T terms: one term's key is the value itself (same
tensor, same axes): that term is the latent one, the other the rope one; both keys
are constant over every batch axis of the scores but the one the latent indexes (the
batch), so the heads, and any query positions merged with them, are rows sharing
keys. The model's q_nope @ W_uk before and o_lat @ W_uv after stay its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.fx as fx

from ..compat import known_equal
from .arrange import arrange, emit_attention
from .attention_forms import AttentionCall, Operand
from .graph_edit import plain_size as _plain
from .match_utils import aten, is_op, require, val
from .mla_pieces import Piece, _pick

latent_op = torch.ops.mla.latent_attention.default


@dataclass(frozen=True)
class LatentPieces:
    q_lat: Piece                 # (b, h, q, r)
    q_pe: Piece                  # (b, h, q, d)
    c_kv: Piece                  # (b, k, r)
    k_pe: Piece                  # (b, k, d)
    batch_role: Optional[int]    # the batch role of the scores the keys vary over (None: B = 1)
    head_role: Optional[int]     # the other batch role: rows sharing the keys (None: one)
    sizes: dict                  # B, rows ("S x H" as the scores order their row axes), Sk, R, Dr


# pure ops a value may be read through twice (Dynamo traces `cache[:b, :n]` once per use)
_PURE = {aten.slice.Tensor, aten.select.int, aten.alias.default, aten.view.default, aten.permute.default,
         aten.unsqueeze.default, aten.expand.default}


def _same_value(a, b, depth: int = 8) -> bool:
    """a and b are one value: one node, or the same pure op on the same values."""
    if a is b:
        return True
    if not (is_op(a, *_PURE) and is_op(b, *_PURE)) or a.target is not b.target or depth == 0:
        return False
    return not a.kwargs and not b.kwargs and _same_arg(a.args, b.args, depth - 1)


def _same_arg(x, y, depth: int) -> bool:
    if isinstance(x, fx.Node) or isinstance(y, fx.Node):
        return _same_value(x, y, depth)
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(_same_arg(i, j, depth) for i, j in zip(x, y))
    if isinstance(x, torch.SymInt) or isinstance(y, torch.SymInt):
        return known_equal(x, y)  # no guard
    return type(x) is type(y) and x == y


def _same_read(k: Operand, v: Operand) -> bool:
    """k (roles L..., k, d) and v (roles L..., k, v) read one tensor the same way."""
    if not _same_value(k.base, v.base) or k.factor != 1.0 or len(k.axes) != len(v.axes):
        return False
    return all((x is None and y is None) or (
        x is not None and y is not None and x.base_axis == y.base_axis and known_equal(x.inner, y.inner)
        and known_equal(x.size, y.size)) for x, y in zip(k.axes, v.axes))


def search(call: AttentionCall) -> LatentPieces:
    nb = len(call.batch)
    require(call.qk2 is not None, "scores are one q k^T term")
    require(1 <= nb <= 2, f"scores have {nb} batch axes (expected batch and rows)")
    terms = [(call.q, call.k), call.qk2]
    latent = [i for i, (_, k) in enumerate(terms) if _same_read(k, call.v)]
    require(latent, "two score terms, but neither term's key is the value: not attention over the latent "
                    "(a decompressed two-term form is not matched)")
    (q_lat, c), (q_pe, k_pe) = terms[latent[0]], terms[1 - latent[0]]
    varying = [i for i in range(nb) if c.axes[i] is not None]
    require(len(varying) <= 1, "the latent varies over two batch axes of the scores")
    batch_role = varying[0] if varying else None
    rows = [i for i in range(nb) if i != batch_role]
    require(all(k_pe.axes[i] is None for i in rows), "the rope key varies over the rows (heads) that share the latent")
    if batch_role is None and len(rows) == 2:  # B = 1: a size-1 row axis stands for it
        ones = [i for i in rows if known_equal(call.batch[i], 1)]
        require(ones, "three row axes share one latent")
        batch_role = ones[0]
        rows.remove(batch_role)
    head_role = rows[0] if rows else None
    roles4 = [batch_role, head_role, nb, nb + 1]
    size = lambda a: 1 if a is None else a.size  # noqa: E731
    row_sizes = [call.batch[i] for i in rows] + [size(q_lat.axes[nb])]  # in the scores' order
    sizes = dict(B=call.batch[batch_role] if batch_role is not None else 1,
                 rows="x".join(str(_plain(r)) for r in row_sizes),
                 Sk=size(c.axes[nb]), R=size(c.axes[nb + 1]), Dr=size(k_pe.axes[nb + 1]))
    return LatentPieces(Piece(q_lat.base, _pick(q_lat.axes, roles4)), Piece(q_pe.base, _pick(q_pe.axes, roles4)),
                        Piece(c.base, _pick(c.axes, [batch_role, nb, nb + 1])),
                        Piece(k_pe.base, _pick(k_pe.axes, [batch_role, nb, nb + 1])),
                        batch_role, head_role, sizes)


def replace(graph: fx.Graph, call: AttentionCall, p: LatentPieces, kernel: str) -> None:
    emit_attention(graph, call, p, latent_op,
                   lambda: [arrange(graph, piece) for piece in (p.q_lat, p.q_pe, p.c_kv, p.k_pe)],
                   (call.scale, call.causal, kernel))


def describe(call: AttentionCall, p: LatentPieces) -> dict:
    """The report's fields. `rows`: the sizes of the scores' row axes (heads and query
    positions, in the model's order: which is which does not change the result, no
    causal flag is ever inferred for eager code)."""
    mask = "causal" if call.causal else ("additive" if call.mask is not None else "none")
    return {"form": "latent", "call": call.kind, **{k: _plain(v) for k, v in p.sizes.items()},
            "dtype": str(val(p.q_lat.node).dtype).replace("torch.", ""), "scale": round(call.scale, 8),
            "scale_from": " * ".join(f"{where} {c:.6g}" for where, c in call.scale_factors) or "none",
            "mask": mask + (" (safe softmax)" if call.zero_empty_rows else "")}
