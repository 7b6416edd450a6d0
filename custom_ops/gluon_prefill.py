"""MLA prefill attention on Hopper in Gluon: FlashAttention-3's warp-specialised design
(issue 16; the design of the FA3 paper, not its code), for what the Triton kernel
(triton_prefill_kernel.py) spends most time on: 16-bit DeepSeek dims (Dn / Dr / Dv =
128 / 64 / 128), no mask, no sinks, causal (top-left: key j visible to row i iff
j <= i) or not, Sk >= Sq. Same math as the Triton kernel: scores = two wgmma (nope,
rope) into one fp32 accumulator, online softmax in the log2 domain (log2(e) folded into
the scale), p @ v with fp32 accumulation, 1 / l at the end.

One program = one 128-row query tile of one (batch, head), heavy (late) tiles first.
Three partitions (gl.warp_specialize):
  consumer 0 (default partition, 4 warps)  query rows [0, 64) of the tile
  consumer 1 (worker, 4 warps)             query rows [64, 128)
  producer (worker, 1 warp)                TMA: q once, then per key tile K (k_nope of
                                           the head + the shared k_pe) and V into a
                                           STAGES-deep shared-memory ring
Each consumer keeps its 64 x 128 output accumulator and softmax state in registers and
overlaps within its warpgroup (FA3's intra-warpgroup pipelining): the scores of tile j
are issued before p(j-1) @ V(j-1), so tile j's softmax runs while the tensor cores do
that product; P stays in registers (the A operand of the PV wgmma, no shared memory).
With PINGPONG (FA3's inter-warpgroup schedule) the two consumers also take turns issuing
their GEMMs: warpgroup 1 issues turn t after warpgroup 0 issued turn t, warpgroup 0 issues
turn t + 1 after warpgroup 1 issued turn t, so one's softmax runs while the other's GEMMs
keep the tensor cores busy. Turn 0 = S(0), turn j = S(j) and PV(j - 1), turn n = PV(n - 1):
both consumers take the same n + 1 turns. Without it they meet only at the ring's barriers.

Barrier protocol (mbarriers, one array: [Q_FULL, K_FULL x STAGES, V_FULL x STAGES,
K_EMPTY x STAGES, V_EMPTY x STAGES, TURN x 2]; stage s = j % STAGES, round r = j // STAGES):
  Q_FULL            producer: expect(q bytes) + 4 TMA loads; consumers wait phase 0.
  K_FULL[s]/V_FULL[s]  producer: expect(bytes) + TMA loads of tile j (completion = all
                    bytes landed, zero-filled past S); consumers wait phase r & 1.
  K_EMPTY[s]/V_EMPTY[s] (count 2, one arrive per consumer): a consumer arrives once its
                    wgmma reading K(j) (resp. V(j)) retired (warpgroup_mma_wait) and its
                    4 warps passed a partition barrier (the arrive is one thread's). The
                    producer waits phase (r & 1) ^ 1 before refilling: a fresh barrier
                    counts as having completed the phase before 0, so round 0 does not
                    wait; round r >= 1 waits for round r - 1's two releases.
  A consumer touches stage s only between its wait on FULL[s] and its arrive on EMPTY[s];
  the producer runs at most STAGES tiles ahead (it waits for EMPTY), so a FULL phase is
  never completed twice before both consumers waited on it.
  TMA writes through the async proxy and wgmma reads through it: no proxy fence needed
  between them (mbarrier completion orders the bytes before the waiters).
  TURN[w] (count 1, PINGPONG): the other consumer arrives after issuing a turn; w waits
                    for it (parity (t & 1) ^ (1 - w): consumer 0's turn 0 needs nothing).
                    No consumer can arrive twice before the other waited: its next turn
                    waits for the other's arrive. Scheduling only: the data still rides
                    on FULL / EMPTY, so the turn order costs or saves time, never values.
                    No wait cycle: a turn waits for the other consumer's previous turn and
                    for the producer, which waits only for releases of earlier tiles.
All copies issued are consumed (the producer issues exactly the tiles the consumers
visit), so nothing is in flight at exit.

Compiled offline for sm_90a (benchmarks/compile_gluon_prefill.py; Triton 3.6 and 3.8,
causal and not, BLOCK_N 128 / 2 stages and 64 / 3, PINGPONG on and off): no spill (ptxas
-v: 0 bytes; no STL / LDL in the SASS), consumers at 240 registers (setmaxnreg; the SASS
names up to R236), producer at 24; 213,344 bytes of shared memory at 128 / 2 (172,416 at
64 / 3). On the H200 (session 9) the 61 GPU tests passed and it ran 1.22-1.26x the Triton kernel's speed and 1.13-1.20x cuDNN's SDPA
at 128-key tiles, 2 stages (benchmarks/RESULTS.md): the default since.

Inside a compiled graph (traced tensors) Inductor cannot launch a Gluon kernel: the
launcher can call `mla.prefill_gluon` (gluon_op.py) instead where `traced_route` says so:
under CUDA graphs, or from TRACED_FROM_ROWS query rows, where the op call's host time
(~0.2 ms on torch 2.11) hides behind a kernel of milliseconds. Session 9 left the route
off: a model run at S = 32768 ran out of GPU memory. The cause was a recursion (the op's
own eager call asked `traced_route` again and called itself, allocating a 1 GiB output
per level); `traced_route` now holds only for traced tensors. On the H200 (session 10)
the compiled DeepSeek-V3-attention model at H = 128 then ran 1.20-1.47x the faster of
eager and Inductor at S = 4096-32768 (benchmarks/RESULTS.md, issue 16).
"""
from __future__ import annotations

import torch

from ..compat import GLUON_CTA_BARRIER as cta_barrier
from .checks import known_true
from .launch import is_traced, tma_aligned

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor
except ImportError:  # no Gluon (or no Triton): the Triton kernel runs
    gluon = None

DEFAULT_ON = True  # measured ahead of the Triton kernel on an H200 (see the docstring)
TRACED_ROUTE = True  # compiled graphs: see the docstring (measured on an H200)
TRACED_FROM_ROWS = 2048  # with the route on, a compiled graph calls the op from this many query rows
BLOCK_M = 128  # query rows per program (two consumer warpgroups of 64)
BLOCK_N = 128  # keys per tile
PINGPONG = True  # the consumers take turns at the tensor cores (FA3's inter-warpgroup schedule)
STAGES = 2     # K / V ring depth: 48 KB q + 2 x (48 KB K + 32 KB V) of the 227 KB
DN, DR, DV = 128, 64, 128
WARPS = 4      # the default partition (consumer 0); workers add 4 + 1
PRODUCER_REGS = 24
CONSUMER_REGS = 240
_LOG2E = 1.4426950408889634


def fits(q_nope, q_pe, k_nope, k_pe, v, mask=None, sinks=None) -> bool:
    """What the program computes, device aside: fp16 / bf16, Dn / Dr / Dv = 128 / 64 / 128,
    Sk >= Sq >= 128 (short prefills stay on the Triton kernel, and no TMA box is taller
    than its tensor), no mask, no sinks, layouts TMA can read (unit last stride, 16-byte
    aligned base and strides)."""
    if mask is not None or sinks is not None or q_nope.dtype not in (torch.float16, torch.bfloat16):
        return False
    Sq, Sk = q_nope.shape[2], k_nope.shape[2]
    if not (q_nope.shape[-1] == DN and q_pe.shape[-1] == DR and v.shape[-1] == DV
            and known_true(Sk >= Sq) and known_true(Sq >= BLOCK_M)):
        return False
    return all(tma_aligned(t) for t in (q_nope, q_pe, k_nope, k_pe, v))


def _sm90(t: torch.Tensor) -> bool:
    return gluon is not None and t.device.type == "cuda" and torch.cuda.get_device_capability(t.device) == (9, 0)


def traced_route(q_nope, q_pe, k_nope, k_pe, v, *, interpreting: bool, mask=None, sinks=None) -> bool:
    """Whether a compiled graph's (traced) launch calls mla.prefill_gluon: the program
    fits, an sm_90 device, traced tensors, and the graph runs under CUDA graphs or has
    TRACED_FROM_ROWS query rows (a size hint: speed only, no guard)."""
    from ..compat import inductor_cuda_graphs, size_hint

    if interpreting or not (DEFAULT_ON and TRACED_ROUTE) or not _sm90(q_nope):
        return False
    if not any(is_traced(t) for t in (q_nope, q_pe, k_nope, k_pe, v)):
        return False  # the op's own eager call: `applies` decides (else it would call itself)
    return (fits(q_nope, q_pe, k_nope, k_pe, v, mask, sinks)
            and (inductor_cuda_graphs() or size_hint(q_nope.shape[2]) >= TRACED_FROM_ROWS))


def applies(q_nope, q_pe, k_nope, k_pe, v, *, interpreting: bool, mask=None, sinks=None) -> bool:
    """Whether the Gluon program serves this call: `fits`, on real (not traced) CUDA
    tensors of an sm_90 device, Gluon compiling (not interpreting). Everything else stays
    on the Triton kernel; a compiled graph's launch (traced tensors: no data pointers, and
    Inductor cannot launch a Gluon kernel) asks `traced_route` instead."""
    if interpreting or not _sm90(q_nope) or any(is_traced(t) for t in (q_nope, q_pe, k_nope, k_pe, v)):
        return False
    return fits(q_nope, q_pe, k_nope, k_pe, v, mask, sinks)


def smem_layout(rank: int):
    """The TMA boxes' shared-memory layout (16-bit rows of >= 128 bytes: 128-byte swizzle),
    which wgmma reads after dropping the boxes' unit dims."""
    return gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=rank)


if gluon is not None:
    CONSUMER_REGS_C = gl.constexpr(CONSUMER_REGS)
    PRODUCER_REGS_C = gl.constexpr(PRODUCER_REGS)

    @gluon.jit
    def _producer(qn_desc, qr_desc, kn_desc, kr_desc, v_desc, qn_smem, qr_smem, kn_smem, kr_smem,
                  v_smem, bars, b, h, start_m, n_tiles, DN: gl.constexpr, DR: gl.constexpr,
                  DV: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
        """One warp: every TMA load of the program (see the module's protocol). A box's
        bytes count in full, zero-filled parts too."""
        q_bytes: gl.constexpr = 2 * 64 * (DN + DR) * 2  # 16-bit elements
        k_bytes: gl.constexpr = BLOCK_N * (DN + DR) * 2
        v_bytes: gl.constexpr = BLOCK_N * DV * 2
        mbarrier.expect(bars.index(0), q_bytes)
        for w in gl.static_range(2):
            tma.async_copy_global_to_shared(qn_desc, [b, h, start_m + 64 * w, 0], bars.index(0), qn_smem.index(w))
            tma.async_copy_global_to_shared(qr_desc, [b, h, start_m + 64 * w, 0], bars.index(0), qr_smem.index(w))
        for j in range(n_tiles):
            s = j % STAGES
            ph = (j // STAGES) & 1
            n0 = j * BLOCK_N
            mbarrier.wait(bars.index(1 + 2 * STAGES + s), ph ^ 1)
            mbarrier.expect(bars.index(1 + s), k_bytes)
            tma.async_copy_global_to_shared(kn_desc, [b, h, n0, 0], bars.index(1 + s), kn_smem.index(s))
            tma.async_copy_global_to_shared(kr_desc, [b, n0, 0], bars.index(1 + s), kr_smem.index(s))
            mbarrier.wait(bars.index(1 + 3 * STAGES + s), ph ^ 1)
            mbarrier.expect(bars.index(1 + STAGES + s), v_bytes)
            tma.async_copy_global_to_shared(v_desc, [b, h, n0, 0], bars.index(1 + STAGES + s), v_smem.index(s))

    @gluon.jit
    def _release(bars, k, s):
        """This warpgroup is done with stage s of ring k: every warp's wgmma retired (each
        waited), the partition barrier orders all four before the single arrive."""
        cta_barrier()
        mbarrier.arrive(bars.index(k + s))

    @gluon.jit
    def _turn_begin(bars, t, wg, STAGES: gl.constexpr, PINGPONG: gl.constexpr):
        """Ping-pong: this warpgroup's turn t at the tensor cores starts once the other one
        has issued its turn t - 1 (warpgroup 1) or t (warpgroup 0 waits for the previous one:
        parity ^ 1, so its turn 0 starts at once). Scheduling only: no data rides on it."""
        if PINGPONG:
            mbarrier.wait(bars.index(1 + 4 * STAGES + wg), (t & 1) ^ (1 - wg))

    @gluon.jit
    def _turn_end(bars, wg, STAGES: gl.constexpr, PINGPONG: gl.constexpr):
        """Ping-pong: this warpgroup issued its GEMMs of the turn; the other one may go."""
        if PINGPONG:
            mbarrier.arrive(bars.index(1 + 4 * STAGES + 1 - wg))

    @gluon.jit
    def _scores(q_t, qr_t, kn_smem, kr_smem, s, SL: gl.constexpr, BLOCK_N: gl.constexpr):
        """q_nope k_nope^T + q_pe k_pe^T of stage s, issued async (two wgmma groups)."""
        DNc: gl.constexpr = kn_smem.shape[4]
        DRc: gl.constexpr = kr_smem.shape[3]
        kn = kn_smem.index(s).reshape([BLOCK_N, DNc])
        kr = kr_smem.index(s).reshape([BLOCK_N, DRc])
        acc = warpgroup_mma(q_t, kn.permute((1, 0)), gl.zeros([64, BLOCK_N], gl.float32, layout=SL),
                            use_acc=False, is_async=True)
        return warpgroup_mma(qr_t, kr.permute((1, 0)), acc, is_async=True)

    @gluon.jit
    def _softmax(qk, m_i, j, full_tiles, rows, Sk, qk_scale, SL: gl.constexpr, BLOCK_N: gl.constexpr,
                 CAUSAL: gl.constexpr, POS_SCALE: gl.constexpr):
        """The Triton kernel's step in the log2 domain: -> p, alpha, m_new. Tiles from
        `full_tiles` on cross the diagonal or the end of the keys and are masked; every
        row sees key 0 in tile 0 (visited first), so m stays finite."""
        if j >= full_tiles:
            cols = j * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, SL))
            ok = (cols < Sk)[None, :]
            if CAUSAL:
                ok = ok & (cols[None, :] <= rows[:, None])
            s = gl.where(ok, qk * qk_scale, float("-inf"))
            m_new = gl.maximum(m_i, gl.max(s, 1))
            p = gl.exp2(s - m_new[:, None])
        else:
            # the row max of qk * scale is (max or min of qk) * scale, exactly (rounding is
            # monotonic); then scale and subtract are one FMA
            if POS_SCALE:
                m_new = gl.maximum(m_i, gl.max(qk, 1) * qk_scale)
            else:
                m_new = gl.maximum(m_i, gl.min(qk, 1) * qk_scale)
            p = gl.exp2(qk * qk_scale - m_new[:, None])
        alpha = gl.exp2(m_i - m_new)
        return p, alpha, m_new

    @gluon.jit
    def _consumer(qn_smem, qr_smem, kn_smem, kr_smem, v_smem, bars, O, so_b, so_h, so_m, so_d,
                  b, h, start_m, wg, n_tiles, full_tiles, Sq, Sk, qk_scale,
                  BLOCK_N: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr,
                  POS_SCALE: gl.constexpr, PINGPONG: gl.constexpr):
        """One warpgroup: query rows [start_m + 64 wg, + 64) against every visited key tile."""
        DNc: gl.constexpr = qn_smem.shape[4]
        DRc: gl.constexpr = qr_smem.shape[4]
        DVc: gl.constexpr = v_smem.shape[4]
        SL: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                     instr_shape=[16, BLOCK_N, 16])
        AL: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                     instr_shape=[16, DVc, 16])
        PL: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=AL, k_width=2)
        dt: gl.constexpr = v_smem.dtype
        rows = start_m + 64 * wg + gl.arange(0, 64, layout=gl.SliceLayout(1, SL))
        q_t = qn_smem.index(wg).reshape([64, DNc])
        qr_t = qr_smem.index(wg).reshape([64, DRc])
        mbarrier.wait(bars.index(0), 0)

        # tile 0: scores, then its softmax (nothing to overlap yet)
        _turn_begin(bars, 0, wg, STAGES, PINGPONG)
        mbarrier.wait(bars.index(1), 0)
        qk = _scores(q_t, qr_t, kn_smem, kr_smem, 0, SL, BLOCK_N)
        _turn_end(bars, wg, STAGES, PINGPONG)
        qk = warpgroup_mma_wait(0, deps=[qk])
        _release(bars, 1 + 2 * STAGES, 0)
        m_i = gl.full([64], float("-inf"), gl.float32, layout=gl.SliceLayout(1, SL))
        p, alpha, m_i = _softmax(qk, m_i, 0, full_tiles, rows, Sk, qk_scale, SL, BLOCK_N, CAUSAL, POS_SCALE)
        l_i = gl.sum(p, 1)
        p_op = gl.convert_layout(p.to(dt), PL)
        acc = gl.zeros([64, DVc], gl.float32, layout=AL)

        for j in range(1, n_tiles):
            s = j % STAGES
            sp = (j - 1) % STAGES
            _turn_begin(bars, j, wg, STAGES, PINGPONG)
            mbarrier.wait(bars.index(1 + s), (j // STAGES) & 1)
            qk = _scores(q_t, qr_t, kn_smem, kr_smem, s, SL, BLOCK_N)   # S(j)
            mbarrier.wait(bars.index(1 + STAGES + sp), ((j - 1) // STAGES) & 1)
            vt = v_smem.index(sp).reshape([BLOCK_N, DVc])
            acc = warpgroup_mma(p_op, vt, acc, is_async=True)           # O += P(j-1) V(j-1)
            _turn_end(bars, wg, STAGES, PINGPONG)
            qk = warpgroup_mma_wait(1, deps=[qk])                       # S(j) retired; PV may run
            _release(bars, 1 + 2 * STAGES, s)
            p, alpha, m_i = _softmax(qk, m_i, j, full_tiles, rows, Sk, qk_scale, SL, BLOCK_N,
                                     CAUSAL, POS_SCALE)                  # overlaps PV(j-1)
            l_i = l_i * alpha + gl.sum(p, 1)
            acc, p_op = warpgroup_mma_wait(0, deps=[acc, p_op])         # PV(j-1) retired
            _release(bars, 1 + 3 * STAGES, sp)
            acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, AL))[:, None]
            p_op = gl.convert_layout(p.to(dt), PL)

        sl = (n_tiles - 1) % STAGES
        _turn_begin(bars, n_tiles, wg, STAGES, PINGPONG)
        mbarrier.wait(bars.index(1 + STAGES + sl), ((n_tiles - 1) // STAGES) & 1)
        acc = warpgroup_mma(p_op, v_smem.index(sl).reshape([BLOCK_N, DVc]), acc, is_async=True)
        _turn_end(bars, wg, STAGES, PINGPONG)
        acc, p_op = warpgroup_mma_wait(0, deps=[acc, p_op])

        l_a = gl.convert_layout(l_i, gl.SliceLayout(1, AL))
        out = acc / l_a[:, None]  # every row saw key 0: l > 0
        ra = start_m + 64 * wg + gl.arange(0, 64, layout=gl.SliceLayout(1, AL))
        ca = gl.arange(0, DVc, layout=gl.SliceLayout(0, AL))
        o_ptrs = (O + b.to(gl.int64) * so_b + h.to(gl.int64) * so_h + ra.to(gl.int64)[:, None] * so_m
                  + ca[None, :] * so_d)
        gl.store(o_ptrs, out.to(O.dtype.element_ty), mask=(ra < Sq)[:, None])

    @gluon.jit(do_not_specialize=["Sq", "Sk"])
    def gluon_prefill(qn_desc, qr_desc, kn_desc, kr_desc, v_desc, O, so_b, so_h, so_m, so_d,
                      H, Sq, Sk, qk_scale, DN: gl.constexpr, DR: gl.constexpr, DV: gl.constexpr,
                      BLOCK_N: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr,
                      POS_SCALE: gl.constexpr, PINGPONG: gl.constexpr):
        qk_scale = gl.cast(qk_scale, gl.float32)  # may arrive as fp64
        pid_m = gl.num_programs(0) - 1 - gl.program_id(0)  # heavy (late) query tiles first
        pid_bh = gl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        start_m = pid_m * 128

        dt: gl.constexpr = qn_desc.dtype
        # boxes as the descriptors' (unit leading dims), one per consumer for q, STAGES deep for K / V
        qn_smem = gl.allocate_shared_memory(dt, [2, 1, 1, 64, DN], qn_desc.layout)
        qr_smem = gl.allocate_shared_memory(dt, [2, 1, 1, 64, DR], qr_desc.layout)
        kn_smem = gl.allocate_shared_memory(dt, [STAGES, 1, 1, BLOCK_N, DN], kn_desc.layout)
        kr_smem = gl.allocate_shared_memory(dt, [STAGES, 1, BLOCK_N, DR], kr_desc.layout)
        v_smem = gl.allocate_shared_memory(dt, [STAGES, 1, 1, BLOCK_N, DV], v_desc.layout)
        # [Q_FULL, K_FULL x STAGES, V_FULL x STAGES, K_EMPTY x STAGES, V_EMPTY x STAGES, TURN x 2]
        bars = gl.allocate_shared_memory(gl.int64, [1 + 4 * STAGES + 2, 1], mbarrier.MBarrierLayout())
        for k in gl.static_range(1 + 2 * STAGES):  # Q_FULL, K_FULL, V_FULL: the producer's expect
            mbarrier.init(bars.index(k), count=1)
        for k in gl.static_range(1 + 2 * STAGES, 1 + 4 * STAGES):  # K_EMPTY, V_EMPTY: one per consumer
            mbarrier.init(bars.index(k), count=2)
        for k in gl.static_range(1 + 4 * STAGES, 3 + 4 * STAGES):  # TURN: the other consumer's arrive
            mbarrier.init(bars.index(k), count=1)
        fence_async_shared()  # the barriers' init, before TMA (async proxy) completes on them
        cta_barrier()  # ... and before any partition uses them

        if CAUSAL:  # keys < full_end are visible to every row of the tile
            hi = gl.minimum(start_m + 128, Sk)
            full_end = gl.minimum(start_m + 1, Sk)
        else:
            hi = Sk
            full_end = Sk
        n_tiles = gl.cdiv(hi, BLOCK_N)
        full_tiles = full_end // BLOCK_N

        gl.warp_specialize([
            (_consumer, (qn_smem, qr_smem, kn_smem, kr_smem, v_smem, bars, O, so_b, so_h, so_m, so_d,
                         b, h, start_m, 0, n_tiles, full_tiles, Sq, Sk, qk_scale, BLOCK_N, STAGES, CAUSAL,
                         POS_SCALE, PINGPONG)),
            (_consumer, (qn_smem, qr_smem, kn_smem, kr_smem, v_smem, bars, O, so_b, so_h, so_m, so_d,
                         b, h, start_m, 1, n_tiles, full_tiles, Sq, Sk, qk_scale, BLOCK_N, STAGES, CAUSAL,
                         POS_SCALE, PINGPONG)),
            (_producer, (qn_desc, qr_desc, kn_desc, kr_desc, v_desc, qn_smem, qr_smem, kn_smem, kr_smem,
                         v_smem, bars, b, h, start_m, n_tiles, DN, DR, DV, BLOCK_N, STAGES)),
        ], [4, 1], [CONSUMER_REGS_C, PRODUCER_REGS_C])


def descriptors(q_nope, q_pe, k_nope, k_pe, v, block_n: int = BLOCK_N):
    """Host-side TMA descriptors over the [B, H, S, D] (k_pe: [B, S, Dr]) views, zero
    padding past S; q in 64-row boxes (one per consumer warpgroup)."""
    def desc(t, block):
        return GluonDescriptor(t, list(t.shape), list(t.stride()), block, smem_layout(len(block)))

    return (desc(q_nope, [1, 1, 64, DN]), desc(q_pe, [1, 1, 64, DR]), desc(k_nope, [1, 1, block_n, DN]),
            desc(k_pe, [1, block_n, DR]), desc(v, [1, 1, block_n, DV]))


def gluon_prefill_attention(q_nope, q_pe, k_nope, k_pe, v, scale: float, causal: bool, out: torch.Tensor,
                            block_n: int = BLOCK_N, stages: int = STAGES, pingpong: bool = PINGPONG
                            ) -> torch.Tensor:
    """Run the program into `out` ([B, H, Sq, Dv], any strides); `applies` must hold."""
    B, H, Sq, _ = q_nope.shape
    Sk = k_nope.shape[2]
    grid = ((Sq + BLOCK_M - 1) // BLOCK_M, B * H)
    gluon_prefill[grid](*descriptors(q_nope, q_pe, k_nope, k_pe, v, block_n), out, *out.stride(),
                        H, Sq, Sk, float(scale) * _LOG2E, DN=DN, DR=DR, DV=DV, BLOCK_N=block_n, STAGES=stages,
                        CAUSAL=bool(causal), POS_SCALE=float(scale) >= 0, PINGPONG=bool(pingpong),
                        num_warps=WARPS)
    return out


__all__ = ["applies", "fits", "gluon_prefill_attention", "gluon_prefill", "descriptors", "BLOCK_M", "BLOCK_N"]
