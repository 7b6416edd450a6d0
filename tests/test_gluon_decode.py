"""The Gluon decode programs (custom_ops/gluon_decode.py, its pipelined form
custom_ops/gluon_decode_pipelined.py and its seesaw form custom_ops/gluon_decode_seesaw.py:
64 rows per program, sm_90, R = 512, Dr = 64) against `reference.latent_attention_reference`
and against the Triton program they replace, on an H100 / H200 with TRITON_INTERPRET=0.
Tests taking `program` run all three.

Gluon has no interpreter: on CPU (CI) these tests cannot run; the Triton program they
compare with has its interpreter tests in test_decode_wide.py.
"""
import os
import zlib

import pytest
import torch

from mla_compile.custom_ops import gluon_decode
from mla_compile.custom_ops.reference import latent_attention_reference
from mla_compile.custom_ops.triton_decode_wide import mla_decode_attention_wide

ON_HOPPER = (os.environ.get("TRITON_INTERPRET") != "1" and torch.cuda.is_available()
             and torch.cuda.get_device_capability() == (9, 0) and gluon_decode.gluon is not None)
pytestmark = pytest.mark.skipif(not ON_HOPPER, reason="Gluon program: needs an sm_90 GPU, TRITON_INTERPRET=0")
R, DR = 512, 64
BF16 = torch.bfloat16


@pytest.fixture
def gen(request):
    return torch.Generator(device="cuda").manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(params=["split", "pipelined", "seesaw"])
def program(request):
    return request.param


def rand(*shape, gen, scale=1.0):
    return (torch.randn(*shape, generator=gen, device="cuda") * scale).to(BF16)


def close(got, want):
    """bf16 output against the fp32 reference (same bound as the benchmark's check)."""
    want = want.float()
    ok = torch.isfinite(want)
    assert torch.equal(ok, torch.isfinite(got.float())), "NaN where the reference has none (or the other way)"
    err = (got.float()[ok] - want[ok]).norm() / want[ok].norm().clamp_min(1e-30)
    assert err < 1e-2, f"relative error {err:.2e}"


@pytest.mark.parametrize("B, H, Sq, Sk, splits", [
    (1, 64, 1, 1, 1),       # one key, direct output
    (2, 128, 1, 200, 1),    # two row groups, last tile partial
    (2, 100, 1, 333, 3),    # padded second group, partials + combine, ragged split
    (1, 64, 2, 1000, 4),    # two query rows per head (a short chunk)
    (3, 64, 1, 70, 8),      # more splits than tiles: empty splits
    (2, 64, 1, 1000, 1),    # 16 tiles in one program: both stages reused many times
])
def test_matches_reference_and_triton(B, H, Sq, Sk, splits, gen, program):
    # keys as windows of one [B, Sk, 576] buffer (the cache layout transformers' latent uses)
    kv = rand(B, Sk, R + DR, gen=gen)
    q_lat, q_pe = rand(B, H, Sq, R, gen=gen, scale=0.1), rand(B, H, Sq, DR, gen=gen, scale=0.1)
    c, kr = kv[..., :R], kv[..., R:]
    got = mla_decode_attention_wide(q_lat, q_pe, c, kr, 0.1352, False, splits=splits, gluon=True,
                                    gluon_program=program)
    close(got, latent_attention_reference(q_lat, q_pe, c, kr, 0.1352, False))
    triton_out = mla_decode_attention_wide(q_lat, q_pe, c, kr, 0.1352, False, splits=splits, gluon=False)
    torch.testing.assert_close(got.float(), triton_out.float(), rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("splits", [1, 3])
def test_masks_causal_sinks_and_empty_rows(splits, gen, program):
    B, H, Sq, Sk = 2, 64, 2, 150
    q_lat, q_pe = rand(B, H, Sq, R, gen=gen, scale=0.1), rand(B, H, Sq, DR, gen=gen, scale=0.1)
    c, kr = rand(B, Sk, R, gen=gen), rand(B, Sk, DR, gen=gen)
    mask = torch.zeros(B, 1, Sq, Sk, device="cuda")
    mask[0, :, :, 90:] = torch.finfo(torch.float32).min  # padding: eager's finfo.min
    mask[1, :, 1] = float("-inf")                        # a query row that sees nothing
    sinks = torch.randn(H, generator=gen, device="cuda")
    for causal in (False, True):
        for zero in (False, True):
            for sk in (None, sinks):
                got = mla_decode_attention_wide(q_lat, q_pe, c, kr, 0.2, causal, mask=mask, zero_empty_rows=zero,
                                                splits=splits, sinks=sk, gluon=True, gluon_program=program)
                close(got, latent_attention_reference(q_lat, q_pe, c, kr, 0.2, causal, mask, zero, sk))


def test_paged_ragged_with_poisoned_free_slots(gen, program):
    """NORMAL 64-token pages in a shuffled order, ragged lengths, and every slot past a
    sequence's length holding NaN: the copies zero-fill past the keys, so no NaN leaks
    (a plain tile load times p = 0 would give 0 * NaN)."""
    B, H, page, nblk = 3, 128, 64, 4
    lens = [256, 65, 130]
    q_lat, q_pe = rand(B, H, 1, R, gen=gen, scale=0.1), rand(B, H, 1, DR, gen=gen, scale=0.1)
    kv = rand(B, page * nblk, R + DR, gen=gen)
    perm = torch.randperm(B * nblk, device="cuda", generator=gen)
    table = perm.view(B, nblk).int()
    cache = torch.full((B * nblk, page, R + DR), float("nan"), device="cuda", dtype=BF16)
    for b, n in enumerate(lens):
        t = torch.arange(n, device="cuda")
        cache[table[b, t // page].long(), t % page] = kv[b, :n]
    seq = torch.tensor(lens, dtype=torch.int32, device="cuda")
    for splits, schedule in ((1, "split"), (2, "split"), (None, "balanced")):
        got = mla_decode_attention_wide(q_lat, q_pe, None, None, 0.15, False, splits=splits, gluon=True,
                                        gluon_program=program, schedule=schedule,
                                        paged=(cache.view(B * nblk, -1), table, seq, page, (1, R + DR)))
        for b, n in enumerate(lens):
            close(got[b:b + 1], latent_attention_reference(q_lat[b:b + 1], q_pe[b:b + 1], kv[b:b + 1, :n, :R],
                                                           kv[b:b + 1, :n, R:], 0.15, False))


def ragged_pages(lens, H, Sq, gen):
    """q, the dense keys, and NORMAL 64-token pages in a shuffled order holding them, every
    slot past a sequence's length NaN (the copies must zero-fill, never read them)."""
    B, page = len(lens), 64
    nblk = max(1, -(-max(lens) // page))
    q_lat, q_pe = rand(B, H, Sq, R, gen=gen, scale=0.1), rand(B, H, Sq, DR, gen=gen, scale=0.1)
    kv = rand(B, page * nblk, R + DR, gen=gen)
    table = torch.randperm(B * nblk, device="cuda", generator=gen).view(B, nblk).int()
    cache = torch.full((B * nblk, page, R + DR), float("nan"), device="cuda", dtype=BF16)
    for b, n in enumerate(lens):
        t = torch.arange(n, device="cuda")
        cache[table[b, t // page].long(), t % page] = kv[b, :n]
    seq = torch.tensor(lens, dtype=torch.int32, device="cuda")
    return q_lat, q_pe, kv, (cache.view(B * nblk, -1), table, seq, page, (1, R + DR))


def balanced_items(paged, H, Sq):
    """Items per request of the launcher's balanced table on this GPU (decode_schedule)."""
    from mla_compile.custom_ops.decode_schedule import HEADER_INTS, ITEM_INTS, balanced_schedule
    from mla_compile.custom_ops.triton_decode_wide import choose_wide_splits

    _, table, seq, page, _ = paged
    B, Sk, groups = seq.numel(), table.shape[1] * page, -(-H * Sq // 64)
    slots = torch.cuda.get_device_properties(0).multi_processor_count
    splits = choose_wide_splits(B, groups, Sk, 64, slots)
    kps = -(-(-(-Sk // splits)) // 64) * 64
    sched, items = balanced_schedule(seq, B, groups, slots, 64, kps, -(-Sk // kps))
    reqs = sched[HEADER_INTS + ITEM_INTS * items:].view(B, 2).tolist()
    return [n for _, n in reqs]


@pytest.mark.parametrize("H", [64, 128])
def test_paged_ragged_balanced_schedule(H, gen, program):
    """The balanced schedule (decode_schedule.py: items of about equal key counts from the
    device's table; the paged default): ragged lengths around the tile (1, 63, 64, 65)
    and long ones, some requests one item (written directly), others several (merged);
    against the reference, the old schedule and the Triton program on the same table."""
    g = torch.Generator().manual_seed(H)
    lens = [1, 63, 64, 65, 3000, 1200] + torch.randint(1, 2500, (26,), generator=g).tolist()
    q_lat, q_pe, kv, paged = ragged_pages(lens, H, 1, gen)
    n_items = balanced_items(paged, H, 1)
    assert min(n_items) == 1 and max(n_items) > 1, n_items
    got = mla_decode_attention_wide(q_lat, q_pe, None, None, 0.12, False, gluon=True, gluon_program=program,
                                    paged=paged)
    for b, n in enumerate(lens):
        close(got[b:b + 1], latent_attention_reference(q_lat[b:b + 1], q_pe[b:b + 1], kv[b:b + 1, :n, :R],
                                                       kv[b:b + 1, :n, R:], 0.12, False))
    old = mla_decode_attention_wide(q_lat, q_pe, None, None, 0.12, False, gluon=True, gluon_program=program,
                                    paged=paged, schedule="split")
    tri = mla_decode_attention_wide(q_lat, q_pe, None, None, 0.12, False, gluon=False, paged=paged)
    torch.testing.assert_close(got.float(), old.float(), rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(got.float(), tri.float(), rtol=2e-2, atol=2e-3)


def test_paged_balanced_masks_causal_sinks_and_empty_requests(gen, program):
    """Masks (finfo.min padding, a row that sees nothing), causal rows of a two-query
    chunk, sinks (from a request's first item only) and a length-0 request on the
    balanced schedule: the old schedule's answers (NaN or 0 for the empty request)."""
    lens, H, Sq = [0, 2000, 1, 700, 64], 64, 2
    q_lat, q_pe, kv, paged = ragged_pages(lens, H, Sq, gen)
    assert max(balanced_items(paged, H, Sq)) > 1
    Sk = paged[1].shape[1] * 64
    mask = torch.zeros(len(lens), 1, Sq, Sk, device="cuda")
    mask[1, :, :, 1500:] = torch.finfo(torch.float32).min
    mask[3, :, 1] = float("-inf")
    sinks = torch.randn(H, generator=gen, device="cuda")
    for causal in (False, True):
        for zero in (False, True):
            for sk in (None, sinks):
                kw = dict(mask=mask, zero_empty_rows=zero, sinks=sk, gluon=True, gluon_program=program, paged=paged)
                got = mla_decode_attention_wide(q_lat, q_pe, None, None, 0.2, causal, **kw)
                old = mla_decode_attention_wide(q_lat, q_pe, None, None, 0.2, causal, schedule="split", **kw)
                assert torch.equal(got.isnan(), old.isnan())
                torch.testing.assert_close(got.float(), old.float(), rtol=2e-2, atol=2e-3, equal_nan=True)
                for b, n in enumerate(lens[1:], 1):
                    close(got[b:b + 1], latent_attention_reference(
                        q_lat[b:b + 1], q_pe[b:b + 1], kv[b:b + 1, :n, :R], kv[b:b + 1, :n, R:], 0.2, causal,
                        mask[b:b + 1, ..., :n], zero, sk))


def test_balanced_schedule_under_a_cuda_graph():
    """The balanced launch is captured once (its table is written on the device from
    seq_lens: no host sync) and replayed after the lengths change in place: each replay
    equals the reference on the new lengths."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    lens = [3000, 1, 900, 64, 2500, 65, 10, 1800]
    q_lat, q_pe, kv, paged = ragged_pages([3000] * 8, 128, 1, gen)  # every key written: lengths may grow
    seq = paged[2]
    seq.copy_(torch.tensor(lens, dtype=torch.int32))
    out = torch.empty(len(lens), 128, 1, R, device="cuda", dtype=BF16)
    run = lambda: mla_decode_attention_wide(q_lat, q_pe, None, None, 0.1, False, paged=paged, out=out)  # noqa: E731
    run()  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    for new in (lens, [1, 3000, 64, 900, 65, 2500, 1800, 10], [3000] * 8):
        seq.copy_(torch.tensor(new, dtype=torch.int32))
        out.fill_(float("nan"))
        graph.replay()
        for b, n in enumerate(new):
            close(out[b:b + 1], latent_attention_reference(q_lat[b:b + 1], q_pe[b:b + 1], kv[b:b + 1, :n, :R],
                                                           kv[b:b + 1, :n, R:], 0.1, False))


AGREE_CASES = [(2, 128, 1000, 1, False), (3, 64, 700, 3, False), (2, 128, 640, 2, True),
               (2, 64, 4096, 1, False), (2, 64, 1984, 1, True)]  # the last two: 64 / 31 tiles in a program


@pytest.mark.parametrize("B, H, Sk, splits, paged", AGREE_CASES)
@pytest.mark.parametrize("program", ["pipelined", "seesaw"])
def test_program_agrees_with_split(B, H, Sk, splits, paged, program, gen):
    """The programs run gluon_split's recurrence on the same tiles (only fp32 sums are added
    in another order: row sums per key column in "pipelined"; the scores' k-blocks and each
    warpgroup's share of the row sums in "seesaw"), so they agree with gluon_split to
    rounding; a stage, p or exchanged max overwritten while still read (a race in the
    schedule) shows as a difference of the size of a whole tile's share of the output, well
    above one bf16 rounding of the largest. Odd tile counts run the seesaw's masked last tile."""
    q_lat, q_pe = rand(B, H, 1, R, gen=gen, scale=0.1), rand(B, H, 1, DR, gen=gen, scale=0.1)
    kv = rand(B, Sk, R + DR, gen=gen)
    if paged:  # identity pages of the same memory
        table = torch.arange(B * Sk // 64, device="cuda", dtype=torch.int32).view(B, Sk // 64)
        lens = torch.full((B,), Sk, device="cuda", dtype=torch.int32)
        kw = dict(paged=(kv.view(B * Sk // 64, -1), table, lens, 64, (1, R + DR)))
        c = kr = None
    else:
        kw, c, kr = {}, kv[..., :R], kv[..., R:]
    old = mla_decode_attention_wide(q_lat, q_pe, c, kr, 0.11, False, splits=splits, gluon=True,
                                    gluon_program="split", **kw)
    new = mla_decode_attention_wide(q_lat, q_pe, c, kr, 0.11, False, splits=splits, gluon=True,
                                    gluon_program=program, **kw)
    diff = (new.float() - old.float()).abs().max().item()
    assert diff <= 2**-7 * old.float().abs().max().item(), f"max |{program} - split| = {diff:.3e}"


def test_default_route_is_gluon_where_it_applies():
    q = torch.empty(1, 64, 1, R, device="cuda", dtype=BF16)
    qp = torch.empty(1, 64, 1, DR, device="cuda", dtype=BF16)
    kv = torch.empty(1, 8, R + DR, device="cuda", dtype=BF16)
    assert gluon_decode.applies(q, qp, 64, False, False, False, kv[..., :R], kv[..., R:])
    assert not gluon_decode.applies(q, qp, 32, False, False, False, kv[..., :R], kv[..., R:])  # 32-row programs
    assert not gluon_decode.applies(q.float(), qp.float(), 64, False, False, False, kv[..., :R], kv[..., R:])
    odd = torch.empty(1, 8, R + DR + 1, device="cuda", dtype=BF16)  # rows not 16-byte aligned
    assert not gluon_decode.applies(q, qp, 64, False, False, False, odd[..., :R], odd[..., R:R + DR])
    assert not gluon_decode.applies(q, qp, 64, False, True, False, None, None)  # pages that split a tile
    pages = torch.empty(4 * 64 * (R + DR) + 1, device="cuda", dtype=BF16)
    assert gluon_decode.applies(q, qp, 64, True, True, False, *[pages[:-1].view(4, -1)] * 2)
    shifted = pages[1:].view(4, -1)  # a cache whose base is not 16-byte aligned: cp.async cannot
    assert not gluon_decode.applies(q, qp, 64, True, True, False, shifted, shifted)


@pytest.mark.parametrize("B, H, Sq, Sk", [(1, 128, 1, 700), (32, 128, 1, 300)], ids=["split", "many-rows"])
def test_fp32_at_deepseek_dims(B, H, Sq, Sk, gen):
    """fp32 with a 512-wide latent on the GPU: the decode kernels' fp32 tiles (16 keys, at
    most 32 rows) fit shared memory (64-key tiles overflowed it on the H200), and the
    backend keeps fp32 off the wide kernel."""
    from mla_compile.custom_ops.triton_backend import TritonBackend
    f = lambda *s: torch.randn(*s, generator=gen, device="cuda")  # noqa: E731
    q_lat, q_pe, c, kr = f(B, H, Sq, R) * 0.1, f(B, H, Sq, DR) * 0.1, f(B, Sk, R), f(B, Sk, DR)
    assert not TritonBackend.decode_is_wide(q_lat, q_pe, Sk)
    out = torch.empty(B, H, Sq, R, device="cuda")
    TritonBackend.decode_over_latent(q_lat, q_pe, c, kr, 0.1, False, None, False, out)
    torch.testing.assert_close(out, latent_attention_reference(q_lat, q_pe, c, kr, 0.1, False), rtol=1e-4, atol=1e-4)


def test_prefill_with_an_fp32_mask_and_bf16_inputs(gen):
    """A 4-byte additive mask beside 16-bit K/V at DeepSeek's head dims: the prefill
    kernel drops to 2 stages (3 overflowed shared memory on the H200)."""
    from mla_compile.custom_ops.reference import prefill_attention_reference
    B, H, S = 1, 4, 300
    q, qr = rand(B, H, S, 128, gen=gen, scale=0.1), rand(B, H, S, DR, gen=gen, scale=0.1)
    c, kr = rand(B, S, R, gen=gen), rand(B, S, DR, gen=gen)
    wk, wv = rand(H, 128, R, gen=gen, scale=0.05), rand(H, 128, R, gen=gen, scale=0.05)
    mask = torch.zeros(B, 1, S, S, device="cuda").masked_fill(
        ~torch.ones(S, S, dtype=torch.bool, device="cuda").tril(), float("-inf"))
    got = torch.ops.mla.prefill_attention(q, qr, c, kr, wk, wv, 0.1, False, "decompressed", "triton", mask)
    close(got, prefill_attention_reference(q, qr, c, kr, wk, wv, 0.1, False, "decompressed", mask))
