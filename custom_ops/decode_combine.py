"""The wide decode's combine (custom_ops/triton_decode_wide.py): merges the fp32 partials
of a (query, head) row's splits or work items into `out`.

Each partial is the split's normalised output with its running max and sum kept apart
(not as a log-sum-exp: m + log(l) rounds away l next to a finfo.min mask). Rows:
- old schedule: row ((b * H + h) * Sq + q) * splits + split, `splits` per request;
- balanced schedule (decode_schedule.py): row (item * H + h) * Sq + q for the items
  first_b .. first_b + n_b - 1 of request b, read from the schedule's table; a request
  with one item wrote `out` directly and is skipped.
Program shapes: 4 rows x all columns, split by split, from 512 rows; else one row x 64
columns, 32 splits at a time (B = 1).
"""
from __future__ import annotations

from ..compat import size_hint
from .launch import launch

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional on CPU
    triton = None


if triton is not None:

    @triton.jit
    def _wide_combine(OP, ST, O, SCHED, so_b, so_h, so_q, so_r, H, Sq, NROWS, SPLITS, REQS,
                      R: tl.constexpr, BRC: tl.constexpr, ROWS: tl.constexpr, SCHUNK: tl.constexpr,
                      ZERO_EMPTY: tl.constexpr, BALANCED: tl.constexpr):
        # ROWS (b, h, q) rows x BRC latent columns per program, SCHUNK splits at a time
        # (ROWS == 1 or SCHUNK == 1: many rows, few splits, or the other way round); ST
        # holds each split's (running max, sum of exponentials), OP its normalised output
        row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        row_ok = row < NROWS
        qi = row % Sq
        hi = (row // Sq) % H
        b = (row // (Sq * H)).to(tl.int64)
        if BALANCED:  # request b's items: partial rows (first + k) * H * Sq + (h, q)
            first = tl.load(SCHED + REQS + 2 * b, mask=row_ok, other=0)
            n = tl.load(SCHED + REQS + 2 * b + 1, mask=row_ok, other=0)
            row_ok = row_ok & (n > 1)  # one item: written directly
            part0 = first.to(tl.int64) * (H * Sq) + row % (H * Sq)
            step = H * Sq
            n_max = tl.max(tl.where(row_ok, n, 0), 0)
        else:
            n = tl.full([ROWS], SPLITS, tl.int32)
            part0 = row.to(tl.int64) * SPLITS
            step = 1
            n_max = SPLITS
        offs_r = tl.program_id(1) * BRC + tl.arange(0, BRC)
        r_ok = offs_r < R
        offs_k = tl.arange(0, SCHUNK)
        m = tl.full([ROWS], float("-inf"), tl.float32)
        for s0 in range(0, n_max, SCHUNK):
            sp = s0 + offs_k
            m_s = tl.load(ST + 2 * (part0[:, None] + sp[None, :] * step),
                          mask=row_ok[:, None] & (sp[None, :] < n[:, None]), other=float("-inf"))
            m = tl.maximum(m, tl.max(m_s, 1))
        m = tl.where(m == float("-inf"), 0.0, m)
        acc = tl.zeros([ROWS, BRC], tl.float32)
        total = tl.zeros([ROWS], tl.float32)
        for s0 in range(0, n_max, SCHUNK):
            sp = s0 + offs_k
            base = part0[:, None] + sp[None, :] * step  # [ROWS, SCHUNK]
            ok = row_ok[:, None] & (sp[None, :] < n[:, None])
            m_s = tl.load(ST + 2 * base, mask=ok, other=float("-inf"))
            l_s = tl.load(ST + 2 * base + 1, mask=ok, other=0.0)
            w = tl.where(l_s > 0, l_s * tl.exp(m_s - m[:, None]), 0.0)  # each split's share of the sum
            total += tl.sum(w, 1)
            if ROWS == 1:  # [SCHUNK, BRC] partial rows of the one output row
                w1 = tl.reshape(w, [SCHUNK])
                b1 = tl.reshape(base, [SCHUNK])
                part = tl.load(OP + b1[:, None] * R + offs_r[None, :],
                               mask=(w1 > 0)[:, None] & r_ok[None, :], other=0.0)
                acc += tl.reshape(tl.sum(part * w1[:, None], 0), [1, BRC])
            else:  # SCHUNK == 1: [ROWS, BRC], one split
                w1 = tl.reshape(w, [ROWS])
                b1 = tl.reshape(base, [ROWS])
                part = tl.load(OP + b1[:, None] * R + offs_r[None, :],
                               mask=(w1 > 0)[:, None] & r_ok[None, :], other=0.0)
                acc += part * w1[:, None]
        if ZERO_EMPTY:
            out = tl.where(total[:, None] > 0, acc / tl.where(total > 0, total, 1.0)[:, None], 0.0)
        else:  # eager softmax over no visible key: 0/0
            out = acc / total[:, None]
        tl.store(O + (b * so_b + hi * so_h + qi * so_q)[:, None] + offs_r[None, :] * so_r,
                 out.to(O.dtype.element_ty), mask=row_ok[:, None] & r_ok[None, :])


def launch_combine(partial, stats, out, sched, splits, reqs, zero_empty_rows: bool, balanced: bool) -> None:
    """Merge the partials into out [B, H, Sq, R]: `splits` per request (old schedule), or
    the items the table `sched` lists from int `reqs` on (balanced; `splits` then bounds
    the items of one request, for the program shape)."""
    B, H, Sq, R = out.shape
    br = max(16, triton.next_power_of_2(R))
    nrows = B * H * Sq
    if size_hint(nrows) >= 512:  # many rows (large batch, few splits): 4 rows x all columns, split by split
        rows_c, brc, chunk = 4, br, 1
    else:  # few rows (B = 1, many splits): one row x 64 columns, 32 splits at a time
        rows_c, brc, chunk = 1, min(br, 64), min(32, max(2, triton.next_power_of_2(size_hint(splits))))
    launch(
        _wide_combine, (triton.cdiv(nrows, rows_c), triton.cdiv(R, brc)),
        partial, stats, out, sched, *out.stride(), H, Sq, nrows, splits, reqs,
        R=R, BRC=brc, ROWS=rows_c, SCHUNK=chunk, ZERO_EMPTY=bool(zero_empty_rows), BALANCED=balanced,
        num_warps=4,
    )


__all__ = ["launch_combine"]
