"""`mla.rope_cache_write` as one Triton launch (CUDA, or CPU tensors under TRITON_INTERPRET=1).

The grid is the row blocks of q_pe followed by the token blocks of the write:

  q programs      rotate BLOCK_R rows of q_pe into a NEW tensor (`triton_rope._rope_rows`):
                  q stays functional, the caller's q_pe is only read;
  token programs  for BLOCK_T tokens: copy the latent row and the rotated k_pe row into
                  the cache at each token's slot. The rotated k_pe never exists outside
                  registers: it is stored straight into the page. The same kernel
                  writes the DSA indexer's keys, whose rope dims come FIRST
                  ([RoPE(k[:, :rd]) | k[:, rd:]]): only where the two parts land moves.

Page addressing is `lowering.cache_layout.element_offset` with its (tt, vec) and the
page geometry as constexprs (NORMAL is tt = 1: a token's row is contiguous), so the
writer cannot disagree with the readers, which take the same (tt, vec) from the cache.
A slot outside [0, num_blocks * block_size) is skipped, never written: the eager op
rejects it before the launch; under CUDA graph capture (no host check there) it must
not write out of bounds.
"""
from __future__ import annotations

import functools

from .launch import launch
from .triton_rope import _bcast_strides, _config, _segment, fits_int32

try:
    import triton
    import triton.language as tl

    from .triton_rope import _rope_rows, _rotate
except ImportError:  # Triton is optional on CPU: the reference runs instead
    triton = None


if triton is not None:

    @triton.jit
    def _dim_offsets(d, TT: tl.constexpr, VEC: tl.constexpr):
        # element_offset's part that depends on the dim d (cache_layout.py)
        off = d
        if TT != 1:  # NORMAL (tt = 1, vec = width) is the identity: rows stay contiguous
            off = (d // VEC) * (TT * VEC) + d % VEC
        return off

    @triton.jit
    def _cache_rows(
        k_ptr, l_ptr, slot_ptr, cache_ptr, c_ptr, s_ptr, blk, T, n_slots,
        skt, skd, slt, sld, s_slot, sct, scd, sst, ssd,
        R: tl.constexpr, BLOCK_L: tl.constexpr, PAGE: tl.constexpr, WIDTH: tl.constexpr,
        TT: tl.constexpr, VEC: tl.constexpr, REST_AT: tl.constexpr, ROPE_AT: tl.constexpr,
        HALF: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
        INTERLEAVED_IN: tl.constexpr, INTERLEAVED_OUT: tl.constexpr,
        HALF_WIDTH: tl.constexpr, INT64: tl.constexpr,
    ):
        if INT64:
            rows = blk.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
        else:
            rows = blk * BLOCK_T + tl.arange(0, BLOCK_T)
        rmask = rows < T
        slot = tl.load(slot_ptr + rows * s_slot, mask=rmask, other=-1)
        ok = rmask & (slot >= 0) & (slot < n_slots)  # on the slot's own dtype, before any cast
        slot = tl.where(ok, slot, 0)
        if INT64:
            slot = slot.to(tl.int64)
        else:
            slot = slot.to(tl.int32)
        page = slot // PAGE
        tok = slot % PAGE
        # element_offset(tok, d) = base(tok) + _dim_offsets(d): (W // vec) * (tt * vec) = W * tt
        base = page * (PAGE * WIDTH) + (tok // TT) * (WIDTH * TT) + (tok % TT) * VEC
        out_ty = cache_ptr.dtype.element_ty

        # the rest (the latent): R dims from REST_AT
        dl = tl.arange(0, BLOCK_L)
        lm = ok[:, None] & (dl[None, :] < R)
        lat = tl.load(l_ptr + rows[:, None] * slt + dl[None, :] * sld, mask=lm, other=0.0,
                      eviction_policy="evict_first")
        tl.store(cache_ptr + base[:, None] + _dim_offsets(REST_AT + dl, TT, VEC)[None, :], lat.to(out_ty),
                 mask=lm)

        # the rotated k_pe: 2 * HALF dims from ROPE_AT
        lo, hi = _rotate(k_ptr, c_ptr, s_ptr, rows * skt, rows * sct, rows * sst, ok, skd, scd, ssd,
                         HALF, BLOCK_T, BLOCK_H, INTERLEAVED_IN, HALF_WIDTH)
        if INTERLEAVED_OUT:
            k = tl.arange(0, 2 * BLOCK_H)
            mk = ok[:, None] & (k[None, :] < 2 * HALF)
            y = tl.reshape(tl.join(lo, hi), [BLOCK_T, 2 * BLOCK_H])
            tl.store(cache_ptr + base[:, None] + _dim_offsets(ROPE_AT + k, TT, VEC)[None, :], y.to(out_ty), mask=mk)
        else:
            j = tl.arange(0, BLOCK_H)
            m = ok[:, None] & (j[None, :] < HALF)
            tl.store(cache_ptr + base[:, None] + _dim_offsets(ROPE_AT + j, TT, VEC)[None, :], lo.to(out_ty), mask=m)
            tl.store(cache_ptr + base[:, None] + _dim_offsets(ROPE_AT + HALF + j, TT, VEC)[None, :], hi.to(out_ty),
                     mask=m)

    @triton.jit
    def _rope_cache_kernel(
        c_ptr, s_ptr, NBQ,
        # q_pe -> q_out (as segment 0 of triton_rope._rope_kernel)
        q_ptr, qo_ptr, RQ, A1, A2, A3,
        ax0, ax1, ax2, ax3, axd, ao0, ao1, ao2, ao3, aod,
        ac0, ac1, ac2, ac3, acd, as0, as1, as2, as3, asd,
        # tokens: k_pe [T, Dr], latent [T, R], slots [T] -> cache pages
        k_ptr, l_ptr, slot_ptr, cache_ptr, T, n_slots,
        skt, skd, slt, sld, s_slot, sct, scd, sst, ssd,
        R: tl.constexpr, BLOCK_L: tl.constexpr, PAGE: tl.constexpr, WIDTH: tl.constexpr,
        TT: tl.constexpr, VEC: tl.constexpr, REST_AT: tl.constexpr, ROPE_AT: tl.constexpr, BLOCK_T: tl.constexpr,
        HALF: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr,
        INTERLEAVED_IN: tl.constexpr, INTERLEAVED_OUT: tl.constexpr,
        HALF_WIDTH: tl.constexpr, INT64: tl.constexpr,
    ):
        pid = tl.program_id(0)
        if pid < NBQ:
            _rope_rows(q_ptr, qo_ptr, c_ptr, s_ptr, pid, RQ, A1, A2, A3,
                       ax0, ax1, ax2, ax3, axd, ao0, ao1, ao2, ao3, aod,
                       ac0, ac1, ac2, ac3, acd, as0, as1, as2, as3, asd,
                       HALF, BLOCK_R, BLOCK_H, INTERLEAVED_IN, INTERLEAVED_OUT,
                       HALF_WIDTH, INT64)
        else:
            _cache_rows(k_ptr, l_ptr, slot_ptr, cache_ptr, c_ptr, s_ptr, pid - NBQ, T, n_slots,
                        skt, skd, slt, sld, s_slot, sct, scd, sst, ssd,
                        R, BLOCK_L, PAGE, WIDTH, TT, VEC, REST_AT, ROPE_AT,
                        HALF, BLOCK_T, BLOCK_H, INTERLEAVED_IN, INTERLEAVED_OUT,
                        HALF_WIDTH, INT64)


# ------------------------------------------------------------------------ host side
# Memoised like triton_rope's plan: a decode step costs a key, a look-up and the launch.

_TILE = 4096  # elements of latent per token program (BLOCK_T rows of BLOCK_L)


@functools.lru_cache(maxsize=1024)
def _make_plan(key):
    (ii, io, cshape, cstride, sstride, device_index, qshape, qstride, ostride,
     kshape, kstride, lshape, lstride, slot_stride, cache_shape, block_size, tt, vec, rope_first) = key
    d = qshape[-1]
    half = d // 2
    q_rows, sizes, q_strides, q_extents = _segment(qshape, qstride, ostride, cshape, cstride, sstride)
    T, R = kshape[0], lshape[1]
    if q_rows == 0 and T == 0:
        return None
    (sct,), (sst,) = _bcast_strides(cshape, cstride, (T,)), _bcast_strides(cshape, sstride, (T,))
    block_h = triton.next_power_of_2(half)
    block_l = triton.next_power_of_2(max(R, 1))
    block_r, num_warps = _config(q_rows + T, block_h, device_index, bool(ii or io))
    block_t = max(1, min(triton.next_power_of_2(max(T, 1)), _TILE // block_l))
    # the token programs' latent tile (up to _TILE elements) wants warps of its own
    # even where few q rows chose few (a guess: not measured yet, bench_rope_cache.py)
    num_warps = max(num_warps, min(8, block_t * block_l // 1024))
    width = R + d
    # the largest offset each tensor is addressed at (cache: its size)
    extents = [*q_extents, cache_shape[0] * cache_shape[1], (T - 1) * kstride[0] + (d - 1) * kstride[1],
               (T - 1) * lstride[0] + (R - 1) * lstride[1], (T - 1) * slot_stride,
               (T - 1) * max(sct, sst) + (cshape[-1] - 1) * max(cstride[-1], sstride[-1])]
    int64 = not fits_int32(extents, max(block_r, block_t) * max(width, 1))
    nbq = triton.cdiv(q_rows, block_r)
    grid = (nbq + triton.cdiv(T, block_t),)
    q_ints = [q_rows, *sizes, *q_strides]
    tok_ints = [T, cache_shape[0] * block_size, kstride[0], kstride[1], lstride[0], lstride[1], slot_stride,
                sct, cstride[-1], sst, sstride[-1]]
    constexprs = dict(
        R=R, BLOCK_L=block_l, PAGE=block_size, WIDTH=width, TT=tt, VEC=vec, BLOCK_T=block_t,
        REST_AT=d if rope_first else 0, ROPE_AT=0 if rope_first else R,
        HALF=half, BLOCK_R=block_r, BLOCK_H=block_h,
        INTERLEAVED_IN=bool(ii), INTERLEAVED_OUT=bool(io), HALF_WIDTH=cshape[-1] != d, INT64=int64,
        num_warps=num_warps,
    )
    return grid, nbq, q_ints, tok_ints, constexprs


def rope_cache_write_triton(q_pe, k_pe, latent, cos, sin, slots, cache, block_size, tt, vec,
                            interleaved_in, interleaved_out, q_out, rope_first=False) -> None:
    """q_out = RoPE(q_pe); cache[slots] = [latent | RoPE(k_pe)] in the (tt, vec) layout,
    or [RoPE(k_pe) | rest] with `rope_first` (`latent` then holds the DSA indexer key's
    unrotated rest): one launch (arguments already checked by the op)."""
    key = (interleaved_in, interleaved_out, tuple(cos.shape), cos.stride(), sin.stride(), q_pe.get_device(),
           tuple(q_pe.shape), q_pe.stride(), q_out.stride(), tuple(k_pe.shape), k_pe.stride(),
           tuple(latent.shape), latent.stride(), slots.stride(0), tuple(cache.shape), block_size, tt, vec,
           bool(rope_first))
    plan = _make_plan(key)
    if plan is None:
        return
    grid, nbq, q_ints, tok_ints, constexprs = plan
    launch(_rope_cache_kernel, grid, cos, sin, nbq, q_pe, q_out, *q_ints,
           k_pe, latent, slots, cache, *tok_ints, **constexprs)
