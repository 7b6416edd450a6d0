"""The Triton RoPE kernel (CUDA, or CPU tensors under TRITON_INTERPRET=1).

One launch rotates every tensor of `xs` (q_pe and k_pe): the grid is the row blocks
of the first tensor followed by those of the second, and each program rotates
`BLOCK_R` rows of one tensor through the `_rope_rows` helper.

Host side, each tensor's leading dims (with cos/sin broadcast to them) become at most
4 index dims: size-1 dims are dropped, dims that are contiguous in x, out, cos and
sin alike are merged, and what is left is padded with size-1 dims behind. Triton
specializes integer arguments equal to 1 (sizes, unit last-dim strides) as
constants, so padded dims cost nothing and unit-stride rows get 16-byte loads.
Offsets are int32 unless some tensor spans 2**31 elements, then int64.
"""
from __future__ import annotations

import functools

import torch
import torch.utils._pytree as pytree

from ..compat import constant_int, known_equal, size_hint
from .checks import known_true
from .launch import is_traced, launch

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional on CPU: the reference runs instead
    triton = None

_NDIM = 4  # index dims per segment after padding (the op allows 1..4 leading dims)
_INT32_MAX = 2**31 - 1


# --------------------------------------------------------------------------- kernel

if triton is not None:

    @triton.jit
    def _rotate(
        x_ptr, c_ptr, s_ptr, x_row, c_row, s_row, rmask, sxd, scd, ssd,
        HALF: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr,
        INTERLEAVED_IN: tl.constexpr, HALF_WIDTH: tl.constexpr,
    ):
        # (lo, hi) in float32, [BLOCK_R, BLOCK_H]: pair j of each row rotated (rows
        # where `rmask` is False read nothing); shared with the fused cache writer
        j = tl.arange(0, BLOCK_H)  # pair index
        if HALF == BLOCK_H:  # no column mask: keeps the mask constant along a row
            m = tl.broadcast_to(rmask[:, None], [BLOCK_R, BLOCK_H])
        else:
            m = rmask[:, None] & (j[None, :] < HALF)

        # cos/sin: one angle per pair (HALF_WIDTH) or lo/hi halves of width d
        c_off = c_row[:, None] + j[None, :] * scd
        s_off = s_row[:, None] + j[None, :] * ssd
        c_lo = tl.load(c_ptr + c_off, mask=m, other=0.0, eviction_policy="evict_last").to(tl.float32)
        s_lo = tl.load(s_ptr + s_off, mask=m, other=0.0, eviction_policy="evict_last").to(tl.float32)
        if HALF_WIDTH:
            c_hi = c_lo
            s_hi = s_lo
        else:
            c_hi = tl.load(c_ptr + c_off + HALF * scd, mask=m, other=0.0,
                           eviction_policy="evict_last").to(tl.float32)
            s_hi = tl.load(s_ptr + s_off + HALF * ssd, mask=m, other=0.0,
                           eviction_policy="evict_last").to(tl.float32)

        # x pairs (a, b): (x[2j], x[2j+1]) or (x[j], x[j + d/2])
        if INTERLEAVED_IN:
            k = tl.arange(0, 2 * BLOCK_H)
            if HALF == BLOCK_H:
                mk = tl.broadcast_to(rmask[:, None], [BLOCK_R, 2 * BLOCK_H])
            else:
                mk = rmask[:, None] & (k[None, :] < 2 * HALF)
            xv = tl.load(x_ptr + x_row[:, None] + k[None, :] * sxd, mask=mk, other=0.0,
                         eviction_policy="evict_first")
            a, b = tl.split(tl.reshape(xv.to(tl.float32), [BLOCK_R, BLOCK_H, 2]))
        else:
            x_off = x_row[:, None] + j[None, :] * sxd
            a = tl.load(x_ptr + x_off, mask=m, other=0.0, eviction_policy="evict_first").to(tl.float32)
            b = tl.load(x_ptr + x_off + HALF * sxd, mask=m, other=0.0,
                        eviction_policy="evict_first").to(tl.float32)

        lo = a * c_lo - b * s_lo
        hi = b * c_hi + a * s_hi
        return lo, hi

    @triton.jit
    def _rope_rows(
        x_ptr, o_ptr, c_ptr, s_ptr, blk, n_rows, S1, S2, S3,
        sx0, sx1, sx2, sx3, sxd,
        so0, so1, so2, so3, sod,
        sc0, sc1, sc2, sc3, scd,
        ss0, ss1, ss2, ss3, ssd,
        HALF: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr,
        INTERLEAVED_IN: tl.constexpr, INTERLEAVED_OUT: tl.constexpr,
        HALF_WIDTH: tl.constexpr, INT64: tl.constexpr,
    ):
        # rows of this block, split into the 4 index dims (i0 outermost)
        if INT64:
            rows = blk.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
        else:
            rows = blk * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = rows < n_rows
        i3 = rows % S3
        t = rows // S3
        i2 = t % S2
        t = t // S2
        i1 = t % S1
        i0 = t // S1
        x_row = i0 * sx0 + i1 * sx1 + i2 * sx2 + i3 * sx3
        o_row = i0 * so0 + i1 * so1 + i2 * so2 + i3 * so3
        c_row = i0 * sc0 + i1 * sc1 + i2 * sc2 + i3 * sc3
        s_row = i0 * ss0 + i1 * ss1 + i2 * ss2 + i3 * ss3
        lo, hi = _rotate(x_ptr, c_ptr, s_ptr, x_row, c_row, s_row, rmask, sxd, scd, ssd,
                         HALF, BLOCK_R, BLOCK_H, INTERLEAVED_IN, HALF_WIDTH)

        out_ty = o_ptr.dtype.element_ty
        if INTERLEAVED_OUT:
            k = tl.arange(0, 2 * BLOCK_H)
            if HALF == BLOCK_H:
                mk = tl.broadcast_to(rmask[:, None], [BLOCK_R, 2 * BLOCK_H])
            else:
                mk = rmask[:, None] & (k[None, :] < 2 * HALF)
            y = tl.reshape(tl.join(lo, hi), [BLOCK_R, 2 * BLOCK_H])
            tl.store(o_ptr + o_row[:, None] + k[None, :] * sod, y.to(out_ty), mask=mk)
        else:
            j = tl.arange(0, BLOCK_H)
            if HALF == BLOCK_H:
                m = tl.broadcast_to(rmask[:, None], [BLOCK_R, BLOCK_H])
            else:
                m = rmask[:, None] & (j[None, :] < HALF)
            o_off = o_row[:, None] + j[None, :] * sod
            tl.store(o_ptr + o_off, lo.to(out_ty), mask=m)
            tl.store(o_ptr + o_off + HALF * sod, hi.to(out_ty), mask=m)

    @triton.jit
    def _rope_kernel(
        c_ptr, s_ptr, NB0,
        # segment 0
        x0_ptr, o0_ptr, R0, A1, A2, A3,
        ax0, ax1, ax2, ax3, axd, ao0, ao1, ao2, ao3, aod,
        ac0, ac1, ac2, ac3, acd, as0, as1, as2, as3, asd,
        # segment 1 (ignored unless HAS_SECOND)
        x1_ptr, o1_ptr, R1, B1, B2, B3,
        bx0, bx1, bx2, bx3, bxd, bo0, bo1, bo2, bo3, bod,
        bc0, bc1, bc2, bc3, bcd, bs0, bs1, bs2, bs3, bsd,
        HALF: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr,
        INTERLEAVED_IN: tl.constexpr, INTERLEAVED_OUT: tl.constexpr,
        HALF_WIDTH: tl.constexpr, INT64: tl.constexpr, HAS_SECOND: tl.constexpr,
    ):
        pid = tl.program_id(0)
        if HAS_SECOND:
            if pid < NB0:
                _rope_rows(x0_ptr, o0_ptr, c_ptr, s_ptr, pid, R0, A1, A2, A3,
                           ax0, ax1, ax2, ax3, axd, ao0, ao1, ao2, ao3, aod,
                           ac0, ac1, ac2, ac3, acd, as0, as1, as2, as3, asd,
                           HALF, BLOCK_R, BLOCK_H, INTERLEAVED_IN, INTERLEAVED_OUT,
                           HALF_WIDTH, INT64)
            else:
                _rope_rows(x1_ptr, o1_ptr, c_ptr, s_ptr, pid - NB0, R1, B1, B2, B3,
                           bx0, bx1, bx2, bx3, bxd, bo0, bo1, bo2, bo3, bod,
                           bc0, bc1, bc2, bc3, bcd, bs0, bs1, bs2, bs3, bsd,
                           HALF, BLOCK_R, BLOCK_H, INTERLEAVED_IN, INTERLEAVED_OUT,
                           HALF_WIDTH, INT64)
        else:
            _rope_rows(x0_ptr, o0_ptr, c_ptr, s_ptr, pid, R0, A1, A2, A3,
                       ax0, ax1, ax2, ax3, axd, ao0, ao1, ao2, ao3, aod,
                       ac0, ac1, ac2, ac3, acd, as0, as1, as2, as3, asd,
                       HALF, BLOCK_R, BLOCK_H, INTERLEAVED_IN, INTERLEAVED_OUT,
                       HALF_WIDTH, INT64)


# ------------------------------------------------------------------------ host side
#
# A launch plan (grid, integer arguments, constexprs) depends on shapes, strides
# and flags alone, so it is memoised: a repeated call (every decode step) costs a
# key, a cache look-up and the launch.


def _bcast_strides(shape, stride, lead) -> list[int]:
    """Strides of a tensor's leading dims broadcast (as by expand) to `lead`: 0 where broadcast."""
    off = len(lead) - (len(shape) - 1)
    out = []
    for k in range(len(lead)):
        kk = k - off
        # (a symbolic size is never 1 here: the op's check proved it 1 or x's own size)
        out.append(0 if kk < 0 or known_equal(shape[kk], 1) else stride[kk])
    return out


def _segment(xshape, xstride, ostride, cshape, cstride, sstride):
    """One tensor's (n_rows, [S1, S2, S3], 4 x [s0, s1, s2, s3, s_last] strides, extents:
    the row count and the largest offset each of x, out, cos and sin is addressed at).

    Leading dims become 4 index dims: size-1 dims dropped, dims contiguous in x, out,
    cos and sin alike merged, size-1 dims padded behind. Sizes may be SymInts (a traced
    launch): a dim is dropped or merged only where that is known without a guard, and
    keeping it is always correct (the op allows at most 4 leading dims).
    """
    lead = xshape[:-1]
    cs = _bcast_strides(cshape, cstride, lead)
    ss = _bcast_strides(cshape, sstride, lead)
    dims: list[list[int]] = []  # [size, sx, so, sc, ss], outermost first
    for k, n in enumerate(lead):
        if known_equal(n, 1):
            continue
        cur = [n, xstride[k], ostride[k], cs[k], ss[k]]
        if dims:
            p = dims[-1]
            if all(known_equal(p[i], cur[i] * n) for i in range(1, 5)):  # contiguous in all four
                p[0] *= n
                p[1:] = cur[1:]
                continue
        dims.append(cur)
    n_rows = 1
    for dm in dims:
        n_rows *= dm[0]
    # pad behind: the outermost real dim is i0, which needs no modulo in the kernel, and
    # size-1 sizes are constants there (so 2 real dims cost one division, not two)
    dims = dims + [[1, 0, 0, 0, 0]] * (_NDIM - len(dims))
    strides, extents = [], [n_rows]  # the row index itself, then each tensor's offsets
    lasts = ((xshape[-1], xstride[-1]), (xshape[-1], ostride[-1]),
             (cshape[-1], cstride[-1]), (cshape[-1], sstride[-1]))
    for i, (width, last) in enumerate(lasts):
        st = [dm[i + 1] for dm in dims]
        strides += st + [last]
        extents.append(sum((dm[0] - 1) * s for dm, s in zip(dims, st)) + (width - 1) * last)
    return n_rows, [dm[0] for dm in dims[1:]], strides, extents


def fits_int32(extents, margin: int) -> bool:
    """Every offset below 2**31 even `margin` past each extent (rows of a last block),
    for ints, or SymInts where that holds for every value (no guard; else int64)."""
    return all(known_true(e + margin <= _INT32_MAX) for e in extents)


def static_int(v, what: str) -> int:
    """A size that becomes a constexpr: an int, or a SymInt that is one."""
    value = constant_int(v)
    if value is None:
        raise NotImplementedError(f"mla.rope (triton): the {what} must be static, got {v}")
    return value


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    if device_index >= 0:
        return torch.cuda.get_device_properties(device_index).multi_processor_count
    return 4  # interpreter (CPU tensors): few, small programs


def _config(total_rows: int, block_h: int, device_index: int, interleaved: bool) -> tuple[int, int]:
    """(BLOCK_R, num_warps): tiles of at most 2048 elements of x, smaller while that
    gives fewer than 2 programs per SM; 16 elements per thread (16-byte accesses to
    each half row in 16 bits), 8 when a side is interleaved, whose split/join of
    pairs measured faster with more warps (H100/H200, d=64 bf16)."""
    width = 2 * block_h
    per_warp = 32 * (8 if interleaved else 16)
    max_r = max(1, 2048 // width)
    min_r = max(1, per_warp // width)
    want = triton.next_power_of_2(max(1, triton.cdiv(total_rows, 2 * _num_sms(device_index))))
    block_r = max(min_r, min(max_r, want))
    num_warps = max(1, min(8, block_r * width // per_warp))
    return block_r, num_warps


def _plan(key):
    """The launch plan. Sizes and strides in `key` may be SymInts (a traced launch,
    passes/inline_launches.py): the grid and integer arguments are then expressions,
    tile sizes come from the example sizes (size_hint: any tile is correct), int64
    offsets unless int32 is proven for every size, and no decision adds a guard."""
    interleaved_in, interleaved_out, cshape, cstride, sstride, device_index, segs_key = key
    d = static_int(segs_key[0][0][-1], "rotary dim")
    half = d // 2
    segs = []
    for xshape, xstride, ostride in segs_key:
        if not known_equal(xshape[-1], d):
            raise ValueError("mla.rope (triton): every x must share the rotary dim")
        segs.append(_segment(xshape, xstride, ostride, cshape, cstride, sstride))
    live = [i for i, sg in enumerate(segs) if not known_equal(sg[0], 0)]  # tensors with rows to rotate
    if not live:
        return None
    block_h = triton.next_power_of_2(half)
    block_r, num_warps = _config(size_hint(sum(segs[i][0] for i in live)), block_h, device_index,
                                 bool(interleaved_in or interleaved_out))
    int64 = not all(fits_int32(segs[i][3], block_r) for i in live)
    nbs = [triton.cdiv(segs[i][0], block_r) for i in live]
    ints = [[segs[i][0], *segs[i][1], *segs[i][2]] for i in live]
    if len(live) == 1:
        ints.append([None] * len(ints[0]))  # no second segment: constexpr None arguments
    constexprs = dict(
        HALF=half, BLOCK_R=block_r, BLOCK_H=block_h,
        INTERLEAVED_IN=bool(interleaved_in), INTERLEAVED_OUT=bool(interleaved_out),
        HALF_WIDTH=static_int(cshape[-1], "cos/sin width") != d, INT64=int64, HAS_SECOND=len(live) == 2,
        num_warps=num_warps,
    )
    return (sum(nbs),), nbs[0], live, ints, constexprs


_make_plan = functools.lru_cache(maxsize=4096)(_plan)  # memoised for int keys (real tensors)


def _symbolic(key) -> bool:
    return any(isinstance(v, torch.SymInt) for v in pytree.tree_leaves(key))


def rope_triton(xs, cos, sin, interleaved_in, interleaved_out, outs) -> None:
    """Launch the kernel over all of `xs` (nothing to do for empty tensors)."""
    key = (interleaved_in, interleaved_out, tuple(cos.shape), cos.stride(), sin.stride(),
           xs[0].get_device(),
           tuple((tuple(x.shape), x.stride(), o.stride()) for x, o in zip(xs, outs)))
    # a traced launch may hold SymInts (not hashable): planned afresh, once per compile
    plan = _plan(key) if is_traced(xs[0]) and _symbolic(key) else _make_plan(key)
    if plan is None:
        return
    grid, nb0, live, ints, constexprs = plan
    ptrs = [(xs[i], outs[i]) for i in live]
    if len(ptrs) == 1:
        ptrs.append((None, None))
    launch(_rope_kernel, grid, cos, sin, nb0, ptrs[0][0], ptrs[0][1], *ints[0],
           ptrs[1][0], ptrs[1][1], *ints[1], **constexprs)
