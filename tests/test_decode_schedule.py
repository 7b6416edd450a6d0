"""The balanced schedule of the paged wide decode (custom_ops/decode_schedule.py): the
metadata program's table against its Python statement, the items' coverage of every
request, and the cost model's promise (never above the old schedule's on any lengths,
`choose_wide_splits`'s cost on uniform ones). The decode kernels reading the table are
tested in test_decode_wide.py (Triton) and test_gluon_decode.py (Gluon, GPU)."""
import os
import random
import zlib

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")

from kernel_device import kernel_test_device  # noqa: E402
from mla_compile.custom_ops import decode_schedule  # noqa: E402
from mla_compile.custom_ops.decode_schedule import (  # noqa: E402
    HEADER_INTS, ITEM_INTS, balanced_schedule, item_slots, model_cost, reference_schedule)
from mla_compile.custom_ops.triton_decode_wide import choose_wide_splits, wide_split_cost  # noqa: E402

DEVICE = kernel_test_device(decode_schedule._schedule)


def old_schedule(batch, groups, kv_len, block_n, slots):
    """The old schedule's split and keys per split, as the launcher derives them."""
    splits = choose_wide_splits(batch, groups, kv_len, block_n, slots)
    kps = -(-(-(-kv_len // splits)) // block_n) * block_n
    return -(-kv_len // kps), kps


def read_table(table, batch, items):
    t = table.tolist()
    head = t[:HEADER_INTS]
    rows = [tuple(t[HEADER_INTS + ITEM_INTS * i:HEADER_INTS + ITEM_INTS * (i + 1)]) for i in range(items)]
    reqs = [tuple(t[HEADER_INTS + ITEM_INTS * items + 2 * b:][:2]) for b in range(batch)]
    return head, rows, reqs


CASES = [  # B, L (keys at most), groups, slots, block_n, lengths ("ragged", "uniform" or a list)
    (5, 65, 1, 8, 16, [0, 1, 63, 64, 65]),
    (3, 1000, 2, 8, 16, "ragged"),
    (40, 300, 1, 8, 16, "ragged"),
    (40, 300, 1, 8, 16, "uniform"),
    (1, 4096, 1, 132, 64, "ragged"),
    (300, 200, 2, 16, 16, "ragged"),   # more requests than one chunk of the metadata program
    (7, 64, 1, 4, 16, [0, 0, 0, 0, 0, 0, 0]),
]


@pytest.mark.skipif(DEVICE is None, reason="needs TRITON_INTERPRET=1 (CPU) or a CUDA device")
@pytest.mark.parametrize("B, L, groups, slots, bn, lens", CASES)
def test_table_is_the_reference_and_covers_every_request(B, L, groups, slots, bn, lens):
    rng = random.Random(zlib.crc32(repr((B, L, lens)).encode()))
    if lens == "ragged":
        lens = [rng.randint(1, L) for _ in range(B)]
    elif lens == "uniform":
        lens = [L] * B
    splits, kps = old_schedule(B, groups, L, bn, slots)
    table, items = balanced_schedule(torch.tensor(lens, dtype=torch.int32, device=DEVICE), B, groups, slots, bn,
                                     kps, splits)
    assert items == item_slots(B, groups, slots, splits)
    head, rows, reqs = read_table(table.cpu(), B, items)
    want = reference_schedule(lens, groups, slots, bn, kps // bn, items)
    assert head == [want["n"], want["chunk"], want["cand"], want["cost"]]
    assert rows[:want["n"]] == want["items"] and reqs == want["reqs"]
    assert all(r[0] == -1 for r in rows[want["n"]:])  # unused: their programs return
    for b, (first, n) in enumerate(reqs):  # n items in a row, tile-aligned, covering [0, len) in order
        mine = rows[first:first + n]
        assert [r[0] for r in mine] == [b] * n and all(r[3] == n for r in mine)
        assert mine[0][1] == 0 and mine[-1][2] == lens[b]
        assert all(x[2] == y[1] for x, y in zip(mine, mine[1:]))
        assert all(r[1] % bn == 0 and (r[1] < r[2] or lens[b] == 0) for r in mine)
        assert all(r[2] - r[1] <= want["chunk"] for r in mine)


@pytest.mark.parametrize("B, groups, slots", [(1, 1, 132), (8, 2, 132), (32, 2, 132), (64, 1, 264), (100, 1, 132),
                                              (128, 1, 132), (128, 2, 132), (7, 1, 8)])
@pytest.mark.parametrize("L", [100, 1000, 4096, 32768])
def test_never_costlier_than_the_old_schedule(B, groups, slots, L):
    """On uniform lengths (the hint's) and on ragged ones the chosen schedule costs at
    most the old candidate on the model; with one split (no partials) the old
    candidate's cost is `choose_wide_splits`'s where the tiles divide."""
    bn = 64
    splits, kps = old_schedule(B, groups, L, bn, slots)
    items = item_slots(B, groups, slots, splits)
    uniform = reference_schedule([L] * B, groups, slots, bn, kps // bn, items)
    assert uniform["cost"] <= model_cost([L] * B, kps // bn, groups, slots, bn)
    if splits == 1:
        assert model_cost([L] * B, kps // bn, groups, slots, bn) == wide_split_cost(B, groups, L, bn, slots, 1) * slots
    rng = random.Random(B * L + groups)
    lens = [rng.randint(1, L) for _ in range(B)]
    ragged = reference_schedule(lens, groups, slots, bn, kps // bn, items)
    assert ragged["cost"] <= model_cost(lens, kps // bn, groups, slots, bn)


def test_ragged_batches_get_finer_items():
    """Where the old schedule gives each long request of a ragged batch one program (the
    batch fills the GPU), the balanced one cuts the long requests: its largest item is
    smaller and its cost lower (H200 shapes: 132 SMs, 64-row programs)."""
    rng = random.Random(0)
    for B, groups, L in ((128, 1, 4096), (32, 2, 4096), (8, 2, 16384)):
        lens = [rng.randint(1, L) for _ in range(B)]
        splits, kps = old_schedule(B, groups, L, 64, 132)
        got = reference_schedule(lens, groups, 132, 64, kps // 64, item_slots(B, groups, 132, splits))
        assert got["cand"] > 0 and got["chunk"] < kps
        assert got["cost"] < model_cost(lens, kps // 64, groups, 132, 64)
