"""The seesaw's key-tile copies (gluon_decode_seesaw.py) and the barrier phase each completes:
cp.async by the issuing partition's 128 threads, or TMA (issue 12: FlashMLA loads its key
tiles by TMA, off the compute warps' instruction stream), chosen by the TMA constexpr.

`fill` loads latent columns [0, R/2) (LEFT) and / or [R/2, R) with the rope (RIGHT) of keys
[n0, n0 + 64) of a work item ending at hi_key into one stage, and completes ONE phase of
one copy barrier (FULL0, FULL1L or FULL1R), whichever way it copied:

  cp.async variant (TMA False; barriers of count 128): masked cp.async (keys >= hi_key
    zero-filled, never read), then cp.async.mbarrier.arrive.noinc by each thread (it fires
    once that thread's copies landed). The waiter's proxy fence makes the bytes visible to
    wgmma (cp.async writes through the generic proxy).
  TMA variant (TMA True; barriers of count 1):
    a full tile (n0 + 64 <= hi_key, so every row read lies below the request's length):
      one mbarrier.expect(bytes) (the phase's single arrival + its transaction count),
      then the TMA boxes ([64, R/2] latent halves, [64, Dr] rope) completing the bytes on
      the same barrier. TMA writes through the async proxy, which wgmma reads: nothing to
      fence. Rows are those of the 2D views `tma_plan` describes.
    the tail tile (n0 + 64 > hi_key; also an odd tile count's tile past the keys): the
      masked cp.async as above (the rows past the length may be non-finite garbage in a
      paged cache, and 0 * NaN = NaN in p @ V: TMA must never load them), then
      cp.async.wait_group 0 (this thread's copies landed), fence.proxy.async (they reach
      the async proxy), a partition barrier (every thread's copies precede) and one
      mbarrier.arrive: the phase's single arrival, no transaction bytes (`signal`).
    the prologue's tile 1 (LANDED): the tail's path even when full (with TMA there too,
      ptxas spilled 300-480 bytes in the epilogue of some flag combinations; tile 0 by TMA
      is still in flight while these copies land).
  Either way a phase completes exactly once per fill, so the waiters' parities are the
  cp.async variant's. A TMA fill may overwrite a stage last written through the generic
  proxy (p0 over the rope columns): the writers fenced it in `signal` before the signal
  that the filler awaited.

`signal` / `wait_signal` are the partitions' release / acquire of one barrier phase (the
seesaw's "signal X" / "await X"); `page_of` reads a TMA fill's page a pair ahead.
No cache hint: Gluon's TMA load takes none in Triton 3.6 or 3.8 (FlashMLA uses EVICT_FIRST).
"""
from __future__ import annotations

import torch

from .launch import is_traced, tma_aligned

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import async_copy, fence_async_shared, mbarrier, tma
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor
except ImportError:  # no Gluon: the seesaw is never chosen
    gluon = None

KEYS = 64  # keys per tile
TMA_ROWS_MAX = 2**31 - 64  # TMA coordinates are int32


def smem_layout():
    """The key stages' shared-memory layout (16-bit rows of >= 128 bytes: 128-byte swizzle),
    which wgmma reads and the TMA boxes are written in."""
    return gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)


def _rows_view(t: torch.Tensor, batch: int, keys: int):
    """[B, Sk, D] keys as one [rows, D] view: key t of request b is row b * rpb + t, where
    rpb = stride(0) / stride(1) (0 at B = 1) -> (view, rpb), or None where the batch stride
    is not a whole number of rows."""
    sb, st = t.stride(0), t.stride(1)
    if st <= 0 or sb < 0 or (batch > 1 and sb % st != 0):
        return None
    rpb = sb // st if batch > 1 else 0
    rows = (batch - 1) * rpb + keys
    if rows > TMA_ROWS_MAX:
        return None
    return torch.as_strided(t, (rows, t.shape[-1]), (st, t.stride(-1)), t.storage_offset()), rpb


def tma_plan(c_kv, k_pe, paged, R: int, Dr: int, dtype=None):
    """Whether TMA can load the seesaw's full key tiles, and from what: -> (latent view
    [rows, R], rope view [rows, Dr], latent rows per request, rope rows per request), or
    None (the launcher then runs the cp.async copies: same numbers). The rows of a tile are
    consecutive: for NORMAL pages of a multiple of 64 tokens (a tile never straddles a
    page) the row of key t is block * page + t % page (per request 0 rows), for contiguous
    keys b * rpb + t. Needs 16-bit keys (of `dtype`, q's, where given: the boxes land in
    shared memory of q's type), R = 512, Dr = 64 (the boxes), and what TMA reads: unit last
    stride, 16-byte aligned base and row strides (`launch.tma_aligned`)."""
    if R != 512 or Dr != 64:
        return None
    if paged is not None:
        cache, _, _, page, (tt, _) = paged
        W = R + Dr
        if tt != 1 or page % KEYS != 0 or not cache.is_contiguous() or cache.numel() % W:
            return None  # SHUFFLE pages, tiles straddling pages, or pages not as the kernel reads them
        rows = cache.numel() // W
        if rows > TMA_ROWS_MAX:
            return None
        flat = cache.view(rows, W)
        views = (flat[:, :R], flat[:, R:], 0, 0)
    else:
        batch, keys = c_kv.shape[0], c_kv.shape[1]
        cv, kv = _rows_view(c_kv, batch, keys), _rows_view(k_pe, batch, keys)
        if cv is None or kv is None:
            return None
        views = (cv[0], kv[0], cv[1], kv[1])
    c, kr = views[0], views[1]
    if c.dtype not in (torch.float16, torch.bfloat16) or kr.dtype != c.dtype or dtype not in (None, c.dtype):
        return None
    if is_traced(c) or is_traced(kr):
        return None
    return views if tma_aligned(c) and tma_aligned(kr) else None


def tma_descriptors(plan):
    """Host TMA descriptors of `tma_plan`'s views: [64, R/2] latent halves, [64, Dr] rope."""
    c, kr = plan[0], plan[1]
    return (GluonDescriptor(c, list(c.shape), list(c.stride()), [KEYS, c.shape[1] // 2], smem_layout()),
            GluonDescriptor(kr, list(kr.shape), list(kr.stride()), [KEYS, kr.shape[1]], smem_layout()))


if gluon is not None:
    from ..compat import GLUON_CTA_BARRIER as cta_barrier

    @gluon.jit
    def signal(bars, k: gl.constexpr):
        """Release this partition's shared-memory writes to the other partition: every
        thread's writes are fenced (generic -> async proxy, for wgmma readers) and
        ordered before the single arrive by the partition-wide barrier."""
        fence_async_shared()
        cta_barrier()
        mbarrier.arrive(bars.index(k))

    @gluon.jit
    def wait_signal(bars, k: gl.constexpr, phase):
        """Acquire the other side's writes; the proxy fence orders them before this thread's
        wgmma reads (cp.async data has no writer thread left to fence it)."""
        mbarrier.wait(bars.index(k), phase)
        fence_async_shared()

    @gluon.jit
    def _copy_part(C, KR, TABLE, c_part, kr_buf, b, n0, hi_key, st_b, sc_b, sc_t, skr_b, skr_t,
                   COL0: gl.constexpr, ROPE: gl.constexpr, R: gl.constexpr, DR: gl.constexpr,
                   PAGED: gl.constexpr, PAGE: gl.constexpr):
        """cp.async (one partition: 4 warps) of latent columns [COL0, COL0 + R/2) of keys
        [n0, n0 + 64), and with ROPE their rope part; keys at or past hi_key are
        zero-filled, never read (as gluon_decode._issue_tile)."""
        LC: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [4, 1], [1, 0])
        LR: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
        tc = n0 + gl.arange(0, 64, layout=gl.SliceLayout(1, LC))
        cc = COL0 + gl.arange(0, R // 2, layout=gl.SliceLayout(0, LC))
        if PAGED:  # NORMAL pages of whole tiles: one page number per tile (a scalar base,
            # 32-bit offsets within the page: fewer registers than 64-bit addresses per row)
            blk = gl.load(TABLE + b * st_b + n0 // PAGE, mask=n0 < hi_key, other=0).to(gl.int64)
            page_base = C + blk * (PAGE * (R + DR))
            src_c = page_base + ((tc % PAGE) * (R + DR))[:, None] + cc[None, :]
        else:
            src_c = C + b * sc_b + tc.to(gl.int64)[:, None] * sc_t + cc[None, :]
        async_copy.async_copy_global_to_shared(c_part, src_c, mask=(tc < hi_key)[:, None] & (cc < R)[None, :])
        if ROPE:
            tr = n0 + gl.arange(0, 64, layout=gl.SliceLayout(1, LR))
            cr = gl.arange(0, DR, layout=gl.SliceLayout(0, LR))
            if PAGED:
                src_r = page_base + ((tr % PAGE) * (R + DR) + R)[:, None] + cr[None, :]
            else:
                src_r = KR + b * skr_b + tr.to(gl.int64)[:, None] * skr_t + cr[None, :]
            async_copy.async_copy_global_to_shared(kr_buf, src_r, mask=(tr < hi_key)[:, None] & (cr < DR)[None, :])

    @gluon.jit
    def _copy_parts(C, KR, TABLE, c_st, kr_st, b, n0, hi_key, st_b, sc_b, sc_t, skr_b, skr_t,
                    LEFT: gl.constexpr, RIGHT: gl.constexpr, R: gl.constexpr, DR: gl.constexpr,
                    PAGED: gl.constexpr, PAGE: gl.constexpr):
        """The masked cp.async of `fill`'s parts (left half; right half and rope)."""
        HALF: gl.constexpr = R // 2
        if LEFT:
            _copy_part(C, KR, TABLE, c_st.slice(0, HALF, dim=1), kr_st, b, n0, hi_key, st_b,
                       sc_b, sc_t, skr_b, skr_t, 0, False, R, DR, PAGED, PAGE)
        if RIGHT:
            _copy_part(C, KR, TABLE, c_st.slice(HALF, HALF, dim=1), kr_st, b, n0, hi_key, st_b,
                       sc_b, sc_t, skr_b, skr_t, HALF, True, R, DR, PAGED, PAGE)

    @gluon.jit
    def _fill_landed(C, KR, TABLE, c_st, kr_st, bars, k: gl.constexpr, b, n0, hi_key, st_b,
                     sc_b, sc_t, skr_b, skr_t, LEFT: gl.constexpr, RIGHT: gl.constexpr, R: gl.constexpr,
                     DR: gl.constexpr, PAGED: gl.constexpr, PAGE: gl.constexpr):
        """The TMA protocol's cp.async fill: masked copies, landed (wait_group 0), fenced, then
        the phase's one arrive after a partition barrier (`signal`)."""
        _copy_parts(C, KR, TABLE, c_st, kr_st, b, n0, hi_key, st_b, sc_b, sc_t, skr_b, skr_t,
                    LEFT, RIGHT, R, DR, PAGED, PAGE)
        async_copy.commit_group()
        async_copy.wait_group(0)
        signal(bars, k)

    @gluon.jit
    def page_of(TABLE, b, st_b, n0, hi_key, PAGED: gl.constexpr, PAGE: gl.constexpr, TMA: gl.constexpr):
        """The page of keys [n0, n0 + 64) for a TMA `fill` (0 past the keys, or without pages
        or TMA). The loops read it a pair ahead of its fill: a table read where the fill is
        issued stalled the issuing warpgroup, between its wgmma, on the load's latency."""
        if PAGED and TMA:
            return gl.load(TABLE + b * st_b + n0 // PAGE, mask=n0 < hi_key, other=0)
        else:
            return 0

    @gluon.jit
    def fill(C, KR, CD, KRD, TABLE, c_st, kr_st, bars, k: gl.constexpr, b, n0, hi_key, st_b,
             sc_b, sc_t, skr_b, skr_t, c_rpb, kr_rpb, blk,
             LEFT: gl.constexpr, RIGHT: gl.constexpr, R: gl.constexpr, DR: gl.constexpr,
             PAGED: gl.constexpr, PAGE: gl.constexpr, TMA: gl.constexpr, LANDED: gl.constexpr = False):
        """Keys [n0, n0 + 64) into stage (c_st, kr_st): latent columns [0, R/2) with LEFT,
        [R/2, R) and the rope with RIGHT; completes one phase of barrier k (module docstring).
        `blk`: `page_of(n0)` (a TMA fill of pages reads no table itself). LANDED (TMA
        protocol only): cp.async even for a full tile (the prologue's tile 1: with TMA there
        too, the program spilled 300-480 bytes in its epilogue)."""
        HALF: gl.constexpr = R // 2
        bar = bars.index(k)
        if TMA and not LANDED:
            if n0 + 64 <= hi_key:  # a full tile: every row lies below the request's length
                nbytes: gl.constexpr = 64 * (HALF * (LEFT + RIGHT) + DR * RIGHT) * (c_st.dtype.primitive_bitwidth // 8)
                if PAGED:  # a tile never straddles a page (PAGE % 64 == 0)
                    row_c = (blk * PAGE + n0 % PAGE).to(gl.int32)
                    row_r = row_c
                else:
                    row_c = (b * c_rpb + n0).to(gl.int32)
                    row_r = (b * kr_rpb + n0).to(gl.int32)
                mbarrier.expect(bar, nbytes)
                if LEFT:
                    tma.async_copy_global_to_shared(CD, [row_c, 0], bar, c_st.slice(0, HALF, dim=1))
                if RIGHT:
                    tma.async_copy_global_to_shared(CD, [row_c, HALF], bar, c_st.slice(HALF, HALF, dim=1))
                    tma.async_copy_global_to_shared(KRD, [row_r, 0], bar, kr_st)
            else:  # the tail: rows past the length may be garbage, TMA must not load them
                _fill_landed(C, KR, TABLE, c_st, kr_st, bars, k, b, n0, hi_key, st_b, sc_b, sc_t, skr_b, skr_t,
                             LEFT, RIGHT, R, DR, PAGED, PAGE)
        elif TMA:
            _fill_landed(C, KR, TABLE, c_st, kr_st, bars, k, b, n0, hi_key, st_b, sc_b, sc_t, skr_b, skr_t,
                         LEFT, RIGHT, R, DR, PAGED, PAGE)
        else:
            _copy_parts(C, KR, TABLE, c_st, kr_st, b, n0, hi_key, st_b, sc_b, sc_t, skr_b, skr_t,
                        LEFT, RIGHT, R, DR, PAGED, PAGE)
            async_copy.mbarrier_arrive(bar, increment_count=False)


__all__ = ["tma_plan", "tma_descriptors", "smem_layout", "KEYS", "page_of", "fill", "signal", "wait_signal"]
