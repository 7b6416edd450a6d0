"""PyTorch reference implementations: the definition of each op's semantics.

They run for CPU tensors when Triton is not interpreting, and are what the Triton
kernels are tested against.
"""
from __future__ import annotations

from typing import ClassVar

import torch

from ..lowering.cache_layout import slot_offsets
from .backend import KernelBackend


def rope_reference(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    interleaved_in: bool,
    interleaved_out: bool,
) -> torch.Tensor:
    """Rotate pairs (a, b) of the last dim of x, computing in float32.

    Pairs are (x[j], x[j + d/2]) or, with `interleaved_in`, (x[2j], x[2j+1]).
    cos/sin have width d (lo half for `a`'s output, hi half for `b`'s) or d/2
    (one angle per pair). Output: lo = a*c - b*s, hi = b*c + a*s, laid out as
    [lo..., hi...] or, with `interleaved_out`, [lo0, hi0, lo1, hi1, ...].
    """
    d = x.shape[-1]
    half = d // 2
    xf = x.float()
    if interleaved_in:
        a, b = xf[..., 0::2], xf[..., 1::2]
    else:
        a, b = xf[..., :half], xf[..., half:]
    c, s = cos.float(), sin.float()
    if c.shape[-1] == d:
        c_lo, c_hi, s_lo, s_hi = c[..., :half], c[..., half:], s[..., :half], s[..., half:]
    else:
        c_lo = c_hi = c
        s_lo = s_hi = s
    lo = a * c_lo - b * s_lo
    hi = b * c_hi + a * s_hi
    if interleaved_out:
        out = torch.stack((lo, hi), dim=-1).flatten(-2)
    else:
        out = torch.cat((lo, hi), dim=-1)
    return out.to(x.dtype)


def cache_write_reference(cache: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor, block_size: int,
                          tt: int, vec: int) -> None:
    """cache[slot] = row for each token: rows [T, width] into a paged cache
    [num_blocks, block_size * width] laid out by (tt, vec) (`lowering.cache_layout`)."""
    width = rows.shape[-1]
    offsets = slot_offsets(slots.long(), torch.arange(width, device=cache.device), width, block_size, tt, vec)
    cache.view(-1).index_copy_(0, offsets.reshape(-1), rows.reshape(-1).to(cache.dtype))


def rope_cache_write_reference(q_pe, k_pe, latent, cos, sin, slots, cache, block_size, tt, vec,
                               interleaved_in, interleaved_out, rope_first=False) -> torch.Tensor:
    """mla.rope_cache_write's semantics: rotate q_pe and k_pe (`rope_reference`), write
    [latent | rotated k_pe] at `slots` ([rotated k_pe | latent] with `rope_first`: the
    DSA indexer's key, rope dims first); -> the rotated q_pe, a new tensor."""
    k_rot = rope_reference(k_pe, cos, sin, interleaved_in, interleaved_out)
    rows = torch.cat([k_rot, latent] if rope_first else [latent, k_rot], dim=-1)
    cache_write_reference(cache, rows, slots, block_size, tt, vec)
    return rope_reference(q_pe, cos, sin, interleaved_in, interleaved_out)


def empty_rows_mask(mask: torch.Tensor, fill: float, q_len: int, kv_len: int) -> torch.Tensor:
    """The op's `empty_row_fill` rule as one additive fp32 mask, to use with causal=False:
    row i is EMPTY when every visible key j <= i has mask[.., i, j] == fill (compared in
    fp32) or there is none; an empty row attends every key, j <= i at mask[.., i, j]
    and j > i at `fill` (eager's where(causal & key padding, 0, fill) there); any other
    row is causal: mask[.., i, j] for j <= i, -inf above. [.., Sq, Sk] of the mask's
    leading dims. The definition of the rule (the kernel is tested against it)."""
    m = mask.float().expand(*mask.shape[:-2], q_len, kv_len) if mask.dim() >= 2 else \
        mask.float().expand(q_len, kv_len)
    below = torch.ones(q_len, kv_len, dtype=torch.bool, device=mask.device).tril()
    empty = ~((m != fill) & below).any(-1, keepdim=True)
    return torch.where(below, m, torch.where(empty, torch.full_like(m, fill), float("-inf")))


def _softmax(scores: torch.Tensor, causal: bool, mask: torch.Tensor | None,
             zero_empty_rows: bool, sinks: torch.Tensor | None = None) -> torch.Tensor:
    if mask is not None:  # eager attention: additive, upcast to fp32, before the causal fill
        scores = scores + mask.float()
    if causal:  # top-left aligned, as SDPA's is_causal: key j visible to query i iff j <= i
        keep = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if sinks is not None:  # one more logit per head in the denominator, no value (gpt-oss, HY-V4)
        col = sinks.float().view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        return torch.cat([scores, col], dim=-1).softmax(dim=-1)[..., :-1]
    p = torch.softmax(scores, dim=-1)
    if zero_empty_rows:  # SDPA's safe softmax: a row with no visible key gives 0, not NaN
        p = p.masked_fill((scores == float("-inf")).all(-1, keepdim=True), 0.0)
    return p


def prefill_attention_reference(
    q_nope: torch.Tensor,
    q_pe: torch.Tensor,
    c_kv: torch.Tensor,
    k_pe: torch.Tensor,
    w_uk: torch.Tensor,
    w_uv: torch.Tensor,
    scale: float,
    causal: bool,
    form: str,
    mask: torch.Tensor | None = None,
    zero_empty_rows: bool = False,
    sinks: torch.Tensor | None = None,
    empty_row_fill: float | None = None,
) -> torch.Tensor:
    """MLA attention, per head h, computing in float32:

        k_nope = c_kv @ w_uk[h]^T,  v = c_kv @ w_uv[h]^T
        out = softmax((q_nope @ k_nope^T + q_pe @ k_pe^T) * scale + mask) @ v

    `sinks` (optional, [H]): a logit per head that joins every row's softmax
    denominator and has no value (attention sinks); a row with no visible key then
    gives 0. Dr may be 0 (NoPE: no rope term).

    `mask` (optional) is additive and broadcasts to [B, H, Sq, Sk]; with
    `zero_empty_rows` a query row whose scores are all -inf gives 0 (SDPA's safe
    softmax) instead of NaN.
    q_nope [B,H,Sq,Dn], q_pe [B,H,Sq,Dr], c_kv [B,Sk,R], k_pe [B,Sk,Dr] (one head,
    shared), w_uk [H,Dn,R], w_uv [H,Dv,R] -> [B,H,Sq,Dv] in q_nope's dtype. `scale` is
    used as given. "decompressed" builds k_nope and v; "absorbed" moves the weights to
    the query and output side instead (q_nope @ w_uk[h] scores against c_kv itself,
    and the latent output goes through w_uv[h]^T): the same function.

    `empty_row_fill` (with causal and a mask): a row with no visible unmasked key
    attends every key, those above the diagonal at that fill (`empty_rows_mask`).
    """
    if empty_row_fill is not None:  # the rule as one mask over every key
        mask, causal = empty_rows_mask(mask, empty_row_fill, q_nope.shape[2], c_kv.shape[1]), False
    qn, qr, c, kr, wk, wv = (t.float() for t in (q_nope, q_pe, c_kv, k_pe, w_uk, w_uv))
    rope_scores = qr @ kr[:, None].transpose(-1, -2)  # k_pe broadcast over heads
    if form == "decompressed":
        k_nope = torch.einsum("bsr,hdr->bhsd", c, wk)
        v = torch.einsum("bsr,hdr->bhsd", c, wv)
        p = _softmax((qn @ k_nope.transpose(-1, -2) + rope_scores) * scale, causal, mask, zero_empty_rows, sinks)
        out = p @ v
    elif form == "absorbed":
        q_lat = torch.einsum("bhqd,hdr->bhqr", qn, wk)
        p = _softmax((q_lat @ c[:, None].transpose(-1, -2) + rope_scores) * scale, causal, mask, zero_empty_rows, sinks)
        out = torch.einsum("bhqr,hvr->bhqv", p @ c[:, None], wv)
    else:
        raise ValueError(f"form must be 'decompressed' or 'absorbed', got {form!r}")
    return out.to(q_nope.dtype)


def latent_attention_reference(
    q_lat: torch.Tensor,
    q_pe: torch.Tensor,
    c_kv: torch.Tensor,
    k_pe: torch.Tensor,
    scale: float,
    causal: bool,
    mask: torch.Tensor | None = None,
    zero_empty_rows: bool = False,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax((q_lat @ c_kv^T + q_pe @ k_pe^T) * scale + mask) @ c_kv per head, in
    float32: q_lat [B,H,Sq,R], q_pe [B,H,Sq,Dr], c_kv [B,Sk,R], k_pe [B,Sk,Dr] (shared
    by the heads) -> [B,H,Sq,R] in q_lat's dtype. Mask, causal and zero_empty_rows as
    in `prefill_attention_reference`, `sinks` too."""
    ql, qr, c, kr = (t.float() for t in (q_lat, q_pe, c_kv, k_pe))
    scores = (ql @ c[:, None].transpose(-1, -2) + qr @ kr[:, None].transpose(-1, -2)) * scale
    return (_softmax(scores, causal, mask, zero_empty_rows, sinks) @ c[:, None]).to(q_lat.dtype)


def sparse_attention_reference(
    q_nope: torch.Tensor,
    q_pe: torch.Tensor,
    c_kv: torch.Tensor,
    k_pe: torch.Tensor,
    w_uk: torch.Tensor,
    w_uv: torch.Tensor,
    indices: torch.Tensor,
    scale: float,
    mask: torch.Tensor | None = None,
    zero_empty_rows: bool = False,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """MLA attention over the keys `indices` [B, Sq, K] chooses, as eager DSA code
    computes it: the indices scattered into a full [B, Sq, Sk] selection (a duplicate
    selects once), every unchosen key at -inf after the additive base `mask`, then
    `prefill_attention_reference`'s dense attention, `sinks` (optional [H]) included
    (a row with no visible chosen key then gives 0). Indices must lie in [0, Sk)."""
    return prefill_attention_reference(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, scale, False, "decompressed",
                                       selection_mask(indices, mask, c_kv.shape[1]), zero_empty_rows, sinks)


def selection_mask(indices: torch.Tensor, mask: torch.Tensor | None, kv_len) -> torch.Tensor:
    """The additive fp32 mask of the keys `indices` [B, Sq, K] chooses, as eager's
    scatter builds it: the base `mask` at chosen keys (a duplicate chooses once), -inf
    elsewhere; [B, 1 or H, Sq, Sk]. The sparse op's semantics, and its dense route."""
    B, Sq, _ = indices.shape
    chosen = torch.zeros(B, Sq, kv_len, dtype=torch.bool, device=indices.device)
    chosen = chosen.scatter(-1, indices.long(), True)[:, None]  # [B, 1, Sq, Sk]
    base = mask.float() if mask is not None else torch.zeros((), device=indices.device)
    return torch.where(chosen, base, float("-inf"))


class ReferenceBackend(KernelBackend):
    name: ClassVar[str] = "reference"
    cache_layouts: ClassVar[tuple] = ("normal", "shuffle")

    @classmethod
    def supports(cls, device: torch.device) -> bool:
        return True

    @classmethod
    def rope(cls, xs, cos, sin, interleaved_in, interleaved_out, outs) -> None:
        for x, out in zip(xs, outs):
            out.copy_(rope_reference(x, cos, sin, interleaved_in, interleaved_out))

    @classmethod
    def prefill_attention(cls, q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, scale, causal, form,
                          mask, zero_empty_rows, out, sinks=None, empty_row_fill=None) -> None:
        out.copy_(prefill_attention_reference(
            q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, scale, causal, form, mask, zero_empty_rows, sinks,
            empty_row_fill))

    @classmethod
    def latent_attention(cls, q_lat, q_pe, c_kv, k_pe, scale, causal, mask, zero_empty_rows, out,
                         sinks=None) -> None:
        out.copy_(latent_attention_reference(q_lat, q_pe, c_kv, k_pe, scale, causal, mask, zero_empty_rows, sinks))

    @classmethod
    def rope_cache_write(cls, q_pe, k_pe, latent, cos, sin, slots, cache, block_size, tt, vec,
                         interleaved_in, interleaved_out, q_out, rope_first=False) -> None:
        q_out.copy_(rope_cache_write_reference(q_pe, k_pe, latent, cos, sin, slots, cache, block_size, tt, vec,
                                               interleaved_in, interleaved_out, rope_first))

    @classmethod
    def sparse_attention(cls, q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, indices, scale, mask, zero_empty_rows,
                         out, distinct=False, sinks=None) -> None:  # the scatter selects a repeat once either way
        out.copy_(sparse_attention_reference(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, indices, scale, mask,
                                             zero_empty_rows, sinks))
