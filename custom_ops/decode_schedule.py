"""The balanced schedule of the paged wide decode (issue 12 item 2; FlashMLA's idea of
tile-scheduler metadata, not its code): programs get about equal numbers of key tiles,
whatever request they belong to, instead of (split, request) pairs sized from the
LONGEST request, where a ragged batch's long requests set the critical path.

Work items. Request b of len_b keys (t_b = cdiv(len_b, BN) tiles) is cut into
n_b = max(1, cdiv(t_b, C)) items of cdiv(t_b, n_b) tiles (the last one shorter); the
chunk C (tiles) is chosen on the device from the real lengths, among
  candidate 0: the old schedule's split (`keys_per_split` from the size hints), and
  candidate j = 1..CANDIDATES: cdiv(j * total tiles, FINE * cdiv(slots, groups)), i.e.
    0.5x, 1x, ... 3.5x a program slot's share (with the requests shorter than the chunk
    left whole, the best chunk is often above the share: a greedy-dispatch simulation),
by `model_cost` (below), ties to the lowest index; a candidate whose items would not
fit the grid is skipped (the j >= 1 ones always fit: N <= total / C + B). So on any
lengths the chosen schedule costs no more than the old one on the cost model.

The grid is (row groups, `item_slots`) from size hints only: no host sync, CUDA-graph
capturable, no recompile when lengths change; a program past the N items used returns
at once. One metadata program (`_schedule`, Triton, so it runs under the interpreter)
writes one int32 table that everything reads:
  [0, HEADER)                        N, chunk keys, chosen candidate, its cost x slots
  HEADER + ITEM * i + (0, 1, 2, 3)   item i: request b (-1: unused), keys [lo, hi), n_b
  HEADER + ITEM * slots + 2 * b      request b: first item, n_b (for the combine)
A request's items are neighbours, requests in order of item size, largest first (in
SIZE_CLASSES classes): the GPU dispatches programs about in launch order, so the short
items go last, to the SMs that finish first (longest-processing-time first; in a ragged
batch it beat request order by up to 1.5x on a greedy-dispatch simulation).
A request with one item writes `out` directly; the others write fp32 partials at row
((item * H + h) * Sq + q), merged in item order by the combine. Only a request's first
item (lo == 0) starts from the sink. `gluon_work_item` reads the table (or, in the old
schedule, the program ids) for every Gluon program and `gluon_partial_slot` where its
output goes; the Triton program `_wide_split` reads the same written out (a helper call
there hid the launch from Inductor: triton_decode_wide.py).
"""
from __future__ import annotations

import torch

from ..compat import size_hint
from .launch import launch

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional on CPU
    triton = None
try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
except ImportError:
    gluon = None

HEADER_INTS, ITEM_INTS = 4, 4
OVERHEAD_TILES = 3  # a program's fixed cost in key tiles (choose_wide_splits's)
PARTIAL_TILES = 2   # a split item's fp32 partial (64 x 512 x 4 bytes ~ 1.7 tiles), written; read again by the combine
FINE = 2            # chunk candidates in steps of 1 / FINE of a slot's share: the finest (j = 1)
                    # gives FINE items per program slot of one row group
CANDIDATES = 7      # j = 1..7: 0.5x .. 3.5x a slot's share (the old split is candidate 0)
SIZE_CLASSES = 16   # launch order: requests in 16 classes of item size, largest first


def item_slots(batch, groups: int, slots: int, old_splits: int):
    """Items in the grid: enough for the old candidate (at most `old_splits` per request)
    and for every j-candidate (at most batch + FINE * cdiv(slots, groups)); the larger by
    the size hints (no guard: a candidate that does not fit is skipped on the device)."""
    fine = FINE * -(-slots // groups)
    return batch * old_splits if size_hint(batch) * old_splits >= size_hint(batch) + fine else batch + fine


def table_ints(batch, items):
    return HEADER_INTS + ITEM_INTS * items + 2 * batch


def model_cost(lens: list[int], chunk: int, groups: int, slots: int, block_n: int) -> int:
    """The cost model (x slots, in key tiles) of cutting every request into items of at
    most `chunk` tiles: P programs (items x row groups) of work W in all (tiles, a fixed
    cost each, and a partial's write for the items of split requests) on S slots take
    max(m, (W + a (S - r)) / S), m the largest program, a the mean one, r the programs
    of the last wave: whole waves of m, ceil(P / S) m, when all items are equal, else
    about the work per slot plus an idle tail; + the combine when some request has
    several items (a fixed cost, and reading the partials back). The device computes
    the same in `_schedule`."""
    n = [max(1, -(-(-(-ln // block_n)) // chunk)) for ln in lens]
    big = max(-(-(-(-ln // block_n)) // k) for ln, k in zip(lens, n))
    total = sum(-(-ln // block_n) for ln in lens)
    split = groups * sum(k for k in n if k > 1)  # programs writing partials
    m, programs = big + OVERHEAD_TILES + (PARTIAL_TILES if max(n) > 1 else 0), groups * sum(n)
    work = groups * (total + OVERHEAD_TILES * sum(n)) + PARTIAL_TILES * split
    last = programs - slots * (-(-programs // slots) - 1)
    tail = -(-work * (slots - last) // programs)
    combine = OVERHEAD_TILES * slots + PARTIAL_TILES * split if split else 0
    return max(m * slots, work + tail) + combine


def reference_schedule(lens: list[int], groups: int, slots: int, block_n: int, old_tiles: int,
                       items: int) -> dict:
    """`_schedule`'s table, in Python (tests; the cost comparisons)."""
    tiles = [-(-ln // block_n) for ln in lens]
    total = sum(tiles)
    cands = [max(1, old_tiles)] + [max(1, -(-(j * total) // (FINE * -(-slots // groups))))
                                   for j in range(1, CANDIDATES + 1)]
    best = None
    for i, c in enumerate(cands):
        if sum(max(1, -(-t // c)) for t in tiles) <= items:
            cost = model_cost(lens, c, groups, slots, block_n)
            if best is None or cost < best[0]:
                best = (cost, i, c)
    cost, cand, chunk = best
    n = [max(1, -(-t // chunk)) for t in tiles]
    size = [-(-t // k) for t, k in zip(tiles, n)]
    order = sorted(range(len(lens)), key=lambda b: (-(size[b] * SIZE_CLASSES // (chunk + 1)), b))
    table, reqs = [], [None] * len(lens)
    for b in order:
        keys = size[b] * block_n
        reqs[b] = (len(table), n[b])
        table += [(b, min(k * keys, lens[b]), min(k * keys + keys, lens[b]), n[b]) for k in range(n[b])]
    return dict(n=len(table), chunk=chunk * block_n, cand=cand, cost=cost, items=table, reqs=reqs)


if triton is not None:
    _HEADER = tl.constexpr(HEADER_INTS)
    _ITEM = tl.constexpr(ITEM_INTS)

    @triton.jit
    def _schedule(SEQ, TAB, B, NI, groups, slots, old_tiles, BN: tl.constexpr, OVH: tl.constexpr,
                  PART: tl.constexpr, FINE_: tl.constexpr, CANDS: tl.constexpr, NC: tl.constexpr, NK: tl.constexpr, BB: tl.constexpr,
                  KB: tl.constexpr):
        # one program; B requests in chunks of BB (any B: a dynamic batch can pass its hint)
        offs = tl.arange(0, BB)
        total = tl.sum(tl.zeros([BB], tl.int64), 0)
        for b0 in range(0, B, BB):
            lens = tl.load(SEQ + b0 + offs, mask=b0 + offs < B, other=0)
            total += tl.sum(tl.cdiv(lens, BN).to(tl.int64), 0)
        j = tl.arange(0, NC)
        cand = tl.where(j == 0, old_tiles, tl.cdiv(j * total, FINE_ * tl.cdiv(slots, groups)))
        cand = tl.maximum(cand, 1).to(tl.int64)
        n_items = tl.zeros([NC], tl.int64)
        big = tl.zeros([NC], tl.int64)
        most = tl.zeros([NC], tl.int64)
        split = tl.zeros([NC], tl.int64)  # items of split requests
        for b0 in range(0, B, BB):
            ok = b0 + offs < B
            t = tl.cdiv(tl.load(SEQ + b0 + offs, mask=ok, other=0), BN).to(tl.int64)
            n = tl.where(ok[None, :], tl.maximum(tl.cdiv(t[None, :], cand[:, None]), 1), 0)  # [NC, BB]
            n_items += tl.sum(n, 1)
            big = tl.maximum(big, tl.max(tl.cdiv(t[None, :], tl.maximum(n, 1)), 1))
            most = tl.maximum(most, tl.max(n, 1))
            split += tl.sum(tl.where(n > 1, n, 0), 1)
        split = groups * split  # model_cost's, x slots
        m = big + OVH + tl.where(most > 1, PART, 0)
        programs = groups * n_items
        last = programs - slots * (tl.cdiv(programs, slots) - 1)
        work = groups * (total + OVH * n_items) + PART * split
        cost = tl.maximum(m * slots, work + tl.cdiv(work * (slots - last), programs))
        cost += tl.where(most > 1, OVH * slots + PART * split, 0)
        cost = tl.where((j <= CANDS) & (n_items <= NI), cost, 2**62)
        best_cost = tl.min(cost, 0)
        best = tl.min(tl.where(cost == best_cost, j, NC), 0)
        chunk = tl.sum(tl.where(j == best, cand, 0), 0)
        # launch order: requests by item size, largest first (LPT: the dispatcher then
        # hands the small items to the SMs that finish first), in NK classes of sizes
        # (a request's place: the items of the larger classes, then of the requests
        # before it in its class)
        kk = tl.arange(0, NK)
        count = tl.zeros([NK], tl.int32)
        for b0 in range(0, B, BB):
            ok = b0 + offs < B
            t = tl.cdiv(tl.load(SEQ + b0 + offs, mask=ok, other=0), BN)
            n = tl.where(ok, tl.maximum(tl.cdiv(t, chunk), 1), 0).to(tl.int32)
            cls = (tl.cdiv(t, tl.maximum(n, 1)) * NK) // (chunk + 1)
            count += tl.sum(tl.where(cls[None, :] == kk[:, None], n[None, :], 0), 1)
        run_k = tl.sum(tl.where(kk[None, :] > kk[:, None], count[None, :], 0), 1)  # [NK] next free item
        for b0 in range(0, B, BB):
            ok = b0 + offs < B
            lens = tl.load(SEQ + b0 + offs, mask=ok, other=0)
            t = tl.cdiv(lens, BN)
            n = tl.where(ok, tl.maximum(tl.cdiv(t, chunk), 1), 0).to(tl.int32)
            keys = (tl.cdiv(t, tl.maximum(n, 1)) * BN).to(tl.int32)
            one = ((keys // BN) * NK) // (chunk + 1) == kk[:, None]  # [NK, BB]
            x = tl.where(one, n[None, :], 0)
            first = tl.sum(tl.where(one, run_k[:, None] + tl.cumsum(x, 1) - x, 0), 0)
            run_k += tl.sum(x, 1)
            tl.store(TAB + _HEADER + _ITEM * NI + 2 * (b0 + offs), first, mask=ok)
            tl.store(TAB + _HEADER + _ITEM * NI + 2 * (b0 + offs) + 1, n, mask=ok)
            for k0 in range(0, tl.max(n, 0), KB):
                k = k0 + tl.arange(0, KB)
                w = ok[:, None] & (k[None, :] < n[:, None])
                lo = tl.minimum(k[None, :] * keys[:, None], lens[:, None])
                e = TAB + _HEADER + _ITEM * (first[:, None] + k[None, :])
                tl.store(e, (b0 + offs)[:, None] + 0 * k[None, :], mask=w)
                tl.store(e + 1, lo, mask=w)
                tl.store(e + 2, tl.minimum(lo + keys[:, None], lens[:, None]), mask=w)
                tl.store(e + 3, n[:, None] + 0 * k[None, :], mask=w)
        run = tl.sum(count, 0)
        for i0 in range(run, NI, BB * KB):  # unused items: their programs return at once
            i = i0 + tl.arange(0, BB * KB)
            tl.store(TAB + _HEADER + _ITEM * i, -1, mask=i < NI)
        tl.store(TAB + 0, run)
        tl.store(TAB + 1, (chunk * BN).to(tl.int32))
        tl.store(TAB + 2, best.to(tl.int32))
        tl.store(TAB + 3, best_cost)


if gluon is not None:

    @gluon.jit
    def gluon_work_item(SCHED, SEQ, Sk, keys_per_split, PAGED: gl.constexpr, BALANCED: gl.constexpr):
        """This program's work -> (b, lo, hi, slot): request b (-1: none) and its keys
        [lo, hi) (lo == 0: b's first, the sink's), slot = the item (balanced) or split.
        (The Triton program `_wide_split` reads the same, written out: triton_decode_wide.py)"""
        if BALANCED:
            item = gl.program_id(1)
            e = SCHED + _HEADER + _ITEM * item
            return gl.load(e).to(gl.int64), gl.load(e + 1), gl.load(e + 2), item
        else:
            split = gl.program_id(1)
            b = gl.program_id(2).to(gl.int64)
            if PAGED:
                Sk = gl.load(SEQ + b)
            lo = split * keys_per_split
            return b, lo, gl.minimum(lo + keys_per_split, Sk), split

    @gluon.jit
    def gluon_partial_slot(SCHED, b, slot, BALANCED: gl.constexpr):
        """Where a program's output goes, read at the store (nothing stays live in the
        loop) -> (pb, pn, ps, n): its partial row ((pb * H + h) * Sq + q) * pn + ps, and
        (balanced) its request's item count (1: the program writes out directly)."""
        if BALANCED:
            return slot.to(gl.int64), 1, 0, gl.load(SCHED + _HEADER + _ITEM * slot + 3)
        else:
            return b, gl.num_programs(1), slot, 0


def balanced_schedule(seq_lens: torch.Tensor, batch, groups: int, slots: int, block_n: int,
                      keys_per_split, old_splits: int):
    """Launch `_schedule` -> (table, items): the int32 table and the grid's item count."""
    items = item_slots(batch, groups, slots, old_splits)
    table = torch.empty(table_ints(batch, items), device=seq_lens.device, dtype=torch.int32)
    bb = min(256, max(16, triton.next_power_of_2(size_hint(batch))))
    launch(_schedule, (1,), seq_lens, table, batch, items, groups, slots, keys_per_split // block_n,
           BN=block_n, OVH=OVERHEAD_TILES, PART=PARTIAL_TILES, FINE_=FINE, CANDS=CANDIDATES,
           NC=triton.next_power_of_2(CANDIDATES + 1),
           NK=SIZE_CLASSES, BB=bb, KB=max(16, 2048 // bb), num_warps=4)
    return table, items


__all__ = ["balanced_schedule", "item_slots", "model_cost", "reference_schedule",
           "gluon_work_item", "gluon_partial_slot", "HEADER_INTS", "ITEM_INTS", "FINE",
           "OVERHEAD_TILES", "PARTIAL_TILES", "CANDIDATES", "SIZE_CLASSES"]
