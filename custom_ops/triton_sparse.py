"""DSA sparse attention over the latent: a split-K Triton kernel that gathers the
latent rows its query's top-k indices name.

In the absorbed form (q_lat = q_nope @ w_uk per head) every head of one query
position scores the same chosen keys, so a program takes BLOCK_H heads of one
(batch, position) row and walks that row's index list:

    s[h, j] = (q_lat[h] . c[idx_j] + q_pe[h] . k_pe[idx_j]) * scale + mask[h, idx_j]
    o_lat[h] = softmax_j(s[h]) @ c[idx_j]

Only the K chosen latent rows (plus the K indices) are read, once per group of
BLOCK_H heads. The index list is sorted first (`torch.sort`, by the caller), so a
duplicate is the same value as its predecessor and is skipped: eager's scatter
selects a key once however often it is named. Indices known distinct (`distinct`:
topk's) are read as they are: no sort (~28 us at batch 1 on an H200), no check. The
list is split into `splits` ranges run by separate programs; each writes an fp32 partial and its log-sum-exp in
`triton_decode`'s layout, and that module's `_combine` merges them (a row with no
visible key: NaN, or 0 with `zero_empty_rows`). Attention sinks (a logit per head, no
value) start split 0's running max and sum, as in triton_decode's split kernel: the
combine counts them once, and a row with no visible key then gives 0.

The rows come from contiguous [B, Sk, R] / [B, Sk, Dr] tensors, or (`paged=`, for
`mla.paged_sparse_decode`) from a paged latent cache: index t of sequence b is token t
of its block-table row, addressed by `triton_decode._paged_offsets`, the paged decode
kernel's one copy of `cache_layout.element_offset` (NORMAL and SHUFFLE alike). There
an index of -1 is padding: sorted first, it equals the -1 that stands before the list
and is skipped as a duplicate (any other negative, possible only where the op's checks
are off, is dropped by `t >= 0`).
"""
from __future__ import annotations

import os

import torch

from ..compat import size_hint
from .checks import known_true
from .launch import launch, sinks_pointer
from .triton_decode import _combine, _dot, _paged_offsets, choose_splits, key_block, key_source, split_rows_per_program

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional on CPU: the reference runs instead
    triton = None

if triton is not None:

    @triton.jit
    def _sparse_split(
        QL, QR, C, KR, IDX, MK, OP, LSE, TABLE, SEQ, SINKS,
        sql_b, sql_h, sql_q, sql_r, sqr_b, sqr_h, sqr_q, sqr_d,
        sc_b, sc_t, sc_r, skr_b, skr_t, skr_d, si_b, si_q, si_k,
        smk_b, smk_h, smk_q, smk_n, st_b,
        H, Sq, K, idx_per_split, scale,
        R: tl.constexpr, DR: tl.constexpr, BR: tl.constexpr, BDR: tl.constexpr,
        BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
        MASK: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, DISTINCT: tl.constexpr,
        PAGED: tl.constexpr, PAGE: tl.constexpr, TT: tl.constexpr, VEC: tl.constexpr,
        SINK: tl.constexpr,
    ):
        scale = tl.cast(scale, tl.float32)  # may arrive as fp64 (Inductor's launcher types floats so)
        hi = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)  # heads of one query row
        row = tl.program_id(1)  # (batch, position)
        b = (row // Sq).to(tl.int64)
        qi = row % Sq
        split = tl.program_id(2)
        h_ok = hi < H
        offs_r = tl.arange(0, BR)
        offs_d = tl.arange(0, BDR)
        r_ok = offs_r < R
        d_ok = offs_d < DR
        ql = tl.load(QL + b * sql_b + hi[:, None] * sql_h + qi * sql_q + offs_r[None, :] * sql_r,
                     mask=h_ok[:, None] & r_ok[None, :], other=0.0)
        qr = tl.load(QR + b * sqr_b + hi[:, None] * sqr_h + qi * sqr_q + offs_d[None, :] * sqr_d,
                     mask=h_ok[:, None] & d_ok[None, :], other=0.0)
        m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_H], tl.float32)
        if SINK:  # split 0 starts from the head's sink logit (a key with no value): the
            # combine then counts it once, in split 0's log-sum-exp (as triton_decode's)
            sink = tl.load(SINKS + hi, mask=h_ok, other=0.0).to(tl.float32)
            m_i = tl.where(split == 0, sink, m_i)
            l_i = tl.where(split == 0, 1.0, l_i)
        acc = tl.zeros([BLOCK_H, BR], tl.float32)
        idx_row = IDX + b * si_b + qi * si_q
        lo = split * idx_per_split
        hi_pos = tl.minimum(lo + idx_per_split, K)
        n_keys = K  # unused unless PAGED
        if PAGED:  # ragged: each sequence has its own length
            n_keys = tl.load(SEQ + b)
        for n0 in range(lo, hi_pos, BLOCK_N):
            j = n0 + tl.arange(0, BLOCK_N)
            j_ok = j < hi_pos
            t = tl.load(idx_row + j * si_k, mask=j_ok, other=0).to(tl.int64)
            if DISTINCT:
                t_ok = j_ok
            else:  # sorted: a repeat of its predecessor is a duplicate
                prev = tl.load(idx_row + (j - 1) * si_k, mask=j_ok & (j > 0), other=-1).to(tl.int64)
                t_ok = j_ok & (t != prev)
            if PAGED:  # C is the cache: latent dims [0, R), rope dims [R, R + DR). Negative
                # or past the length only where the op's checks are off (CUDA graph
                # capture) or as -1 padding: skipped, never read outside the sequence's pages
                t_ok = t_ok & (t >= 0) & (t < n_keys)
                # a key inside the sequence for the address (the load is masked anyway); not
                # derived from t_ok: that broke Triton 3.6's sm_90 layout pass (16-bit dots)
                t_in = tl.minimum(tl.maximum(t, 0), tl.maximum(n_keys - 1, 0))
                c = tl.load(C + _paged_offsets(TABLE, st_b, SEQ, b, t_in, offs_r, PAGE, R + DR, TT, VEC),
                            mask=t_ok[:, None] & r_ok[None, :], other=0.0)
                kr = tl.load(C + _paged_offsets(TABLE, st_b, SEQ, b, t_in, R + offs_d, PAGE, R + DR, TT, VEC),
                             mask=t_ok[:, None] & d_ok[None, :], other=0.0)
            else:
                c = tl.load(C + b * sc_b + t[:, None] * sc_t + offs_r[None, :] * sc_r,
                            mask=t_ok[:, None] & r_ok[None, :], other=0.0)
                kr = tl.load(KR + b * skr_b + t[:, None] * skr_t + offs_d[None, :] * skr_d,
                             mask=t_ok[:, None] & d_ok[None, :], other=0.0)
            s = _dot(ql, tl.trans(c), None, PREC, UPCAST)
            s = _dot(qr, tl.trans(kr), s, PREC, UPCAST) * scale
            if MASK:  # the base mask at the chosen keys: additive, in fp32
                mk = tl.load(MK + b * smk_b + hi[:, None] * smk_h + qi * smk_q + t[None, :] * smk_n,
                             mask=h_ok[:, None] & t_ok[None, :], other=0.0)
                s = s + mk.to(tl.float32)
            s = tl.where(t_ok[None, :] & h_ok[:, None], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing yet
            p = tl.math.exp2((s - m_sub[:, None]) * 1.4426950408889634)
            alpha = tl.math.exp2((m_i - m_sub) * 1.4426950408889634)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = _dot(p.to(c.dtype), c, acc * alpha[:, None], PREC, UPCAST)
            m_i = m_new
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        lse = tl.where(l_i > 0, m_i + tl.log(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
        base = ((b * H + hi) * Sq + qi) * tl.num_programs(2) + split  # [B, H, Sq, splits]
        tl.store(OP + base[:, None].to(tl.int64) * R + offs_r[None, :], out, mask=h_ok[:, None] & r_ok[None, :])
        tl.store(LSE + base, lse, mask=h_ok)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def mla_sparse_attention(q_lat, q_pe, c_kv, k_pe, indices, scale: float, *, mask=None,
                         zero_empty_rows: bool = False, out=None, splits: int | None = None,
                         block_h: int | None = None, block_n: int | None = None,
                         distinct: bool = False, paged: tuple | None = None,
                         sinks: torch.Tensor | None = None) -> torch.Tensor:
    """softmax over the chosen keys of (q_lat c^T + q_pe k_pe^T) * scale + mask, @ c.
    `sinks` [H] (optional): a logit per head in every row's denominator, with no value
    (a row with no visible chosen key then gives 0).

    q_lat [B, H, Sq, R], q_pe [B, H, Sq, Dr], c_kv [B, Sk, R], k_pe [B, Sk, Dr] (one
    dtype, any strides), indices [B, Sq, K] in [0, Sk) (any order, duplicates allowed
    unless `distinct`),
    mask broadcasting to [B, H, Sq, Sk] -> o_lat [B, H, Sq, R] (or into `out`).

    `paged=(cache, block_table, seq_lens, page, (tt, vec))` reads the rows from a paged
    cache instead (c_kv, k_pe and mask None; seq_lens [B] int32, the table's rows with
    unit stride, as `triton_decode.mla_decode_attention` takes them): indices in
    [0, seq_lens[b]), or -1 for padding.
    """
    B, H, Sq, R = q_lat.shape
    Dr = q_pe.shape[-1]
    K = indices.shape[-1]
    if out is None:
        out = torch.empty(B, H, Sq, R, device=q_lat.device, dtype=q_lat.dtype)
    if known_true(out.numel() == 0):
        return out
    idx = indices if distinct else torch.sort(indices, dim=-1).values  # duplicates adjacent
    on_gpu = q_lat.device.type == "cuda" and not _interpreting()
    bn = block_n or key_block(q_lat.dtype, on_gpu)
    if block_h is None:  # heads only share one index list: the decode kernel's rule over H rows
        block_h = split_rows_per_program(size_hint(H), on_gpu, size_hint(B * Sq), q_lat.element_size())
    groups = triton.cdiv(H, block_h)
    if splits is None:
        sms = torch.cuda.get_device_properties(q_lat.device).multi_processor_count if on_gpu else 4
        splits = choose_splits(size_hint(B * Sq), size_hint(groups), size_hint(K), bn, 2 * sms)
    per_split = triton.cdiv(triton.cdiv(K, splits), bn) * bn  # symbolic in a dynamic graph
    if isinstance(K, int):
        splits = triton.cdiv(K, per_split) if K else 1
    partial = torch.empty(B * H * Sq * splits, R, device=q_lat.device, dtype=torch.float32)
    lse = torch.empty(B * H * Sq * splits, device=q_lat.device, dtype=torch.float32)
    if paged is not None and mask is not None:
        raise ValueError("mla_sparse_attention: a paged cache takes no mask")
    Sk, c_kv, k_pe, page, tt, vec, seq_arg, table_arg, st_b, c_strides, kr_strides = key_source(
        q_lat, c_kv, k_pe, paged)
    mk = mask.expand(B, H, Sq, Sk) if mask is not None else None
    br, bdr = max(16, triton.next_power_of_2(R)), max(16, triton.next_power_of_2(Dr))
    launch(
        _sparse_split, (groups, B * Sq, splits),
        q_lat, q_pe, c_kv, k_pe, idx, mk if mk is not None else q_lat, partial, lse, table_arg, seq_arg,
        sinks_pointer(sinks, q_lat), *q_lat.stride(), *q_pe.stride(), *c_strides, *kr_strides, *idx.stride(),
        *(mk.stride() if mk is not None else (0, 0, 0, 0)), st_b,
        H, Sq, K, per_split, float(scale),
        R=R, DR=Dr, BR=br, BDR=bdr, BLOCK_H=block_h, BLOCK_N=bn, MASK=mask is not None,
        PAGED=paged is not None, PAGE=page, TT=tt, VEC=vec, SINK=sinks is not None,
        PREC="ieee" if q_lat.dtype == torch.float32 else "tf32",
        UPCAST=_interpreting() and q_lat.dtype == torch.bfloat16, DISTINCT=bool(distinct),
        num_warps=8 if block_h >= 64 else 4, num_stages=2,
    )
    brc = min(br, 128)
    launch(
        _combine, (B * H * Sq, triton.cdiv(R, brc)), partial, lse, out, *out.stride(), H, Sq, splits,
        R=R, BRC=brc, BS=max(2, triton.next_power_of_2(splits)), SCHUNK=16,
        ZERO_EMPTY=bool(zero_empty_rows),
    )
    return out


__all__ = ["mla_sparse_attention"]
