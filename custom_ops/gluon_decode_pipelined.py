"""`gluon_split` (gluon_decode.py) with the score wgmma of the next key tile issued
behind this tile's `p @ c`, so the tensor cores run the two back to back (issue 12).

Same arguments, constexprs, partials and outputs as `gluon_split`; the launcher
(triton_decode_wide.py) runs it with `gluon_program="pipelined"`, and by default below
4096 rows, 1024 at 128 heads (`gluon_programs.choose_program`).

Why only this much overlap. The output accumulator [64, 512] fp32 takes 128 registers
per thread (a second one does not fit, FlashMLA's deep-dive), and shared memory holds q
(72 KB) and two key stages (2 x 72 KB) of the 227 KB: no third stage. The FA3 order
(scores of tile j+1 before `p @ c` of tile j, softmax of j+1 while that runs) needs
three key tiles resident (the one `p @ c` reads, the one the scores read, the one in
flight), else the next copy waits for `p @ c` and lands with nothing to hide it. So
the copies keep the old program's slack and what moves is the tensor-core bubble.

Schedule of tile j (each warpgroup runs all of it; "bar" = cta_barrier (gl.thread_barrier), both
warpgroups; wgmma groups of one warpgroup retire in issue order; S(j) is two groups,
rope then latent, PV(j) one):

  wait(0)             S(j) retired (PV(j-1) retired already, at the previous wait(2)).
  softmax(j)          m, l, alpha, p on the CUDA cores (l per key column: one
                      cross-warpgroup reduction per tile, the max, instead of two).
  acc *= alpha        acc is not in flight (PV(j-1) retired).
  store p; fence; bar p may be overwritten: every warpgroup passed the previous
                      iteration's bar after its PV(j-1) retired. The fence orders the
                      generic-proxy stores before wgmma's async-proxy reads; the bar makes
                      both warpgroups' halves of p visible before either reads all of p.
  PV(j) async         reads stage j % 2 and p.
  wait_group(0); fence; bar
                      copy(j+1) (issued one tile ago) landed for every thread: each thread
                      waits its own cp.async, the bar covers the others'. PV(j) keeps the
                      tensor cores busy meanwhile, so a copy that lands before PV(j) ends
                      costs nothing (the old program's copies had the same slack).
  S(j+1) async        reads q and stage (j+1) % 2; queued right behind PV(j).
  wait(2)             PV(j) retired (only S(j+1)'s two groups may still be pending).
  bar                 both warpgroups' PV(j) retired (their S(j) retired before the p
                      bar): stage j % 2 and p have no reader left.
  copy(j+2) -> stage j % 2, commit (its address math overlaps S(j+1)).

The last tile is the loop's tail (no S(j+1), wait(0) for its PV). An empty split (no
keys) runs the tail on a zero-filled, fully masked tile: p = 0, alpha = 0 from
m = -inf (or 1 from a sink), so acc, m and l are those of a loop that never ran.
Copies past the keys are zero-filled (never read: pages' free slots may hold anything).
"""
from __future__ import annotations

from .gluon_decode import gluon

if gluon is not None:
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        async_copy, fence_async_shared, warpgroup_mma, warpgroup_mma_wait)

    from ..compat import GLUON_CTA_BARRIER as cta_barrier
    from .decode_schedule import gluon_work_item
    from .gluon_decode import _issue_tile, _load_q, _write_out

    @gluon.jit
    def _softmax_tile(s, m_i, l_k, n0, hi_key, b, hi, qi, row_ok, MK, smk_b, smk_h, smk_q, smk_n, scale,
                      SL: gl.constexpr, CAUSAL: gl.constexpr, MASK: gl.constexpr):
        """One tile's online softmax (gluon_split's math): -> p, alpha, m, l_k. The running
        sum stays per key column (l_k [64, 64], summed once after the last tile): a row sum
        per tile is a reduction across the two warpgroups, through shared memory with
        barriers; the row max (which both warpgroups' halves of p must share) is the only
        one left."""
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
        return p, alpha, m_new, l_k * alpha[:, None] + p

    @gluon.jit
    def _scores(q_smem, qr_smem, c_t, kr_t, SL: gl.constexpr):
        """S = q_pe kr^T + q_lat c^T, issued async: two wgmma groups."""
        s = warpgroup_mma(qr_smem, kr_t.permute((1, 0)), gl.zeros([64, 64], gl.float32, layout=SL),
                          use_acc=False, is_async=True)
        return warpgroup_mma(q_smem, c_t.permute((1, 0)), s, is_async=True)

    @gluon.jit
    def gluon_split_pipelined(
        QL, QR, C, KR, MK, O, OP, ST, TABLE, SEQ, SINKS, SCHED,
        sql_b, sql_h, sql_q, sql_r, sqr_b, sqr_h, sqr_q, sqr_d,
        sc_b, sc_t, sc_r, skr_b, skr_t, skr_d,
        smk_b, smk_h, smk_q, smk_n, so_b, so_h, so_q, so_r, st_b,
        H, Sq, Sk, keys_per_split, scale,
        R: gl.constexpr, DR: gl.constexpr,
        CAUSAL: gl.constexpr, MASK: gl.constexpr, DIRECT: gl.constexpr, ZERO_EMPTY: gl.constexpr,
        PAGED: gl.constexpr, PAGE: gl.constexpr, SINK: gl.constexpr, BALANCED: gl.constexpr,
    ):
        # layouts as gluon_split: scores split by keys, output by columns over warps [4, 2]
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
        l_k = gl.zeros([64, 64], gl.float32, layout=SL)  # running sums per key column
        if SINK:  # a request's first split starts from the head's sink logit (a key with no value)
            sink = gl.load(SINKS + hi, mask=row_ok, other=0.0).to(gl.float32)
            m_i = gl.where(lo == 0, sink, m_i)
            c0 = gl.arange(0, 64, layout=gl.SliceLayout(0, SL))
            l_k = gl.where((lo == 0) & (c0 == 0)[None, :], 1.0, l_k)
        acc = gl.zeros([64, R], gl.float32, layout=AL)
        n_tiles = gl.cdiv(hi_key - lo, 64)

        # prologue: tiles 0 and 1 in flight, S(0) issued once tile 0 (and q) is visible
        _issue_tile(C, KR, TABLE, c_smem.index(0), kr_smem.index(0), b, lo, hi_key, st_b, sc_b, sc_t, sc_r,
                    skr_b, skr_t, skr_d, R, DR, PAGED, PAGE)
        async_copy.commit_group()
        _issue_tile(C, KR, TABLE, c_smem.index(1), kr_smem.index(1), b, lo + 64, hi_key, st_b, sc_b, sc_t, sc_r,
                    skr_b, skr_t, skr_d, R, DR, PAGED, PAGE)
        async_copy.commit_group()
        async_copy.wait_group(1)  # tile 0's group (this thread's copies)
        fence_async_shared()      # q's stores and the copies, before wgmma reads them
        cta_barrier()       # ... for every thread's part
        s = _scores(q_smem, qr_smem, c_smem.index(0), kr_smem.index(0), SL)

        for j in range(n_tiles - 1):  # every tile but the last: S(j+1) follows PV(j)
            n0 = lo + j * 64
            st = j % 2
            s = warpgroup_mma_wait(0, deps=[s])  # S(j); nothing else is pending
            p, alpha, m_i, l_k = _softmax_tile(s, m_i, l_k, n0, hi_key, b, hi, qi, row_ok, MK,
                                               smk_b, smk_h, smk_q, smk_n, scale, SL, CAUSAL, MASK)
            acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, AL))[:, None]
            p_smem.store(p.to(dt))  # free: both warpgroups' PV(j-1) retired before the last bar
            fence_async_shared()
            cta_barrier()     # all of p written before either warpgroup's PV reads it
            acc = warpgroup_mma(p_smem, c_smem.index(st), acc, is_async=True)
            async_copy.wait_group(0)  # copy(j+1), while PV(j) runs
            fence_async_shared()
            cta_barrier()       # every thread's part of tile j+1 landed
            s = _scores(q_smem, qr_smem, c_smem.index(1 - st), kr_smem.index(1 - st), SL)
            acc = warpgroup_mma_wait(2, deps=[acc])  # PV(j) retired; S(j+1)'s two groups may run
            cta_barrier()  # both warpgroups' PV(j) retired: stage st and p are free
            _issue_tile(C, KR, TABLE, c_smem.index(st), kr_smem.index(st), b, n0 + 128, hi_key,
                        st_b, sc_b, sc_t, sc_r, skr_b, skr_t, skr_d, R, DR, PAGED, PAGE)
            async_copy.commit_group()

        # the last tile (or, for an empty split, a fully masked zero tile: no change)
        j = gl.maximum(n_tiles - 1, 0)
        s = warpgroup_mma_wait(0, deps=[s])
        p, alpha, m_i, l_k = _softmax_tile(s, m_i, l_k, lo + j * 64, hi_key, b, hi, qi, row_ok, MK,
                                           smk_b, smk_h, smk_q, smk_n, scale, SL, CAUSAL, MASK)
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, AL))[:, None]
        p_smem.store(p.to(dt))
        fence_async_shared()
        cta_barrier()
        acc = warpgroup_mma(p_smem, c_smem.index(j % 2), acc, is_async=True)
        acc = warpgroup_mma_wait(0, deps=[acc])
        async_copy.wait_group(0)  # no copy outlives the program

        l_i = gl.sum(l_k, 1)
        _write_out(acc, m_i, l_i, O, OP, ST, SCHED, b, pid, slot, H, Sq, so_b, so_h, so_q, so_r,
                   R, AL, SL, DIRECT, ZERO_EMPTY, BALANCED)

__all__ = ["gluon_split_pipelined"]
