"""MLA attention in the absorbed form: a split-KV ("flash decoding") Triton kernel
over the latent.

With q_lat = q_nope @ w_uk (per head, [.., R]) the scores are two dots against the
latent itself, and the output stays in latent space:

    s[h, t] = (q_lat[h] . c[t] + q_pe[h] . k_pe[t]) * scale (+ mask)
    o_lat[h] = softmax_t(s[h]) @ c

so every latent row is read once per group of BLOCK_H query rows, whatever the
number of heads, and the per-head K/V are never built. A query row is a (query
position, head) pair: decode has one position, short chunks a few. The keys are
split into `splits` ranges run by separate programs (enough programs to fill the
GPU at batch 1, long context); each writes an fp32 partial output and its
log-sum-exp, and `_combine` merges them.

Keys are read from [B, Sk, R] / [B, Sk, Dr] tensors with any strides. Causal is
top-left (query i sees keys j <= i, as the prefill op), the optional additive mask
broadcasts to [B, H, Sq, Sk]; `zero_empty_rows` gives 0 for a row with no visible
key (SDPA's safe softmax), else NaN as eager softmax.
"""
from __future__ import annotations

import os

import torch

from ..compat import size_hint
from .checks import known_true
from .launch import launch, sinks_pointer

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional on CPU: the reference runs instead
    triton = None

_LOG2E = 1.4426950408889634

if triton is not None:

    @triton.jit
    def _dot(a, b, acc, PREC: tl.constexpr, UPCAST: tl.constexpr):
        if UPCAST:  # interpreter only: its tl.dot multiplies bf16 bit patterns (triton 3.8)
            r = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            r = tl.dot(a, b, acc, input_precision=PREC)
        return r

    @triton.jit
    def _paged_offsets(TABLE, st_b, SEQ, b, t, dims, PAGE: tl.constexpr, W: tl.constexpr,
                       TT: tl.constexpr, VEC: tl.constexpr):
        """Element offsets of (key t, dim) of sequence b in a paged cache: the page from
        the block table, then `cache_layout.element_offset`'s formula inside the page."""
        blk = tl.load(TABLE + b * st_b + t // PAGE, mask=t < tl.load(SEQ + b), other=0).to(tl.int64)
        tok = t % PAGE
        inner = (((tok // TT) * (W // VEC))[:, None] + dims[None, :] // VEC) * (TT * VEC) \
            + (tok % TT)[:, None] * VEC + dims[None, :] % VEC
        off = (blk * (PAGE * W))[:, None] + inner
        # runs of VEC consecutive dims are consecutive elements: let loads vectorise
        return tl.max_contiguous(tl.multiple_of(off, [1, VEC]), [1, VEC])

    @triton.jit
    def _decode_split(
        QL, QR, C, KR, MK, OP, LSE, TABLE, SEQ, SINKS,
        sql_b, sql_h, sql_q, sql_r, sqr_b, sqr_h, sqr_q, sqr_d,
        sc_b, sc_t, sc_r, skr_b, skr_t, skr_d,
        smk_b, smk_h, smk_q, smk_n, st_b,
        H, Sq, Sk, keys_per_split, scale,
        R: tl.constexpr, DR: tl.constexpr, BR: tl.constexpr, BDR: tl.constexpr,
        BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
        CAUSAL: tl.constexpr, MASK: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
        PAGED: tl.constexpr, PAGE: tl.constexpr, TT: tl.constexpr, VEC: tl.constexpr,
        SINK: tl.constexpr,
    ):
        scale = tl.cast(scale, tl.float32)  # may arrive as fp64 (Inductor's launcher types floats so)
        rows = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)  # (query, head) pairs
        b = tl.program_id(1).to(tl.int64)
        split = tl.program_id(2)
        row_ok = rows < Sq * H
        qi = rows // H
        hi = rows % H
        offs_r = tl.arange(0, BR)
        offs_d = tl.arange(0, BDR)
        r_ok = offs_r < R
        d_ok = offs_d < DR
        ql = tl.load(QL + b * sql_b + hi[:, None] * sql_h + qi[:, None] * sql_q + offs_r[None, :] * sql_r,
                     mask=row_ok[:, None] & r_ok[None, :], other=0.0)
        qr = tl.load(QR + b * sqr_b + hi[:, None] * sqr_h + qi[:, None] * sqr_q + offs_d[None, :] * sqr_d,
                     mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_H], tl.float32)
        if SINK:  # split 0 starts from the head's sink logit (a key with no value): the
            # combine then counts it once, in split 0's log-sum-exp
            sink = tl.load(SINKS + hi, mask=row_ok, other=0.0).to(tl.float32)
            m_i = tl.where(split == 0, sink, m_i)
            l_i = tl.where(split == 0, 1.0, l_i)
        acc = tl.zeros([BLOCK_H, BR], tl.float32)
        if PAGED:  # ragged: each sequence has its own length
            Sk = tl.load(SEQ + b)
        lo = split * keys_per_split
        hi_key = tl.minimum(lo + keys_per_split, Sk)
        for n0 in range(lo, hi_key, BLOCK_N):
            t = n0 + tl.arange(0, BLOCK_N)
            t_ok = t < hi_key
            if PAGED:  # C is the cache: latent dims [0, R), rope dims [R, R + DR)
                c = tl.load(C + _paged_offsets(TABLE, st_b, SEQ, b, t, offs_r, PAGE, R + DR, TT, VEC),
                            mask=t_ok[:, None] & r_ok[None, :], other=0.0)
                kr = tl.load(C + _paged_offsets(TABLE, st_b, SEQ, b, t, R + offs_d, PAGE, R + DR, TT, VEC),
                             mask=t_ok[:, None] & d_ok[None, :], other=0.0)
            else:
                c = tl.load(C + b * sc_b + t[:, None].to(tl.int64) * sc_t + offs_r[None, :] * sc_r,
                            mask=t_ok[:, None] & r_ok[None, :], other=0.0)
                kr = tl.load(KR + b * skr_b + t[:, None].to(tl.int64) * skr_t + offs_d[None, :] * skr_d,
                             mask=t_ok[:, None] & d_ok[None, :], other=0.0)
            s = _dot(ql, tl.trans(c), None, PREC, UPCAST)
            if DR > 0:  # NoPE (Dr = 0): no rope dot
                s = _dot(qr, tl.trans(kr), s, PREC, UPCAST)
            s = s * scale
            if MASK:  # additive, in fp32, before any exp: finfo.min stays exact
                mk = tl.load(MK + b * smk_b + hi[:, None] * smk_h + qi[:, None] * smk_q + t[None, :] * smk_n,
                             mask=row_ok[:, None] & t_ok[None, :], other=0.0)
                s = s + mk.to(tl.float32)
            ok = t_ok[None, :] & row_ok[:, None]
            if CAUSAL:
                ok = ok & (t[None, :] <= qi[:, None])
            s = tl.where(ok, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing yet
            p = tl.math.exp2((s - m_sub[:, None]) * 1.4426950408889634)
            alpha = tl.math.exp2((m_i - m_sub) * 1.4426950408889634)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = _dot(p.to(c.dtype), c, acc * alpha[:, None], PREC, UPCAST)
            m_i = m_new
        # partial: normalised output and log-sum-exp (-inf: no visible key in this split)
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        lse = tl.where(l_i > 0, m_i + tl.log(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
        base = ((b * H + hi) * Sq + qi) * tl.num_programs(2) + split  # [B, H, Sq, splits]
        tl.store(OP + base[:, None].to(tl.int64) * R + offs_r[None, :], out,
                 mask=row_ok[:, None] & r_ok[None, :])
        tl.store(LSE + base, lse, mask=row_ok)

    @triton.jit
    def _combine(OP, LSE, O, so_b, so_h, so_q, so_r, H, Sq, SPLITS,
                 R: tl.constexpr, BRC: tl.constexpr, BS: tl.constexpr, SCHUNK: tl.constexpr,
                 ZERO_EMPTY: tl.constexpr):
        # one (b, h, q) row and BRC latent columns per program; splits in chunks of SCHUNK
        row = tl.program_id(0)
        qi = row % Sq
        hi = (row // Sq) % H
        b = row // (Sq * H)
        offs_r = tl.program_id(1) * BRC + tl.arange(0, BRC)
        r_ok = offs_r < R
        offs_all = tl.arange(0, BS)
        lse_all = tl.load(LSE + row * SPLITS + offs_all, mask=offs_all < SPLITS, other=float("-inf"))
        m = tl.max(lse_all, 0)
        m = tl.where(m == float("-inf"), 0.0, m)
        total = tl.sum(tl.where(lse_all > float("-inf"), tl.exp(lse_all - m), 0.0), 0)
        acc = tl.zeros([BRC], tl.float32)
        for s0 in range(0, SPLITS, SCHUNK):
            offs_s = s0 + tl.arange(0, SCHUNK)
            s_ok = offs_s < SPLITS
            lse = tl.load(LSE + row * SPLITS + offs_s, mask=s_ok, other=float("-inf"))
            w = tl.where(lse > float("-inf"), tl.exp(lse - m), 0.0)
            parts = tl.load(OP + (row * SPLITS + offs_s[:, None]).to(tl.int64) * R + offs_r[None, :],
                            mask=s_ok[:, None] & r_ok[None, :], other=0.0)
            acc += tl.sum(parts * w[:, None], 0)
        if ZERO_EMPTY:
            out = tl.where(total > 0, acc / tl.where(total > 0, total, 1.0), 0.0)
        else:  # eager softmax over no visible key: 0/0
            out = acc / total
        tl.store(O + b.to(tl.int64) * so_b + hi * so_h + qi * so_q + offs_r * so_r,
                 out.to(O.dtype.element_ty), mask=r_ok)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def split_rows_per_program(rows: int, on_gpu: bool, batch: int = 1, itemsize: int = 2) -> int:
    """Rows per program of this kernel (asked through TritonBackend.decode_rows_per_program):
    tl.dot needs 16 or more; with more rows, 32, and 64 once the batch alone fills the
    GPU, so each latent block is read once per 32 or 64 heads (H200, H = 128: 64 rows
    with 8 warps took 0.83-0.93x the time of 32 at B >= 16, 1.1-1.2x at B = 1). fp32
    inputs: at most 32 (a [64, 512] fp32 q beside the key tiles overflows shared memory)."""
    if not on_gpu or rows <= 16:
        return 16
    if itemsize > 2:
        return 32
    return 64 if rows >= 64 and batch >= 16 else 32


def key_block(dtype: torch.dtype, on_gpu: bool) -> int:
    """Keys per tile of the decode and sparse kernels: 64 for 16-bit inputs on the GPU,
    16 for fp32 there (64 fp32 keys of a 512-wide latent, double-buffered beside q, need
    more than Hopper's 227 KB of shared memory: found on the H200), 16 under the
    interpreter (every program costs host time)."""
    return 64 if on_gpu and dtype.itemsize <= 2 else 16


def choose_splits(batch: int, row_groups: int, kv_len: int, block_n: int, programs: int) -> int:
    """Key splits so that batch * row_groups * splits programs about fill `programs`
    slots (2 per SM: one per SM made H = 128 at B = 32 1.3x slower on the H200), each
    split keeping at least 2 key blocks: B = 1 at long context gets many, a large batch
    one (fewer fp32 partials to write and merge)."""
    blocks = max(1, triton.cdiv(kv_len, block_n))
    want = max(1, programs // max(1, batch * row_groups))
    return max(1, min(want, blocks // 2 or 1, 128))


def key_count(c_kv, paged):
    """The keys a row may read: c_kv's length, or a paged cache's capacity per sequence
    (block-table width x page; each program reads its own length)."""
    return c_kv.shape[1] if paged is None else paged[1].shape[1] * paged[3]


def key_source(q_lat, c_kv, k_pe, paged) -> tuple:
    """The decode kernels' key arguments, contiguous latent + rope tensors or a paged
    cache: (Sk, c_kv, k_pe, page, tt, vec, seq_lens, block_table, table stride,
    c_kv strides, k_pe strides); Sk of a paged cache is an upper bound (each program
    reads its own length), unused pointers are q_lat."""
    if paged is None:
        return (key_count(c_kv, None), c_kv, k_pe, 1, 1, 1, q_lat, q_lat, 0, c_kv.stride(), k_pe.stride())
    cache, table, seq_lens, page, (tt, vec) = paged
    return (key_count(None, paged), cache, cache, page, tt, vec, seq_lens, table, table.stride(0),
            (0, 0, 0), (0, 0, 0))


def mla_decode_attention(q_lat, q_pe, c_kv, k_pe, scale: float, causal: bool, *,
                         mask: torch.Tensor | None = None, zero_empty_rows: bool = False,
                         paged: tuple | None = None,
                         out: torch.Tensor | None = None, splits: int | None = None,
                         block_h: int | None = None, block_n: int | None = None,
                         num_warps: int | None = None, num_stages: int | None = None,
                         programs_per_sm: int = 2, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """softmax((q_lat c^T + q_pe k_pe^T) * scale + mask) @ c per (query, head) row.

    q_lat [B, H, Sq, R], q_pe [B, H, Sq, Dr], c_kv [B, Sk, R], k_pe [B, Sk, Dr] (one dtype,
    any strides), mask broadcasting to [B, H, Sq, Sk], optional sinks [H] (a logit per head
    in every row's softmax denominator) -> o_lat [B, H, Sq, R] in q's dtype (or written
    into `out`). `splits` / block sizes override the defaults (tests).

    `paged=(cache, block_table, seq_lens, page, (tt, vec))` reads the keys from a paged
    cache instead (c_kv and k_pe are then None): cache [num_blocks, page * (R + Dr)],
    sequence b's key t in block block_table[b, t // page], laid out inside the page by
    `lowering.cache_layout` (tt, vec); seq_lens [B] int32 (ragged).
    """
    B, H, Sq, R = q_lat.shape
    Dr = q_pe.shape[-1]
    Sk, c_kv, k_pe, page, tt, vec, seq_arg, table_arg, st_b, c_strides, kr_strides = key_source(
        q_lat, c_kv, k_pe, paged)
    if out is None:
        out = torch.empty(B, H, Sq, R, device=q_lat.device, dtype=q_lat.dtype)
    if known_true(out.numel() == 0):
        return out
    if known_true(Sk == 0):
        return out.zero_()
    on_gpu = q_lat.device.type == "cuda" and not _interpreting()
    bn = block_n or key_block(q_lat.dtype, on_gpu)  # H200 sweep (benchmarks/sweep_decode.py): 64 keys
    # Tiles and splits only change speed, never results: in a dynamic graph they are
    # chosen from the example sizes (size_hint) without a guard; the keys per split
    # stay symbolic, and a split past the keys writes an empty partial.
    if block_h is None:  # TritonBackend.decode_rows_per_program's answer for this kernel
        block_h = split_rows_per_program(size_hint(Sq * H), on_gpu, size_hint(B), q_lat.element_size())
    groups = triton.cdiv(Sq * H, block_h)
    if splits is None:
        sms = torch.cuda.get_device_properties(q_lat.device).multi_processor_count if on_gpu else 4
        splits = choose_splits(size_hint(B), size_hint(groups), size_hint(Sk), bn, programs_per_sm * sms)
    keys_per_split = triton.cdiv(triton.cdiv(Sk, splits), bn) * bn
    if isinstance(Sk, int):
        splits = triton.cdiv(Sk, keys_per_split)
    partial = torch.empty(B * H * Sq * splits, R, device=q_lat.device, dtype=torch.float32)
    lse = torch.empty(B * H * Sq * splits, device=q_lat.device, dtype=torch.float32)
    mk = mask.expand(B, H, Sq, Sk) if mask is not None else None
    mk_strides = mk.stride() if mk is not None else (0, 0, 0, 0)
    br, bdr = max(16, triton.next_power_of_2(R)), max(16, triton.next_power_of_2(Dr))
    launch(
        _decode_split, (groups, B, splits),
        q_lat, q_pe, c_kv, k_pe, mk if mk is not None else q_lat, partial, lse, table_arg, seq_arg,
        sinks_pointer(sinks, q_lat), *q_lat.stride(), *q_pe.stride(), *c_strides, *kr_strides, *mk_strides, st_b,
        H, Sq, Sk, keys_per_split, float(scale),
        R=R, DR=Dr, BR=br, BDR=bdr, BLOCK_H=block_h, BLOCK_N=bn,
        CAUSAL=bool(causal), MASK=mask is not None,
        PREC="ieee" if q_lat.dtype == torch.float32 else "tf32",
        UPCAST=_interpreting() and q_lat.dtype == torch.bfloat16,
        PAGED=paged is not None, PAGE=page, TT=tt, VEC=vec, SINK=sinks is not None,
        # H200: 3 stages and 8 warps won at B=1 L=32768 (25 vs 28 us) but lost at B >= 32
        # (up to 1.2x slower at B=64 L=32768), so 4 warps, 2 stages; 64-row programs want 8
        # warps (the fp32 [64, 512] accumulator)
        num_warps=num_warps or (8 if block_h >= 64 else 4), num_stages=num_stages or 2,
    )
    brc = min(br, 128)
    launch(
        _combine, (B * H * Sq, triton.cdiv(R, brc)), partial, lse, out, *out.stride(), H, Sq, splits,
        R=R, BRC=brc, BS=max(2, triton.next_power_of_2(splits)), SCHUNK=16,
        ZERO_EMPTY=bool(zero_empty_rows),
    )
    return out


__all__ = ["mla_decode_attention", "choose_splits", "split_rows_per_program", "key_block"]
