"""`gluon_split` (gluon_decode.py) with FlashMLA's SM90 "seesaw" schedule (issue 12):
two warp-specialised warpgroups, each owning half of the output columns, taking turns
at the scores, so one warpgroup's softmax runs while the other's wgmma keep the tensor
cores busy (FlashMLA docs/20250422-new-kernel-deep-dive.md; the design, not its code).

Same arguments, constexprs, partials and outputs as `gluon_split`; the launcher
(triton_decode_wide.py) runs it with `gluon_program="seesaw"` (num_warps=4: the default
partition; `gl.warp_specialize` adds the worker's 4).

Work split. Keys go in pairs of 64-key tiles: tile 2i in stage 0, 2i+1 in stage 1.
wg0 (default partition) computes S(2i) = q K(2i)^T, all 64 keys (one N = 64 wgmma
reading q once for 64 keys; gluon_split read all of q per warpgroup for 32), and owns
output columns [0, 256); wg1 (worker) computes S(2i+1) and owns [256, 512). The online
softmax is gluon_split's recurrence, tile after tile, split across the two:
  wg0: m0 = max(m, max S(2i)), a0 = exp(m - m0), p0 = exp(S(2i) - m0)
  wg1: m1 = max(m0, max S(2i+1)), a1 = exp(m0 - m1), p1 = exp(S(2i+1) - m1)
  both: O_half = (O_half a0 + p0 V(2i)_half) a1 + p1 V(2i+1)_half   (gluon_split's order)
  sums: l0 = (l0 a0 + sum p0) a1 (wg0), l1 = l1 a0 a1 + sum p1 (wg1); l = l0 + l1 at the
        end, which is gluon_split's l by linearity (the sink's 1 starts in l0).
Both warpgroups apply the same a0 then a1, computed once and exchanged through shared
memory, so the halves of a row never disagree on the max. m stays wg0's running max
(it reads m1 back each pair).

Shared memory (bf16): q 64 KB + rope 8 KB, two key stages 2 x 72 KB, p1 8 KB, exchange
2 KB (fp32 [8 x 64]: m0, a0, m1, a1, l0, l1, zeros), 7 mbarriers: 231,692 bytes of the
232,448 (227 KB). p0 lives over tile 2i's rope columns (only S(2i) reads them, and it
has retired when p0 is written); p1 cannot live over tile 2i+1's rope columns, since
wg1 refills those before wg0's last read of p1, hence its own 8 KB.

Schedule of pair i (ph = i & 1; "signal X" = fence.proxy.async (the writes reach wgmma's
async proxy), partition barrier (every thread's writes precede), one mbarrier.arrive
(release); "await X" = mbarrier.wait (acquire, every thread) then fence.proxy.async):

  wg0                                         wg1
  await FULL0                                 await FULL1R; S(2i+1) rope, cols [256, 512)
  S(2i) async; wait(0)                        await FULL1L; S(2i+1) cols [0, 256); wait(0)
  softmax -> m0, a0, p0; write m0, a0 and     mask
    p0 (over K(2i)'s rope); signal M0_READY   await M0_READY; read m0, a0
  O *= a0; PV(2i)[:, :256] async              O *= a0; PV(2i)[:, 256:] async (reads p0)
                                              softmax -> m1, a1, p1 (over PV(2i)); write
                                                m1, a1, p1; wait(0)  (PV(2i) retired)
  await S1_READY; read a1, m1                 signal S1_READY
  wait(0)  (PV(2i) retired)                   O *= a1; PV(2i+1)[:, 256:] async; wait(0)
  O *= a1; PV(2i+1)[:, :256] async            copy tile 2i+3 cols [256, 512) + rope ->
  copy tile 2i+2 -> stage 0, arrive FULL0       stage 1, arrive FULL1R
    (its issue overlaps PV(2i+1)); wait(0)
  copy tile 2i+3 cols [0, 256) -> stage 1,
    arrive FULL1L

Why each wait / signal is there (a missing one is a silent wrong answer):
- FULL0 / FULL1L / FULL1R: the copies are cp.async by the 128 threads of one partition,
  each followed by cp.async.mbarrier.arrive.noinc (the arrival fires when all of that
  thread's earlier copies landed; count 128). The waiter's proxy fence orders the landed
  bytes before its wgmma (a cp.async has no writer thread left to fence it).
  With TMA (the TMA constexpr, the default where `tma_plan` applies: SEESAW_TMA) the
  three barriers count ONE arrival per phase, whichever way the tile was filled: a full
  tile (n0 + 64 <= hi_key) is one mbarrier.expect(bytes) + TMA boxes completing those
  bytes (async proxy, as wgmma: no fence needed, the waiter's is harmless); the tail tile
  (rows past the length may be NaN garbage: TMA must never load them) is masked cp.async,
  then cp.async.wait_group 0, fence.proxy.async, partition barrier, one arrive (`signal`).
  Mixing the two per phase would break the count (128 vs 1): `fill` does one or the other.
  A stage refilled by TMA after p0 was stored over its rope columns (generic proxy): wg0
  fenced those stores in `signal(M0_READY)` before the refill, in program order.
  wg1 reads stage 0's columns [256, 512) and p0 without awaiting FULL0: M0_READY is
  signalled after wg0 awaited FULL0 and wrote p0, and acquire / release is transitive.
  wg0 reads stage 1's columns [0, 256) (PV(2i+1)) behind S1_READY, signalled after wg1
  awaited FULL1L.
- M0_READY: m0, a0 and p0 are written before wg1 reads them (RAW).
- S1_READY: m1, a1, p1 written (RAW for wg0); and wg1's PV(2i) has retired (its wait(0)
  precedes the signal), so when wg0 refills stage 0 after awaiting it, no wgmma of
  either warpgroup still reads stage 0 or p0 (wg0's own S(2i) and PV(2i) retired at its
  own waits). WAR on the exchange: wg1 read m0 / a0 before S1_READY, so wg0's next
  writes (pair i+1, after awaiting S1_READY(i)) cannot overtake them.
- p1 (WAR): wg1 rewrites it in pair i+1 only after awaiting M0_READY(i+1), which wg0
  signals after its PV(2i+1) of pair i retired (wait(0) at the end of pair i); wg1's own
  PV(2i+1) retired at its own wait. Likewise wg0 reads m1 / a1 before signalling
  M0_READY(i+1), so wg1's next writes of them come after.
- Stage 1's columns [0, 256) are read by wg1's S(2i+1) (retired before S1_READY) and
  wg0's PV(2i+1) (retired at wg0's wait): wg0 refills them. Columns [256, 512) and the
  rope are read only by wg1 (S(2i+1), PV(2i+1)): wg1 refills them after its wait.
- Each barrier completes once per pair and no signaller can run a phase ahead of its
  waiter (every refill or signal of pair i+1 sits behind a wait on the other partition's
  signal of pair i), so parity i & 1 names the phase.
- L0_READY / L1_READY (once, at the end): the split running sums.
- The q stores and the barrier init precede the warp-specialised region; its entry is a
  CTA-wide bar.sync (Triton's warp_specialize lowering), the stores were fenced before.
The mbarrier arrive of `signal` is one thread's (Triton predicates it on the first
thread), hence the partition barrier before it; the waits are every thread's.

Off the copies' path: the TMA fills of pages take their page numbers read a pair ahead
(`page_of`; read at the fill, the table load stalled the filling warpgroup between its
wgmma: paged ran 1-6% behind contiguous keys, now level), and pair 0's copies are issued
before q is read, so q's loads overlap them (with TMA tile 1 is copied after q: LANDED).

Pairs, not tiles: an odd tile count leaves tile 2i+1 of the last pair past the keys; it
is zero-filled (the masked cp.async copies, with TMA too: it is no full tile), wg1 skips its score wgmma (scores all masked: -inf),
so p1 = 0, m1 = m0 and a1 = 1 (or a1 = 0 while nothing is visible, when O and l are 0):
the results of gluon_split, at the price of two idle 64 x 256 x 64 wgmma (PV on p1 = 0).
Its copies are still awaited, so the barriers' phases and wg0's PV read landed zeros.
An empty split runs no pair (no copies issued, none awaited). Copies are issued only for
pairs that run, and every one is awaited, so none is in flight at exit.

Registers: wgmma descriptors (64-bit, ~80 per partition) built from loop-invariant
shared-memory views were hoisted out of the loop and spilled; the views are indexed by a
zero read from shared memory each pair (`_opaque_zero`), so they are rebuilt in the loop.
Both partitions run at 256 registers (setmaxnreg; 2 x 128 threads x 256 = the whole
65,536 register file). Offline (benchmarks/compile_gluon_seesaw.py, Triton 3.6, ptxas
sm_90a, session 11's code): 255 registers; 0 bytes spilled with TMA (contiguous, pages,
DIRECT), 20 with TMA + pages + BALANCED, 48-56 with every flag on, 8-12 for cp.async
pages; in the BALANCED + TMA + pages build the local loads and stores sit before the
default partition's pair loop and in its epilogue, none in the worker partition. 44
wgmma per pair in each partition (S: 36 k-steps of 16, PV: 2 x 4); shared memory
231,676-231,756 bytes; 9 TMA copy sites (Triton splits each [64, 256] box into four
[64, 64] messages, one per warp of the issuing partition). Moving the per-row math to
gluon_seesaw_rows.py left the SASS instructions unchanged (diffed, three builds).

Measured on the H200 (2026-12-01, benchmarks/RESULTS.md): the GPU tests pass (masks,
causal, sinks, empty rows, ragged pages with poisoned free slots, 31 and 64 tiles against
gluon_split, TMA bitwise against cp.async), and it is the fastest program at 64-128 heads,
batch >= 32 (8-15% ahead of the pipelined one): the default from 4096 rows, 1024 at 128
heads (`gluon_programs`); TMA copies 1.05-1.13x the cp.async ones.
"""
from __future__ import annotations

from .gluon_decode import gluon

WARPS = 4  # the default partition (warpgroup 0); the worker partition adds 4 more
SEESAW_TMA = True  # full key tiles by TMA (gluon_seesaw_copy.py) where `tma_plan` applies: 1.05-1.12x (H200)

if gluon is not None:
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared, mbarrier, warpgroup_mma, warpgroup_mma_wait)

    from ..compat import GLUON_CTA_BARRIER as cta_barrier
    from .decode_schedule import gluon_work_item
    from .gluon_seesaw_copy import fill, page_of, signal, wait_signal
    from .gluon_seesaw_rows import masked_scores, online_step, store_half

    WORKER_REGS = gl.constexpr(256)  # setmaxnreg of the worker partition (warpgroup 1)
    # mbarriers (each completes once per key-tile pair, so pair i waits phase i & 1)
    FULL0 = gl.constexpr(0)     # key tile 2i landed (copies: 128 arrivals, one per issuing thread)
    FULL1L = gl.constexpr(1)    # key tile 2i+1, latent columns [0, R/2)
    FULL1R = gl.constexpr(2)    # key tile 2i+1, latent columns [R/2, R) and rope
    M0_READY = gl.constexpr(3)  # wg0 -> wg1: max, rescale and p of tile 2i
    S1_READY = gl.constexpr(4)  # wg1 -> wg0: max, rescale and p of tile 2i+1; wg1 is done with stage 0
    L0_READY = gl.constexpr(5)  # once, at the end: wg0's running sum
    L1_READY = gl.constexpr(6)  # once, at the end: wg1's running sum
    N_BARS = gl.constexpr(7)
    N_COPY_BARS = gl.constexpr(3)
    # 64-float slots of the exchange buffer (fp32 [8 * 64])
    XM0 = gl.constexpr(0)
    XA0 = gl.constexpr(1)
    XM1 = gl.constexpr(2)
    XA1 = gl.constexpr(3)
    XL0 = gl.constexpr(4)
    XL1 = gl.constexpr(5)
    XZERO = gl.constexpr(6)  # zeros (see _opaque_zero)

    @gluon.jit
    def _opaque_zero(xch):
        """0, read from shared memory every iteration (XZERO holds zeros): shared-memory views
        indexed by it are rebuilt in the loop, so the ~80 wgmma descriptors (64-bit each)
        derived from them are not hoisted out of the loop into registers, where they spilled."""
        ZL: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
        return gl.max(xch.slice(XZERO * 64, 1).load(ZL), 0).to(gl.int32)  # one element: no cross-warp reduction

    @gluon.jit
    def _wg0(q_smem, qr_smem, c_smem, kr_smem, p1_smem, xch, bars,
             C, KR, MK, O, OP, ST, TABLE, SINKS, SCHED, sc_b, sc_t, skr_b, skr_t,
             smk_b, smk_h, smk_q, smk_n, so_b, so_h, so_q, so_r, st_b,
             H, Sq, lo, hi_key, n_tiles, scale, pid, slot, b, CD, KRD, c_rpb, kr_rpb,
             R: gl.constexpr, DR: gl.constexpr, CAUSAL: gl.constexpr, MASK: gl.constexpr,
             DIRECT: gl.constexpr, ZERO_EMPTY: gl.constexpr, PAGED: gl.constexpr, PAGE: gl.constexpr,
             SINK: gl.constexpr, BALANCED: gl.constexpr, TMA: gl.constexpr):
        """Warpgroup 0: scores and softmax of the even tiles, output columns [0, R/2)."""
        SL: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 64, 16])
        AL: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 256, 16])
        dt: gl.constexpr = c_smem.dtype
        HALF: gl.constexpr = R // 2
        rows = pid * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, SL))
        m_i = gl.full([64], float("-inf"), gl.float32, layout=gl.SliceLayout(1, SL))
        l_i = gl.zeros([64], gl.float32, layout=gl.SliceLayout(1, SL))
        if SINK:  # a request's first split starts from the head's sink logit (a key with no value)
            sink = gl.load(SINKS + rows % H, mask=rows < Sq * H, other=0.0).to(gl.float32)
            m_i = gl.where(lo == 0, sink, m_i)
            l_i = gl.where(lo == 0, 1.0, l_i)
        acc = gl.zeros([64, HALF], gl.float32, layout=AL)
        n_pairs = (n_tiles + 1) // 2
        for i in range(n_pairs):
            ph = i & 1
            n0 = lo + i * 128
            next0 = page_of(TABLE, b, st_b, n0 + 128, hi_key, PAGED, PAGE, TMA)  # read a pair ahead
            next1 = page_of(TABLE, b, st_b, n0 + 192, hi_key, PAGED, PAGE, TMA)
            z = _opaque_zero(xch)
            q_t = q_smem.index(z)
            c0 = c_smem.index(z)
            kr0 = kr_smem.index(z)
            c1 = c_smem.index(z + 1)
            wait_signal(bars, FULL0, ph)  # tile 2i (q was stored before the warp-specialised region)
            s = warpgroup_mma(qr_smem, kr0.permute((1, 0)), gl.zeros([64, 64], gl.float32, layout=SL),
                              use_acc=False, is_async=True)
            s = warpgroup_mma(q_t, c0.permute((1, 0)), s, is_async=True)
            s = warpgroup_mma_wait(0, deps=[s])  # S(2i) over all 64 keys; nothing else pending
            s = masked_scores(s, n0, hi_key, b, rows, MK, smk_b, smk_h, smk_q, smk_n, scale, H, Sq,
                               SL, CAUSAL, MASK)
            p, alpha0, m0 = online_step(s, m_i)
            xch.slice(XM0 * 64, 64).store(m0)
            xch.slice(XA0 * 64, 64).store(alpha0)
            kr0.store(p.to(dt))  # p(2i) over tile 2i's rope columns: S(2i), their only reader, retired
            signal(bars, M0_READY)
            l_i = l_i * alpha0 + gl.sum(p, 1)
            acc = acc * gl.convert_layout(alpha0, gl.SliceLayout(1, AL))[:, None]
            acc = warpgroup_mma(kr0, c0.slice(0, HALF, dim=1), acc, is_async=True)  # PV(2i), left
            wait_signal(bars, S1_READY, ph)  # tile 2i+1's max, rescale and p (wg1 wrote them)
            alpha1 = xch.slice(XA1 * 64, 64).load(gl.SliceLayout(1, SL))
            m_i = xch.slice(XM1 * 64, 64).load(gl.SliceLayout(1, SL))
            l_i = l_i * alpha1
            acc = warpgroup_mma_wait(0, deps=[acc])  # PV(2i) retired: acc and stage 0 free here
            acc = acc * gl.convert_layout(alpha1, gl.SliceLayout(1, AL))[:, None]
            acc = warpgroup_mma(p1_smem, c1.slice(0, HALF, dim=1), acc, is_async=True)  # PV(2i+1)
            if i + 1 < n_pairs:  # stage 0's readers all retired (wg1's PV(2i) before S1_READY)
                fill(C, KR, CD, KRD, TABLE, c0, kr0, bars, FULL0, b, n0 + 128, hi_key, st_b, sc_b, sc_t,
                     skr_b, skr_t, c_rpb, kr_rpb, next0, True, True, R, DR, PAGED, PAGE, TMA)
            acc = warpgroup_mma_wait(0, deps=[acc])
            if i + 1 < n_pairs:  # tile 2i+1's left columns: wg1's S(2i+1) retired before S1_READY
                fill(C, KR, CD, KRD, TABLE, c1, kr0, bars, FULL1L, b, n0 + 192, hi_key, st_b, sc_b, sc_t,
                     skr_b, skr_t, c_rpb, kr_rpb, next1, True, False, R, DR, PAGED, PAGE, TMA)

        # the running sum is split between the warpgroups: exchange, then both halves out
        xch.slice(XL0 * 64, 64).store(l_i)
        signal(bars, L0_READY)
        mbarrier.wait(bars.index(L1_READY), 0)
        l_i = l_i + xch.slice(XL1 * 64, 64).load(gl.SliceLayout(1, SL))
        store_half(acc, l_i, m_i, O, OP, ST, SCHED, b, pid, slot, H, Sq, so_b, so_h, so_q, so_r,
                   0, True, SL, AL, R, DIRECT, ZERO_EMPTY, BALANCED)

    @gluon.jit
    def _wg1(q_smem, qr_smem, c_smem, kr_smem, p1_smem, xch, bars,
             C, KR, MK, O, OP, ST, TABLE, SINKS, SCHED, sc_b, sc_t, skr_b, skr_t,
             smk_b, smk_h, smk_q, smk_n, so_b, so_h, so_q, so_r, st_b,
             H, Sq, lo, hi_key, n_tiles, scale, pid, slot, b, CD, KRD, c_rpb, kr_rpb,
             R: gl.constexpr, DR: gl.constexpr, CAUSAL: gl.constexpr, MASK: gl.constexpr,
             DIRECT: gl.constexpr, ZERO_EMPTY: gl.constexpr, PAGED: gl.constexpr, PAGE: gl.constexpr,
             SINK: gl.constexpr, BALANCED: gl.constexpr, TMA: gl.constexpr):
        """Warpgroup 1: scores and softmax of the odd tiles, output columns [R/2, R)."""
        SL: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 64, 16])
        AL: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 256, 16])
        dt: gl.constexpr = c_smem.dtype
        HALF: gl.constexpr = R // 2
        rows = pid * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, SL))
        l_i = gl.zeros([64], gl.float32, layout=gl.SliceLayout(1, SL))  # the sink's 1 is wg0's
        acc = gl.zeros([64, HALF], gl.float32, layout=AL)
        n_pairs = (n_tiles + 1) // 2
        for i in range(n_pairs):
            ph = i & 1
            n1 = lo + i * 128 + 64
            next1 = page_of(TABLE, b, st_b, n1 + 128, hi_key, PAGED, PAGE, TMA)  # read a pair ahead
            z = _opaque_zero(xch)
            q_t = q_smem.index(z)
            c0 = c_smem.index(z)
            kr0 = kr_smem.index(z)
            c1 = c_smem.index(z + 1)
            kr1 = kr_smem.index(z + 1)
            if n1 < hi_key:  # S(2i+1): the right columns and rope are refilled first (by this warpgroup)
                wait_signal(bars, FULL1R, ph)
                s = warpgroup_mma(qr_smem, kr1.permute((1, 0)), gl.zeros([64, 64], gl.float32, layout=SL),
                                  use_acc=False, is_async=True)
                s = warpgroup_mma(q_t.slice(HALF, HALF, dim=1), c1.slice(HALF, HALF, dim=1).permute((1, 0)),
                                  s, is_async=True)
                wait_signal(bars, FULL1L, ph)
                s = warpgroup_mma(q_t.slice(0, HALF, dim=1), c1.slice(0, HALF, dim=1).permute((1, 0)),
                                  s, is_async=True)
                s = warpgroup_mma_wait(0, deps=[s])
            else:  # an odd tile count's last tile, past the keys: all its scores are masked below;
                # its (zero-filled) copies are still awaited, wg0's PV(2i+1) reads the stage
                wait_signal(bars, FULL1R, ph)
                wait_signal(bars, FULL1L, ph)
                s = gl.zeros([64, 64], gl.float32, layout=SL)
            s = masked_scores(s, n1, hi_key, b, rows, MK, smk_b, smk_h, smk_q, smk_n, scale, H, Sq,
                               SL, CAUSAL, MASK)
            # tile 2i's max, rescale and p: PV(2i)'s right half runs during this softmax
            wait_signal(bars, M0_READY, ph)
            m0 = xch.slice(XM0 * 64, 64).load(gl.SliceLayout(1, SL))
            alpha0 = xch.slice(XA0 * 64, 64).load(gl.SliceLayout(1, SL))
            acc = acc * gl.convert_layout(alpha0, gl.SliceLayout(1, AL))[:, None]
            acc = warpgroup_mma(kr0, c0.slice(HALF, HALF, dim=1), acc, is_async=True)
            p, alpha1, m1 = online_step(s, m0)
            xch.slice(XM1 * 64, 64).store(m1)
            xch.slice(XA1 * 64, 64).store(alpha1)
            p1_smem.store(p.to(dt))
            l_i = l_i * (alpha0 * alpha1) + gl.sum(p, 1)
            acc = warpgroup_mma_wait(0, deps=[acc])  # PV(2i) right: stage 0 has no reader here
            signal(bars, S1_READY)
            acc = acc * gl.convert_layout(alpha1, gl.SliceLayout(1, AL))[:, None]
            acc = warpgroup_mma(p1_smem, c1.slice(HALF, HALF, dim=1), acc, is_async=True)  # PV(2i+1)
            acc = warpgroup_mma_wait(0, deps=[acc])
            if i + 1 < n_pairs:  # tile 2i+1's right columns and rope: only this warpgroup read them
                fill(C, KR, CD, KRD, TABLE, c1, kr1, bars, FULL1R, b, n1 + 128, hi_key, st_b, sc_b, sc_t,
                     skr_b, skr_t, c_rpb, kr_rpb, next1, False, True, R, DR, PAGED, PAGE, TMA)

        xch.slice(XL1 * 64, 64).store(l_i)
        signal(bars, L1_READY)
        mbarrier.wait(bars.index(L0_READY), 0)
        l_i = l_i + xch.slice(XL0 * 64, 64).load(gl.SliceLayout(1, SL))
        store_half(acc, l_i, l_i, O, OP, ST, SCHED, b, pid, slot, H, Sq, so_b, so_h, so_q, so_r,
                   HALF, False, SL, AL, R, DIRECT, ZERO_EMPTY, BALANCED)

    @gluon.jit
    def _tile1(C, KR, CD, KRD, TABLE, c_smem, kr_smem, bars, b, lo, hi_key, st_b, sc_b, sc_t, skr_b, skr_t,
               c_rpb, kr_rpb, R: gl.constexpr, DR: gl.constexpr, PAGED: gl.constexpr, PAGE: gl.constexpr,
               TMA: gl.constexpr):
        """The prologue's tile 1 into stage 1, in its two parts (FULL1R, FULL1L); with TMA by
        landed cp.async (`fill`'s LANDED)."""
        fill(C, KR, CD, KRD, TABLE, c_smem.index(1), kr_smem.index(1), bars, FULL1R, b, lo + 64, hi_key, st_b,
             sc_b, sc_t, skr_b, skr_t, c_rpb, kr_rpb, 0, False, True, R, DR, PAGED, PAGE, TMA, True)
        fill(C, KR, CD, KRD, TABLE, c_smem.index(1), kr_smem.index(1), bars, FULL1L, b, lo + 64, hi_key, st_b,
             sc_b, sc_t, skr_b, skr_t, c_rpb, kr_rpb, 0, True, False, R, DR, PAGED, PAGE, TMA, True)

    @gluon.jit
    def gluon_split_seesaw(
        QL, QR, C, KR, MK, O, OP, ST, TABLE, SEQ, SINKS, SCHED,
        sql_b, sql_h, sql_q, sql_r, sqr_b, sqr_h, sqr_q, sqr_d,
        sc_b, sc_t, sc_r, skr_b, skr_t, skr_d,
        smk_b, smk_h, smk_q, smk_n, so_b, so_h, so_q, so_r, st_b,
        H, Sq, Sk, keys_per_split, scale,
        R: gl.constexpr, DR: gl.constexpr,
        CAUSAL: gl.constexpr, MASK: gl.constexpr, DIRECT: gl.constexpr, ZERO_EMPTY: gl.constexpr,
        PAGED: gl.constexpr, PAGE: gl.constexpr, SINK: gl.constexpr, BALANCED: gl.constexpr,
        CD=None, KRD=None, c_rpb=0, kr_rpb=0, TMA: gl.constexpr = False,
    ):
        LQ: gl.constexpr = gl.BlockedLayout([1, 8], [16, 2], [4, 1], [1, 0])
        LR: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
        # the TMA boxes are written in this layout too (gluon_seesaw_copy.smem_layout: equal)
        SH: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        XS: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
        dt: gl.constexpr = QL.dtype.element_ty
        scale = gl.cast(scale, gl.float32)  # may arrive as fp64 (Inductor's launcher types floats so)
        pid = gl.program_id(0)
        b, lo, hi_key, slot = gluon_work_item(SCHED, SEQ, Sk, keys_per_split, PAGED, BALANCED)
        if BALANCED:
            if b < 0:  # an unused item
                return

        q_smem = gl.allocate_shared_memory(dt, [1, 64, R], SH)  # [1, ...]: indexed by _opaque_zero
        qr_smem = gl.allocate_shared_memory(dt, [64, DR], SH)
        c_smem = gl.allocate_shared_memory(dt, [2, 64, R], SH)
        kr_smem = gl.allocate_shared_memory(dt, [2, 64, DR], SH)
        p1_smem = gl.allocate_shared_memory(dt, [64, 64], SH)
        xch = gl.allocate_shared_memory(gl.float32, [8 * 64], XS)
        bars = gl.allocate_shared_memory(gl.int64, [N_BARS, 1], mbarrier.MBarrierLayout())
        if TMA:  # one arrival per fill: the expect of a TMA fill, the arrive after a tail's cp.async
            for k in gl.static_range(N_COPY_BARS):
                mbarrier.init(bars.index(k), count=1)
        else:  # the cp.async arrivals: one per thread of a partition
            for k in gl.static_range(N_COPY_BARS):
                mbarrier.init(bars.index(k), count=128)
        for k in gl.static_range(N_COPY_BARS, N_BARS):  # one arrive per signal
            mbarrier.init(bars.index(k), count=1)
        xch.slice(XZERO * 64, 64).store(gl.zeros([64], gl.float32, layout=gl.BlockedLayout([1], [32], [4], [0])))
        fence_async_shared()  # the barriers' init, before any (async) arrive on them
        cta_barrier()

        # pair 0's copies are issued before q is read, so they overlap its loads: tile 0, and
        # tile 1 in its two parts (with TMA tile 1 lands by cp.async, after q: `fill`'s LANDED)
        n_tiles = gl.cdiv(hi_key - lo, 64)
        if n_tiles > 0:
            fill(C, KR, CD, KRD, TABLE, c_smem.index(0), kr_smem.index(0), bars, FULL0, b, lo, hi_key, st_b,
                 sc_b, sc_t, skr_b, skr_t, c_rpb, kr_rpb, page_of(TABLE, b, st_b, lo, hi_key, PAGED, PAGE, TMA),
                 True, True, R, DR, PAGED, PAGE, TMA)
            if not TMA:
                _tile1(C, KR, CD, KRD, TABLE, c_smem, kr_smem, bars, b, lo, hi_key, st_b, sc_b, sc_t, skr_b, skr_t,
                       c_rpb, kr_rpb, R, DR, PAGED, PAGE, TMA)

        # q through registers in four column blocks (q's strides are not checked for cp.async);
        # the fence and the entry into the warp-specialised region order these stores before
        # either warpgroup's wgmma reads them
        rq = pid * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, LQ))
        rq_ok = rq < Sq * H
        q_rows = b * sql_b + (rq % H)[:, None] * sql_h + (rq // H)[:, None] * sql_q
        for part in gl.static_range(4):
            cq = part * (R // 4) + gl.arange(0, R // 4, layout=gl.SliceLayout(0, LQ))
            q_smem.index(0).slice(part * (R // 4), R // 4, dim=1).store(
                gl.load(QL + q_rows + cq[None, :] * sql_r, mask=rq_ok[:, None] & (cq < R)[None, :], other=0.0))
        rr = pid * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, LR))
        dq = gl.arange(0, DR, layout=gl.SliceLayout(0, LR))
        qr_smem.store(gl.load(QR + b * sqr_b + (rr % H)[:, None] * sqr_h + (rr // H)[:, None] * sqr_q
                              + dq[None, :] * sqr_d, mask=(rr < Sq * H)[:, None] & (dq < DR)[None, :], other=0.0))
        fence_async_shared()
        cta_barrier()

        if TMA:
            if n_tiles > 0:
                _tile1(C, KR, CD, KRD, TABLE, c_smem, kr_smem, bars, b, lo, hi_key, st_b, sc_b, sc_t, skr_b, skr_t,
                       c_rpb, kr_rpb, R, DR, PAGED, PAGE, TMA)

        # the tuples are written out in the call: assigned to a name, constexprs become tensors
        gl.warp_specialize([(_wg0, (q_smem, qr_smem, c_smem, kr_smem, p1_smem, xch, bars,
                C, KR, MK, O, OP, ST, TABLE, SINKS, SCHED, sc_b, sc_t, skr_b, skr_t,
                smk_b, smk_h, smk_q, smk_n, so_b, so_h, so_q, so_r, st_b,
                H, Sq, lo, hi_key, n_tiles, scale, pid, slot, b, CD, KRD, c_rpb, kr_rpb,
                R, DR, CAUSAL, MASK, DIRECT, ZERO_EMPTY, PAGED, PAGE, SINK, BALANCED, TMA)),
                            (_wg1, (q_smem, qr_smem, c_smem, kr_smem, p1_smem, xch, bars,
                C, KR, MK, O, OP, ST, TABLE, SINKS, SCHED, sc_b, sc_t, skr_b, skr_t,
                smk_b, smk_h, smk_q, smk_n, so_b, so_h, so_q, so_r, st_b,
                H, Sq, lo, hi_key, n_tiles, scale, pid, slot, b, CD, KRD, c_rpb, kr_rpb,
                R, DR, CAUSAL, MASK, DIRECT, ZERO_EMPTY, PAGED, PAGE, SINK, BALANCED, TMA))], [4], [WORKER_REGS])


__all__ = ["gluon_split_seesaw", "WARPS"]
