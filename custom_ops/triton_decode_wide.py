"""Absorbed MLA decode for many query rows per program ("wide"): each latent tile is
read once for 64 (query, head) rows, or 16 / 32 below 64 rows.

Same math and contract as `triton_decode.mla_decode_attention` (which may route here):

    s[h, t] = (q_lat[h] . c[t] + q_pe[h] . k_pe[t]) * scale (+ mask)
    o_lat[h] = softmax_t(s[h]) @ c

Program shape (H200 measurements in benchmarks/RESULTS.md, issue 12):
- `wide_rows_per_program`: 64 rows and 8 warps from 64 rows up (Triton 3.6 puts the
  [64, 512] fp32 accumulator of `p @ c` on two warpgroups owning 256 output columns
  each: wgmma, warpsPerCTA [4, 2]; q stays in shared memory for the score wgmma;
  ~216 KB of shared memory, 255 registers, no spills), else 16 or 32 rows and 4 warps.
  Known limit: Triton gives the score dot warpsPerCTA [8, 1] because it feeds a second
  dot, so with 64 rows both warpgroups compute the same [64, 64] scores (1.5x the
  tensor work of the math), and its pipeliner issues the next tile's copies after
  the score dot and softmax, so copies and scores barely overlap. Splitting the
  score work and overlapping copies need explicit warpgroup / TMA control (Gluon).
- The latent columns as NSPLIT column blocks (two [64, 256] dots for NSPLIT = 2),
  key tiles pipelined with cp.async (num_stages = 2), one score scale per tile.
- Splits from B, the row groups, L and the SM count (`choose_wide_splits`: whole waves
  of program slots, one per SM for 64-row programs and two for smaller ones, each
  split >= 4 key blocks); with one split the program normalises and writes `out`
  directly (no fp32 partials, no combine launch). Partials keep each split's running
  max and sum apart (not m + log l), so a finfo.min mask stays exact. That is the
  contiguous form's schedule; a paged (ragged) batch of 2 or more runs the balanced one
  by default (decode_schedule.py: work items of about equal key counts, whatever the
  request, read from a table a metadata program writes on the device; a request with
  one item writes `out` directly), except under the seesaw program.
- The combine (decode_combine.py) merges the partials.

Supported: everything `mla_decode_attention` takes (causal, additive mask, zero_empty_rows, sinks,
any strides, `out`, the paged cache in NORMAL and SHUFFLE layouts; NORMAL pages holding
whole key tiles read one page number per tile), for R <= 512 and Dr <= 64 (`supports`),
fp32 / fp16 / bf16. The launcher uses only torch ops and kernel launches (through
`launch.launch`, so Inductor can launch them: passes/inline_launches.py); tiles and
splits are chosen from size hints, so a dynamic graph gets no guard.
"""
from __future__ import annotations

import os

import torch

from ..compat import inductor_cuda_graphs, size_hint
from . import gluon_decode, gluon_decode_seesaw
from .gluon_programs import choose_program, program_name
from .checks import known_true
from .decode_combine import launch_combine
from .decode_schedule import HEADER_INTS, ITEM_INTS, balanced_schedule
from .gluon_op import call_wide_decode_gluon
from .gluon_seesaw_copy import tma_descriptors, tma_plan
from .launch import is_traced, launch, sinks_pointer
from .triton_decode import key_source

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional on CPU
    triton = None

# programs of one split (B x row groups) from which the seesaw runs the balanced schedule
# by default (H200, session 11: below it the old schedule was faster on ragged batches)
SEESAW_BALANCED_FROM = 64

if triton is not None:
    _HEADER = tl.constexpr(HEADER_INTS)
    _ITEM = tl.constexpr(ITEM_INTS)

    @triton.jit
    def _wdot(a, b, acc, PREC: tl.constexpr, UPCAST: tl.constexpr):
        if UPCAST:  # interpreter: its tl.dot on bf16 multiplies bit patterns (triton 3.8)
            r = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            r = tl.dot(a, b, acc, input_precision=PREC)
        return r

    @triton.jit
    def _wpage_offsets(TABLE, st_b, b, t, t_ok, dims, PAGE: tl.constexpr, W: tl.constexpr,
                       TT: tl.constexpr, VEC: tl.constexpr):
        """Element offsets of (key t, dim) of sequence b in a paged cache whose page of
        PAGE tokens x W dims is laid out as `lowering.cache_layout` says (TT tokens x VEC
        dims tiles; NORMAL is TT = 1, VEC = W)."""
        blk = tl.load(TABLE + b * st_b + t // PAGE, mask=t_ok, other=0).to(tl.int64)
        tok = t % PAGE
        inner = (((tok // TT) * (W // VEC))[:, None] + dims[None, :] // VEC) * (TT * VEC) \
            + (tok % TT)[:, None] * VEC + dims[None, :] % VEC
        off = (blk * (PAGE * W))[:, None] + inner
        return tl.max_contiguous(tl.multiple_of(off, [1, VEC]), [1, VEC])

    @triton.jit
    def _wide_split(
        QL, QR, C, KR, MK, O, OP, ST, TABLE, SEQ, SINKS, SCHED,
        sql_b, sql_h, sql_q, sql_r, sqr_b, sqr_h, sqr_q, sqr_d,
        sc_b, sc_t, sc_r, skr_b, skr_t, skr_d,
        smk_b, smk_h, smk_q, smk_n, so_b, so_h, so_q, so_r, st_b,
        H, Sq, Sk, keys_per_split, scale,
        R: tl.constexpr, DR: tl.constexpr, BR: tl.constexpr, BDR: tl.constexpr,
        NSPLIT: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
        CAUSAL: tl.constexpr, MASK: tl.constexpr, DIRECT: tl.constexpr, ZERO_EMPTY: tl.constexpr,
        PREC: tl.constexpr, UPCAST: tl.constexpr,
        PAGED: tl.constexpr, PAGE: tl.constexpr, TT: tl.constexpr, VEC: tl.constexpr,
        PAGE_TILE: tl.constexpr, SINK: tl.constexpr, BALANCED: tl.constexpr,
    ):
        # program (row group, split, sequence), or (row group, work item) of the balanced
        # schedule: the row groups of one key range are neighbours in launch order, so
        # the second group's tiles come from L2
        scale = tl.cast(scale, tl.float32)  # may arrive as fp64 (Inductor's launcher types floats so)
        # decode_schedule's work item and partial slot, written out (not the Gluon programs'
        # helpers' Triton twins): Inductor's mutation analysis counts a called helper's pointer
        # arguments as written when its results address a store, so SCHED and SEQ (inputs)
        # read as written and a compiled graph kept the op call instead of this launch
        slot = tl.program_id(1)
        if BALANCED:  # grid (groups, items): the table's item
            e = SCHED + _HEADER + _ITEM * slot
            b = tl.load(e).to(tl.int64)
            lo = tl.load(e + 1)
            hi_key = tl.load(e + 2)
            if b < 0:  # an unused item
                return
        else:  # grid (groups, splits, B): split `slot` of request b, keys_per_split each
            b = tl.program_id(2).to(tl.int64)
            if PAGED:  # ragged: each sequence its own length
                Sk = tl.load(SEQ + b)
            lo = slot * keys_per_split
            hi_key = tl.minimum(lo + keys_per_split, Sk)
        rows = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)  # (query, head) pairs
        row_ok = rows < Sq * H
        qi = rows // H
        hi = rows % H
        BC: tl.constexpr = BR // NSPLIT  # latent columns per accumulator block
        offs_c = tl.arange(0, BC)
        offs_d = tl.arange(0, BDR)
        d_ok = offs_d < DR
        q_rows = b * sql_b + hi[:, None] * sql_h + qi[:, None] * sql_q
        ql0 = tl.load(QL + q_rows + offs_c[None, :] * sql_r,
                      mask=row_ok[:, None] & (offs_c < R)[None, :], other=0.0)
        if NSPLIT == 2:
            ql1 = tl.load(QL + q_rows + (BC + offs_c)[None, :] * sql_r,
                          mask=row_ok[:, None] & (BC + offs_c < R)[None, :], other=0.0)
        qr = tl.load(QR + b * sqr_b + hi[:, None] * sqr_h + qi[:, None] * sqr_q + offs_d[None, :] * sqr_d,
                     mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_H], tl.float32)
        if SINK:  # a request's first split starts from the head's sink logit (a key with no value)
            sink = tl.load(SINKS + hi, mask=row_ok, other=0.0).to(tl.float32)
            m_i = tl.where(lo == 0, sink, m_i)
            l_i = tl.where(lo == 0, 1.0, l_i)
        acc0 = tl.zeros([BLOCK_H, BC], tl.float32)
        if NSPLIT == 2:
            acc1 = tl.zeros([BLOCK_H, BC], tl.float32)
        for n0 in tl.range(lo, hi_key, BLOCK_N):
            t = n0 + tl.arange(0, BLOCK_N)
            t_ok = t < hi_key
            if PAGE_TILE:  # NORMAL pages holding whole key tiles: one page number per tile
                blk = tl.load(TABLE + b * st_b + n0 // PAGE).to(tl.int64)
                key_c = C + blk * (PAGE * (R + DR)) + ((n0 % PAGE) + tl.arange(0, BLOCK_N))[:, None] * (R + DR)
                c0 = tl.load(key_c + offs_c[None, :], mask=t_ok[:, None] & (offs_c < R)[None, :], other=0.0)
                if NSPLIT == 2:
                    c1 = tl.load(key_c + (BC + offs_c)[None, :],
                                 mask=t_ok[:, None] & (BC + offs_c < R)[None, :], other=0.0)
                kr = tl.load(key_c + R + offs_d[None, :], mask=t_ok[:, None] & d_ok[None, :], other=0.0)
            elif PAGED:  # C is the cache: latent dims [0, R), rope dims [R, R + DR)
                c0 = tl.load(C + _wpage_offsets(TABLE, st_b, b, t, t_ok, offs_c, PAGE, R + DR, TT, VEC),
                             mask=t_ok[:, None] & (offs_c < R)[None, :], other=0.0)
                if NSPLIT == 2:
                    c1 = tl.load(C + _wpage_offsets(TABLE, st_b, b, t, t_ok, BC + offs_c, PAGE, R + DR, TT, VEC),
                                 mask=t_ok[:, None] & (BC + offs_c < R)[None, :], other=0.0)
                kr = tl.load(C + _wpage_offsets(TABLE, st_b, b, t, t_ok, R + offs_d, PAGE, R + DR, TT, VEC),
                             mask=t_ok[:, None] & d_ok[None, :], other=0.0)
            else:
                key_c = C + b * sc_b + t[:, None].to(tl.int64) * sc_t
                c0 = tl.load(key_c + offs_c[None, :] * sc_r,
                             mask=t_ok[:, None] & (offs_c < R)[None, :], other=0.0)
                if NSPLIT == 2:
                    c1 = tl.load(key_c + (BC + offs_c)[None, :] * sc_r,
                                 mask=t_ok[:, None] & (BC + offs_c < R)[None, :], other=0.0)
                kr = tl.load(KR + b * skr_b + t[:, None].to(tl.int64) * skr_t + offs_d[None, :] * skr_d,
                             mask=t_ok[:, None] & d_ok[None, :], other=0.0)
            if DR > 0:
                s = _wdot(qr, tl.trans(kr), None, PREC, UPCAST)
                s = _wdot(ql0, tl.trans(c0), s, PREC, UPCAST)
            else:  # NoPE (Dr = 0): no rope dot
                s = _wdot(ql0, tl.trans(c0), None, PREC, UPCAST)
            if NSPLIT == 2:
                s = _wdot(ql1, tl.trans(c1), s, PREC, UPCAST)
            s = s * scale
            if MASK:  # additive, fp32, before any exp: finfo.min stays exact
                mk = tl.load(MK + b * smk_b + hi[:, None] * smk_h + qi[:, None] * smk_q + t[None, :] * smk_n,
                             mask=row_ok[:, None] & t_ok[None, :], other=0.0)
                s = s + mk.to(tl.float32)
            ok = t_ok[None, :]
            if CAUSAL:
                ok = ok & (t[None, :] <= qi[:, None])
            s = tl.where(ok, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing visible yet
            p = tl.math.exp2((s - m_sub[:, None]) * 1.4426950408889634)
            alpha = tl.math.exp2((m_i - m_sub) * 1.4426950408889634)
            l_i = l_i * alpha + tl.sum(p, 1)
            pc = p.to(c0.dtype)
            acc0 = _wdot(pc, c0, acc0 * alpha[:, None], PREC, UPCAST)
            if NSPLIT == 2:
                acc1 = _wdot(pc, c1, acc1 * alpha[:, None], PREC, UPCAST)
            m_i = m_new
        inv = 1.0 / tl.where(l_i > 0, l_i, 1.0)
        # where the output goes, read here (nothing stays live in the loop): partial row
        # ((pb * H + h) * Sq + q) * pn + ps; a balanced request's only item writes out
        if BALANCED:
            pb, pn, ps = slot.to(tl.int64), 1, 0
            direct = tl.load(SCHED + _HEADER + _ITEM * slot + 3) == 1
        else:
            pb, pn, ps = b, tl.num_programs(1), slot
            direct: tl.constexpr = DIRECT  # static: the old schedule compiles one store
        if direct:  # one split: the final output, in out's dtype
            if ZERO_EMPTY:
                inv = tl.where(l_i > 0, inv, 0.0)
            else:  # eager softmax over no visible key: 0 / 0
                inv = tl.where(l_i > 0, inv, float("nan"))
            o_rows = b * so_b + hi[:, None] * so_h + qi[:, None] * so_q
            tl.store(O + o_rows + offs_c[None, :] * so_r, (acc0 * inv[:, None]).to(O.dtype.element_ty),
                     mask=row_ok[:, None] & (offs_c < R)[None, :])
            if NSPLIT == 2:
                tl.store(O + o_rows + (BC + offs_c)[None, :] * so_r, (acc1 * inv[:, None]).to(O.dtype.element_ty),
                         mask=row_ok[:, None] & (BC + offs_c < R)[None, :])
        else:  # normalised partial, its running max and sum (kept apart, not as a
            # log-sum-exp: m + log(l) rounds away l next to a finfo.min mask)
            base = ((pb * H + hi) * Sq + qi) * pn + ps  # [B, H, Sq, splits] or [items, H, Sq]
            p_rows = base[:, None].to(tl.int64) * R
            tl.store(OP + p_rows + offs_c[None, :], acc0 * inv[:, None],
                     mask=row_ok[:, None] & (offs_c < R)[None, :])
            if NSPLIT == 2:
                tl.store(OP + p_rows + (BC + offs_c)[None, :], acc1 * inv[:, None],
                         mask=row_ok[:, None] & (BC + offs_c < R)[None, :])
            tl.store(ST + 2 * base, m_i, mask=row_ok)
            tl.store(ST + 2 * base + 1, l_i, mask=row_ok)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def wide_rows_per_program(rows: int, on_gpu: bool) -> int:
    """Query rows per program: 64 (8 warps, wgmma, each latent tile read once for 64
    rows) from 64 rows up, else the next power of two >= 16 (4 warps): padding 16 or 32
    rows to 64 costs more score work than it saves (H200, issue 12)."""
    if not on_gpu:
        return 16
    return 64 if rows >= 64 else max(16, 1 << (max(1, rows) - 1).bit_length())


def choose_wide_splits(batch: int, row_groups: int, kv_len: int, block_n: int, slots: int,
                       max_splits: int = 128, overhead_blocks: float = 3.0) -> int:
    """Key splits for batch * row_groups * splits programs on `slots` program slots
    (one per SM for 64-row programs, two for smaller ones): the split count minimising
    waves * (key blocks per split + a fixed cost per program, in key blocks), where a
    split has at least 4 key blocks. One split (no partials) whenever the batch alone
    fills whole waves about as well."""
    blocks = max(1, -(-kv_len // block_n))
    best, best_cost = 1, None
    for s in range(1, max(1, min(max_splits, blocks // 4)) + 1):
        cost = wide_split_cost(batch, row_groups, kv_len, block_n, slots, s, overhead_blocks)
        if best_cost is None or cost < best_cost - 1e-9:
            best, best_cost = s, cost
    return best


def wide_split_cost(batch: int, row_groups: int, kv_len: int, block_n: int, slots: int, splits: int,
                    overhead_blocks: float = 3.0) -> float:
    """`choose_wide_splits`'s cost of `splits` (in key blocks): waves x (blocks per split +
    a fixed cost), + the fixed cost once for the combine."""
    blocks = max(1, -(-kv_len // block_n))
    waves = -(-max(1, batch * row_groups) * splits // slots)
    return waves * (-(-blocks // splits) + overhead_blocks) + (overhead_blocks if splits > 1 else 0.0)


def supports(q_lat: torch.Tensor, q_pe: torch.Tensor) -> bool:
    """What this launcher handles: latent widths up to 512 and rope widths up to 64
    (one program holds them whole); fp32, fp16 or bf16."""
    return (q_lat.shape[-1] <= 512 and q_pe.shape[-1] <= 64
            and q_lat.dtype in (torch.float32, torch.float16, torch.bfloat16))


def mla_decode_attention_wide(q_lat, q_pe, c_kv, k_pe, scale: float, causal: bool, *,
                              mask: torch.Tensor | None = None, zero_empty_rows: bool = False,
                              paged: tuple | None = None,
                              out: torch.Tensor | None = None, splits: int | None = None,
                              block_h: int | None = None, block_n: int | None = None,
                              num_warps: int | None = None, num_stages: int | None = None,
                              nsplit: int | None = None, sms: int | None = None,
                              sinks: torch.Tensor | None = None, gluon: bool | None = None,
                              gluon_program: str | None = None, schedule: str | None = None,
                              seesaw_tma: bool | None = None) -> torch.Tensor:
    """softmax((q_lat c^T + q_pe k_pe^T) * scale + mask) @ c per (query, head) row: the
    contract of `triton_decode.mla_decode_attention` (q_lat [B, H, Sq, R], q_pe
    [B, H, Sq, Dr], c_kv [B, Sk, R], k_pe [B, Sk, Dr], mask broadcasting to
    [B, H, Sq, Sk], `paged=(cache, block_table, seq_lens, page, (tt, vec))` instead of
    c_kv / k_pe) -> o_lat [B, H, Sq, R] in q's dtype or written into `out`.

    Defaults on the GPU: 64 rows per program, 64 keys per tile, 8 warps, 2 stages, the
    latent as 2 column blocks; `splits` from `choose_wide_splits`. Overrides for tests.
    The 64-row program is the Gluon one (`gluon_decode`) where it applies; `gluon=False`
    forces the Triton program, `gluon=True` the Gluon one (tests and benchmarks). The Gluon
    program is `gluon_program` ("split": `gluon_split`, "pipelined": `gluon_split_pipelined`,
    "seesaw": `gluon_split_seesaw`), by default `gluon_programs.choose_program`'s
    choice by rows (the op in compiled graphs chooses the same).

    `schedule`: "balanced" (decode_schedule.py, work items of about equal key counts
    whatever their request's length) or "split" (`splits` per request, sized from the
    longest). Default, from the H200 (RESULTS.md, sessions 9 and 11): balanced for a paged
    cache with B >= 2 under the Triton and split / pipelined Gluon programs (1.07-1.29x on
    ragged batches, 0.94-1.0x on equal lengths), and under the seesaw from
    `SEESAW_BALANCED_FROM` programs of one split (B x row groups: 1.07-1.29x ragged,
    0.92-0.99x equal; below, 0.82-0.97x ragged); split for contiguous keys (equal
    lengths) and at B = 1 (balanced: 0.86x, its metadata launch).

    `seesaw_tma`: the seesaw's full key tiles by TMA (gluon_seesaw_copy.py) where its
    descriptors apply (`tma_plan`), else its cp.async copies (same numbers); default
    `gluon_decode_seesaw.SEESAW_TMA`."""
    if not supports(q_lat, q_pe):
        raise NotImplementedError("mla_decode_attention_wide: R <= 512, Dr <= 64, float dtypes")
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
    bn = block_n or (64 if on_gpu else 16)
    bh = block_h or wide_rows_per_program(size_hint(Sq * H), on_gpu)
    br, bdr = max(16, triton.next_power_of_2(R)), max(16, triton.next_power_of_2(Dr))
    ns = nsplit or (2 if br >= 256 else 1)
    page_tile = paged is not None and tt == 1 and page % bn == 0
    use_gluon = gluon is not False and bn == gluon_decode.KEYS and gluon_decode.applies(
        q_lat, q_pe, bh, page_tile, paged is not None, _interpreting(), c_kv, k_pe)
    if gluon and not use_gluon:
        raise ValueError("mla_decode_attention_wide(gluon=True): the Gluon program does not apply here "
                         "(gluon_decode.applies)")
    if use_gluon and is_traced(q_lat):
        # Inductor cannot launch a Gluon kernel: an op call, only under CUDA graphs, where
        # it costs nothing (without them a custom op call costs ~200 us of host time, more
        # than the faster program saves: H200, issue 12); else the Triton program, inlined
        if inductor_cuda_graphs():
            return call_wide_decode_gluon(q_lat, q_pe, c_kv if paged is None else None,
                                          k_pe if paged is None else None, mask, paged, sinks, out, scale,
                                          causal, zero_empty_rows, bh)
        use_gluon = False
    gluon_program = program_name(gluon_program, B * Sq * H, Sq * H)
    groups = triton.cdiv(Sq * H, bh)
    if schedule is None:  # measured on an H200 (RESULTS.md, sessions 9 and 11): see the docstring
        few = use_gluon and gluon_program == "seesaw" and size_hint(B) * size_hint(groups) < SEESAW_BALANCED_FROM
        schedule = "balanced" if paged is not None and size_hint(B) >= 2 and not few else "split"
    if schedule not in ("split", "balanced") or (schedule == "balanced" and paged is None):
        raise ValueError(f"mla_decode_attention_wide(schedule={schedule!r}): 'split', or 'balanced' with paged=")
    balanced = schedule == "balanced"
    n_sm = sms or (torch.cuda.get_device_properties(q_lat.device).multi_processor_count if on_gpu else 4)
    # a 64-row program holds ~216 KB of shared memory and all registers: one per SM;
    # 16 / 32-row programs (4 warps) fit two
    slots = n_sm * (1 if bh >= 64 else 2)
    if splits is None:
        splits = choose_wide_splits(size_hint(B), size_hint(groups), size_hint(Sk), bn, slots)
    keys_per_split = triton.cdiv(triton.cdiv(Sk, splits), bn) * bn
    if isinstance(Sk, int):  # symbolic: the hint's count; a split past the keys is empty
        splits = triton.cdiv(Sk, keys_per_split)
    direct = splits == 1 and not balanced
    sched = q_lat  # unused pointer in the old schedule
    if balanced:  # the item table, from seq_lens on the device (decode_schedule.py)
        sched, items = balanced_schedule(seq_arg, B, size_hint(groups), slots, bn, keys_per_split, splits)
        parts, grid = items, (groups, items)
    else:
        parts, grid = B * splits, (groups, splits, B)
    if direct:  # unused pointers
        partial = stats = out
    else:  # partial rows: [B, H, Sq, splits] or [items, H, Sq]
        partial = torch.empty(parts * H * Sq, R, device=q_lat.device, dtype=torch.float32)
        stats = torch.empty(parts * H * Sq * 2, device=q_lat.device, dtype=torch.float32)  # (max, sum)
    mk = mask.expand(B, H, Sq, Sk) if mask is not None else None
    mk_strides = mk.stride() if mk is not None else (0, 0, 0, 0)
    # one argument list for both programs (same kernel signature up to the constexprs)
    args = (q_lat, q_pe, c_kv, k_pe, mk if mk is not None else q_lat, out, partial, stats, table_arg, seq_arg,
            sinks_pointer(sinks, q_lat), sched, *q_lat.stride(), *q_pe.stride(), *c_strides, *kr_strides,
            *mk_strides, *out.stride(), st_b, H, Sq, Sk, keys_per_split, float(scale))
    common = dict(R=R, DR=Dr, CAUSAL=bool(causal), MASK=mask is not None, DIRECT=direct,
                  ZERO_EMPTY=bool(zero_empty_rows), PAGED=paged is not None, PAGE=page, SINK=sinks is not None,
                  BALANCED=balanced)
    if use_gluon:
        program, warps = choose_program(gluon_program, B * Sq * H)
        tma = {}
        if gluon_program == "seesaw" and (gluon_decode_seesaw.SEESAW_TMA if seesaw_tma is None else seesaw_tma):
            plan = tma_plan(c_kv, k_pe, paged, R, Dr, q_lat.dtype)
            if plan is not None:  # else the cp.async copies (the kernel's defaults)
                cd, krd = tma_descriptors(plan)
                tma = dict(CD=cd, KRD=krd, c_rpb=plan[2], kr_rpb=plan[3], TMA=True)
        launch(program, grid, *args, **common, **tma, num_warps=warps)
    else:
        launch(
            _wide_split, grid, *args, **common,
            BR=br, BDR=bdr, NSPLIT=ns, BLOCK_H=bh, BLOCK_N=bn,
            PREC="ieee" if q_lat.dtype == torch.float32 else "tf32",
            UPCAST=_interpreting() and q_lat.dtype == torch.bfloat16,
            TT=tt, VEC=vec, PAGE_TILE=page_tile,
            num_warps=num_warps or (8 if bh >= 64 else 4), num_stages=num_stages or 2,
        )
    if balanced:  # requests with one item wrote out directly: the combine skips them
        launch_combine(partial, stats, out, sched, size_hint(items) - size_hint(B) + 1,
                       HEADER_INTS + ITEM_INTS * items, zero_empty_rows, True)
    elif not direct:
        launch_combine(partial, stats, out, q_lat, splits, 0, zero_empty_rows, False)
    return out


__all__ = ["mla_decode_attention_wide", "choose_wide_splits", "wide_split_cost", "wide_rows_per_program", "supports"]
