"""Absorbed MLA decode for 64 (query, head) rows per program on Hopper, in Gluon.

The same program as `triton_decode_wide._wide_split` (same arguments, partials and
combine), written with explicit layouts where Triton's choices cost the most at 64-128
heads (benchmarks/RESULTS.md, issue 12):
- both dots are wgmma over two warpgroups split by COLUMNS (warps [4, 2]): the scores
  [64 rows, 64 keys] are computed once, each warpgroup owning 32 keys (Triton gives
  the score dot [8, 1], so both warpgroups computed all of them: 1.5x the tensor
  work), and each warpgroup owns 256 of the 512 output columns of `p @ c`;
- the probabilities go through shared memory (both warpgroups read all 64 keys);
- the next key tile's copies (cp.async, zero-filled past the keys, so a page's
  unwritten slots are never read) are issued before this tile's scores, so they
  overlap the whole tile's work, not only `p @ c`.

Math, masks, sinks, splits and outputs are `_wide_split`'s, and so is the work of a
program (a split, or a work item of the balanced schedule: `decode_schedule.gluon_work_item`
and `gluon_partial_slot`, shared by the three Gluon programs): the launcher in
triton_decode_wide.py chooses this program when `applies` says so.
"""
from __future__ import annotations

import torch

from ..compat import GLUON_CTA_BARRIER as cta_barrier
from .checks import known_true
from .decode_schedule import gluon_partial_slot, gluon_work_item
from .launch import is_traced

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        async_copy, fence_async_shared, warpgroup_mma, warpgroup_mma_wait)
except ImportError:  # no Gluon (Triton < 3.5 or no Triton): the Triton program runs
    gluon = None

ROWS = 64  # (query, head) rows per program
KEYS = 64  # keys per tile
WARPS = 8  # two warpgroups


def _rows_of_vectors(t: torch.Tensor) -> bool:
    """cp.async moves 16-byte vectors: unit column stride, the other strides multiples of
    16 elements (the JIT's divisibility specialisation proves the alignment), the start
    16-byte aligned (a traced tensor has no data pointer: the op checks it at run time)."""
    return (known_true(t.stride(-1) == 1) and all(known_true(s % 16 == 0) for s in t.stride()[:-1])
            and known_true(t.storage_offset() % 8 == 0) and (is_traced(t) or t.data_ptr() % 16 == 0))


def applies(q_lat: torch.Tensor, q_pe: torch.Tensor, rows_per_program: int, page_tile: bool,
            paged: bool, interpreting: bool, c_kv: torch.Tensor, k_pe: torch.Tensor) -> bool:
    """This program serves 64-row programs on sm_90 for DeepSeek's dims (R = 512,
    Dr = 64) in fp16 / bf16, over contiguous keys (rows of 16-byte vectors) or NORMAL
    pages holding whole key tiles; everything else stays on the Triton program.

    On traced tensors (a compiled graph's launch, passes/inline_launches.py) the answer
    leaves out the data pointers' alignment: the launcher then calls
    `mla.wide_decode_gluon` (gluon_op.py), which asks again on the real tensors."""
    if gluon is None or interpreting or q_lat.device.type != "cuda":
        return False
    if not (rows_per_program == ROWS and q_lat.shape[-1] == 512 and q_pe.shape[-1] == 64
            and q_lat.dtype in (torch.float16, torch.bfloat16)
            and torch.cuda.get_device_capability(q_lat.device) == (9, 0)):
        return False
    if paged:  # c_kv is the cache [blocks, page * (R + Dr)]: whole tiles, 16-byte rows
        return page_tile and _rows_of_vectors(c_kv)
    return _rows_of_vectors(c_kv) and _rows_of_vectors(k_pe)


if gluon is not None:

    @gluon.jit
    def _issue_tile(C, KR, TABLE, c_buf, kr_buf, b, n0, hi_key, st_b, sc_b, sc_t, sc_r,
                    skr_b, skr_t, skr_d,
                    R: gl.constexpr, DR: gl.constexpr, PAGED: gl.constexpr, PAGE: gl.constexpr):
        """cp.async of keys [n0, n0 + KEYS) (latent and rope parts) into one stage; keys
        at or past hi_key are zero-filled, never read."""
        LC: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [8, 1], [1, 0])
        LR: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [8, 1], [1, 0])
        tc = n0 + gl.arange(0, 64, layout=gl.SliceLayout(1, LC))
        tr = n0 + gl.arange(0, 64, layout=gl.SliceLayout(1, LR))
        cc = gl.arange(0, R, layout=gl.SliceLayout(0, LC))
        cr = gl.arange(0, DR, layout=gl.SliceLayout(0, LR))
        if PAGED:  # NORMAL pages of whole tiles: one page number per tile
            blk = gl.load(TABLE + b * st_b + n0 // PAGE, mask=n0 < hi_key, other=0).to(gl.int64)
            row_c = blk * (PAGE * (R + DR)) + (tc % PAGE).to(gl.int64) * (R + DR)
            row_r = blk * (PAGE * (R + DR)) + (tr % PAGE).to(gl.int64) * (R + DR) + R
            src_c = C + row_c[:, None] + cc[None, :]
            src_r = C + row_r[:, None] + cr[None, :]
        else:
            # unit column strides, row strides multiples of 16 (`applies` checks): the
            # JIT specialises them as such, so the copies are 16-byte vectors
            src_c = C + b * sc_b + tc.to(gl.int64)[:, None] * sc_t + cc[None, :]
            src_r = KR + b * skr_b + tr.to(gl.int64)[:, None] * skr_t + cr[None, :]
        async_copy.async_copy_global_to_shared(c_buf, src_c, mask=(tc < hi_key)[:, None] & (cc < R)[None, :])
        async_copy.async_copy_global_to_shared(kr_buf, src_r, mask=(tr < hi_key)[:, None] & (cr < DR)[None, :])

    @gluon.jit
    def _load_q(QL, QR, b, pid, H, Sq, sql_b, sql_h, sql_q, sql_r, sqr_b, sqr_h, sqr_q, sqr_d,
                R: gl.constexpr, DR: gl.constexpr):
        """The program's 64 rows of q_lat and q_pe (zeros past the rows), to go to shared memory."""
        LQ: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [8, 1], [1, 0])
        rq = pid * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, LQ))
        cq = gl.arange(0, R, layout=gl.SliceLayout(0, LQ))
        dq = gl.arange(0, DR, layout=gl.SliceLayout(0, LQ))
        rq_ok = rq < Sq * H
        q_lat = gl.load(QL + b * sql_b + (rq % H)[:, None] * sql_h + (rq // H)[:, None] * sql_q + cq[None, :] * sql_r,
                        mask=rq_ok[:, None] & (cq < R)[None, :], other=0.0)
        q_pe = gl.load(QR + b * sqr_b + (rq % H)[:, None] * sqr_h + (rq // H)[:, None] * sqr_q + dq[None, :] * sqr_d,
                       mask=rq_ok[:, None] & (dq < DR)[None, :], other=0.0)
        return q_lat, q_pe

    @gluon.jit
    def _write_out(acc, m_i, l_i, O, OP, ST, SCHED, b, pid, slot, H, Sq, so_b, so_h, so_q, so_r,
                   R: gl.constexpr, AL: gl.constexpr, SL: gl.constexpr,
                   DIRECT: gl.constexpr, ZERO_EMPTY: gl.constexpr, BALANCED: gl.constexpr):
        """acc / l: the output (one split, or a request's only item) or the normalised
        partial with its max and sum where `gluon_partial_slot` says (`_wide_split`'s
        layout, merged by its combine)."""
        rows = pid * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, SL))
        row_ok = rows < Sq * H
        qi = rows // H
        hi = rows % H
        ra = pid * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, AL))
        ca = gl.arange(0, R, layout=gl.SliceLayout(0, AL))
        ra_ok = ra < Sq * H
        l_a = gl.convert_layout(l_i, gl.SliceLayout(1, AL))
        inv = 1.0 / gl.where(l_a > 0, l_a, 1.0)
        pb, pn, ps, n_items = gluon_partial_slot(SCHED, b, slot, BALANCED)
        if BALANCED:
            direct = n_items == 1
        else:
            direct: gl.constexpr = DIRECT  # static: the old schedule compiles one store
        if direct:  # one split: the final output, in out's dtype
            if ZERO_EMPTY:
                inv = gl.where(l_a > 0, inv, 0.0)
            else:  # eager softmax over no visible key: 0 / 0
                inv = gl.where(l_a > 0, inv, float("nan"))
            o_rows = b * so_b + (ra % H)[:, None] * so_h + (ra // H)[:, None] * so_q
            gl.store(O + o_rows + ca[None, :] * so_r, (acc * inv[:, None]).to(O.dtype.element_ty),
                     mask=ra_ok[:, None] & (ca < R)[None, :])
        else:  # normalised partial, its running max and sum kept apart (as _wide_split)
            base = ((pb * H + ra % H) * Sq + ra // H) * pn + ps
            gl.store(OP + base.to(gl.int64)[:, None] * R + ca[None, :], acc * inv[:, None],
                     mask=ra_ok[:, None] & (ca < R)[None, :])
            sbase = ((pb * H + hi) * Sq + qi) * pn + ps
            gl.store(ST + 2 * sbase, m_i, mask=row_ok)
            gl.store(ST + 2 * sbase + 1, l_i, mask=row_ok)

    @gluon.jit
    def gluon_split(
        QL, QR, C, KR, MK, O, OP, ST, TABLE, SEQ, SINKS, SCHED,
        sql_b, sql_h, sql_q, sql_r, sqr_b, sqr_h, sqr_q, sqr_d,
        sc_b, sc_t, sc_r, skr_b, skr_t, skr_d,
        smk_b, smk_h, smk_q, smk_n, so_b, so_h, so_q, so_r, st_b,
        H, Sq, Sk, keys_per_split, scale,
        R: gl.constexpr, DR: gl.constexpr,
        CAUSAL: gl.constexpr, MASK: gl.constexpr, DIRECT: gl.constexpr, ZERO_EMPTY: gl.constexpr,
        PAGED: gl.constexpr, PAGE: gl.constexpr, SINK: gl.constexpr, BALANCED: gl.constexpr,
    ):
        # scores [64, 64]: warpgroup w owns keys [32 w, 32 w + 32); output [64, 512]:
        # warpgroup w owns columns [256 w, 256 w + 256)
        SL: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2], instr_shape=[16, 32, 16])
        AL: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2], instr_shape=[16, 256, 16])
        SH: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        dt: gl.constexpr = QL.dtype.element_ty
        scale = gl.cast(scale, gl.float32)  # may arrive as fp64 (Inductor's launcher types floats so)
        pid = gl.program_id(0)
        b, lo, hi_key, slot = gluon_work_item(SCHED, SEQ, Sk, keys_per_split, PAGED, BALANCED)
        if BALANCED:
            if b < 0:  # an unused item
                return

        # q in shared memory (the A operand of both score dots)
        q_lat, q_pe = _load_q(QL, QR, b, pid, H, Sq, sql_b, sql_h, sql_q, sql_r, sqr_b, sqr_h, sqr_q, sqr_d, R, DR)
        q_smem = gl.allocate_shared_memory(dt, [64, R], SH, q_lat)
        qr_smem = gl.allocate_shared_memory(dt, [64, DR], SH, q_pe)
        c_smem = gl.allocate_shared_memory(dt, [2, 64, R], SH)
        kr_smem = gl.allocate_shared_memory(dt, [2, 64, DR], SH)
        p_smem = gl.allocate_shared_memory(dt, [64, 64], SH)

        rows = pid * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, SL))
        row_ok = rows < Sq * H
        qi = rows // H
        hi = rows % H
        m_i = gl.full([64], float("-inf"), gl.float32, layout=gl.SliceLayout(1, SL))
        l_i = gl.zeros([64], gl.float32, layout=gl.SliceLayout(1, SL))
        if SINK:  # a request's first split starts from the head's sink logit (a key with no value)
            sink = gl.load(SINKS + hi, mask=row_ok, other=0.0).to(gl.float32)
            m_i = gl.where(lo == 0, sink, m_i)
            l_i = gl.where(lo == 0, 1.0, l_i)
        acc = gl.zeros([64, R], gl.float32, layout=AL)
        n_tiles = gl.cdiv(hi_key - lo, 64)
        _issue_tile(C, KR, TABLE, c_smem.index(0), kr_smem.index(0), b, lo, hi_key, st_b, sc_b, sc_t, sc_r,
                    skr_b, skr_t, skr_d, R, DR, PAGED, PAGE)
        async_copy.commit_group()
        for j in range(n_tiles):
            n0 = lo + j * 64
            st = j % 2
            # the next tile's copies fly during this whole tile (its stage was freed by
            # the barrier that ended the previous tile); past the keys they are empty
            _issue_tile(C, KR, TABLE, c_smem.index(1 - st), kr_smem.index(1 - st), b, n0 + 64, hi_key,
                        st_b, sc_b, sc_t, sc_r, skr_b, skr_t, skr_d, R, DR, PAGED, PAGE)
            async_copy.commit_group()
            async_copy.wait_group(1)  # this tile's group has landed
            fence_async_shared()
            cta_barrier()
            c_t = c_smem.index(st)
            s = warpgroup_mma(qr_smem, kr_smem.index(st).permute((1, 0)),
                              gl.zeros([64, 64], gl.float32, layout=SL), use_acc=False, is_async=True)
            s = warpgroup_mma(q_smem, c_t.permute((1, 0)), s, is_async=True)
            s = warpgroup_mma_wait(0, deps=[s])
            s = s * scale
            t = n0 + gl.arange(0, 64, layout=gl.SliceLayout(0, SL))
            if MASK:  # additive, fp32, before any exp: finfo.min stays exact
                mk = gl.load(MK + b * smk_b + hi[:, None] * smk_h + qi[:, None] * smk_q + t[None, :] * smk_n,
                             mask=row_ok[:, None] & (t < hi_key)[None, :], other=0.0)
                s = s + mk.to(gl.float32)
            ok = (t < hi_key)[None, :] & row_ok[:, None]
            if CAUSAL:
                ok = ok & (t[None, :] <= qi[:, None])
            s = gl.where(ok, s, float("-inf"))
            m_new = gl.maximum(m_i, gl.max(s, 1))
            m_sub = gl.where(m_new == float("-inf"), 0.0, m_new)  # nothing visible yet
            p = gl.exp2((s - m_sub[:, None]) * 1.4426950408889634)
            alpha = gl.exp2((m_i - m_sub) * 1.4426950408889634)
            l_i = l_i * alpha + gl.sum(p, 1)
            m_i = m_new
            p_smem.store(p.to(dt))
            fence_async_shared()
            cta_barrier()
            acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, AL))[:, None]
            acc = warpgroup_mma(p_smem, c_t, acc, is_async=True)
            acc = warpgroup_mma_wait(0, deps=[acc])
            cta_barrier()  # both warpgroups are done with this stage and p_smem
        async_copy.wait_group(0)

        _write_out(acc, m_i, l_i, O, OP, ST, SCHED, b, pid, slot, H, Sq, so_b, so_h, so_q, so_r,
                   R, AL, SL, DIRECT, ZERO_EMPTY, BALANCED)

__all__ = ["applies", "gluon_split", "ROWS", "KEYS", "WARPS"]
