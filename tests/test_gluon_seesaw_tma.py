"""The seesaw's TMA key copies (custom_ops/gluon_seesaw_copy.py, issue 12).

On CPU: `tma_plan`, the launcher's decision whether TMA descriptors apply and which row of
its 2D views holds each key. On an sm_90 GPU (TRITON_INTERPRET=0): the seesaw with TMA
against the reference and against its cp.async copies, which fill the same bytes into the
same shared memory, so the outputs must be bitwise equal (a race or a wrong row shows).
"""
import os
import zlib

import pytest
import torch

from mla_compile.custom_ops import gluon_decode
from mla_compile.custom_ops.gluon_seesaw_copy import tma_plan
from mla_compile.custom_ops.reference import latent_attention_reference
from mla_compile.custom_ops.triton_decode_wide import mla_decode_attention_wide
from test_gluon_decode import close  # bf16 against the fp32 reference, NaN where it has NaN

ON_HOPPER = (os.environ.get("TRITON_INTERPRET") != "1" and torch.cuda.is_available()
             and torch.cuda.get_device_capability() == (9, 0) and gluon_decode.gluon is not None)
hopper = pytest.mark.skipif(not ON_HOPPER, reason="Gluon program: needs an sm_90 GPU, TRITON_INTERPRET=0")
R, DR, W = 512, 64, 576
BF16 = torch.bfloat16


def paged_cache(nblk, page, dtype=BF16, offset=0, device="cpu"):
    """[nblk, page * W] random cache starting `offset` elements into its storage."""
    buf = torch.randn(nblk * page * W + offset, device=device).to(dtype)
    return buf[offset:].view(nblk, page * W)


def test_plan_paged_rows_are_block_times_page_plus_offset():
    cache = paged_cache(5, 128)
    plan = tma_plan(None, None, (cache, None, None, 128, (1, W)), R, DR)
    c, kr, c_rpb, kr_rpb = plan
    assert (c.shape, kr.shape, c_rpb, kr_rpb) == ((640, R), (640, DR), 0, 0)
    pages = cache.view(5, 128, W)
    for blk, off in ((0, 0), (3, 64), (4, 127)):
        assert torch.equal(c[blk * 128 + off], pages[blk, off, :R])
        assert torch.equal(kr[blk * 128 + off], pages[blk, off, R:])


@pytest.mark.parametrize("why, page, layout, offset, dtype, R_, Dr", [
    ("SHUFFLE pages", 64, (16, 8), 0, BF16, R, DR),
    ("a tile would straddle pages", 32, (1, W), 0, BF16, R, DR),
    ("base not 16-byte aligned", 64, (1, W), 4, BF16, R, DR),
    ("32-bit keys", 64, (1, W), 0, torch.float32, R, DR),
    ("not DeepSeek's dims", 64, (1, W), 0, BF16, 256, DR),
])
def test_plan_paged_does_not_apply(why, page, layout, offset, dtype, R_, Dr):
    cache = paged_cache(2, page, dtype, offset)
    assert tma_plan(None, None, (cache, None, None, page, layout), R_, Dr) is None, why


def test_plan_contiguous_rows_skip_each_requests_stride():
    """Keys as windows of a longer buffer: request b's key t is row b * 100 + t."""
    B, Smax, Sk = 3, 100, 70
    kv = torch.randn(B, Smax, W).to(BF16)[:, :Sk]
    c, kr, c_rpb, kr_rpb = tma_plan(kv[..., :R], kv[..., R:], None, R, DR)
    assert (c_rpb, kr_rpb, c.shape[0], kr.shape[0]) == (Smax, Smax, (B - 1) * Smax + Sk, (B - 1) * Smax + Sk)
    for b, t in ((0, 0), (1, 69), (2, 5)):
        assert torch.equal(c[b * c_rpb + t], kv[b, t, :R]) and torch.equal(kr[b * kr_rpb + t], kv[b, t, R:])
    one = tma_plan(kv[:1, :, :R].expand(B, Sk, R), kv[:1, :, R:].expand(B, Sk, DR), None, R, DR)
    assert one[2:] == (0, 0) and one[0].shape[0] == Sk  # a batch-broadcast key set: one copy of the rows


def test_plan_contiguous_does_not_apply():
    B, Sk = 2, 64
    buf = torch.randn(B * Sk * 580 + 64).to(BF16)
    c = torch.as_strided(buf, (B, Sk, R), (Sk * W + 16, W, 1))  # batch stride not a whole number of rows
    kr = torch.as_strided(buf, (B, Sk, DR), (Sk * W, W, 1), R)
    assert tma_plan(c, kr, None, R, DR) is None
    c = torch.as_strided(buf, (B, Sk, R), (Sk * W, W, 1), 4)  # base 8 bytes off 16
    assert tma_plan(c, kr, None, R, DR) is None
    c = torch.as_strided(buf, (B, Sk, R), (Sk * 580, 580, 1))  # rows of 1160 bytes: not 16-byte strides
    assert tma_plan(c, kr, None, R, DR) is None
    c = torch.as_strided(buf, (B, Sk, R), (Sk * W, W, 1))
    assert tma_plan(c, kr, None, R, DR, BF16) is not None
    assert tma_plan(c, kr, None, R, DR, torch.float16) is None  # keys of another type than q's


# ---- GPU: the TMA variant against the reference and against the cp.async variant ----

def both(*args, **kw):
    """The seesaw's output with TMA copies and with cp.async copies: bitwise equal."""
    tma = mla_decode_attention_wide(*args, gluon=True, gluon_program="seesaw", seesaw_tma=True, **kw)
    cpa = mla_decode_attention_wide(*args, gluon=True, gluon_program="seesaw", seesaw_tma=False, **kw)
    torch.testing.assert_close(tma, cpa, rtol=0, atol=0, equal_nan=True)
    return tma


@hopper
@pytest.mark.parametrize("dtype, splits, schedule", [(BF16, 3, "split"), (torch.float16, 1, "split"),
                                                     (BF16, None, "balanced")])
def test_paged_ragged_tails_never_read(dtype, splits, schedule):
    """NORMAL 64-token pages in shuffled order, lengths not multiples of 64, every slot past
    a length NaN: full tiles go through TMA, each tail through masked cp.async (a NaN row
    loaded by TMA would give 0 * NaN = NaN in p @ V)."""
    gen = torch.Generator(device="cuda").manual_seed(zlib.crc32(f"{dtype}{schedule}".encode()))
    lens, H, page = [64 * 9 + 17, 64, 1, 64 * 4, 130], 128, 64
    B, nblk = len(lens), -(-max(lens) // page)
    q_lat = (torch.randn(B, H, 1, R, generator=gen, device="cuda") * 0.1).to(dtype)
    q_pe = (torch.randn(B, H, 1, DR, generator=gen, device="cuda") * 0.1).to(dtype)
    kv = torch.randn(B, page * nblk, W, generator=gen, device="cuda").to(dtype)
    table = torch.randperm(B * nblk, device="cuda", generator=gen).view(B, nblk).int()
    cache = torch.full((B * nblk, page, W), float("nan"), device="cuda", dtype=dtype)
    for b, n in enumerate(lens):
        t = torch.arange(n, device="cuda")
        cache[table[b, t // page].long(), t % page] = kv[b, :n]
    paged = (cache.view(B * nblk, -1), table, torch.tensor(lens, dtype=torch.int32, device="cuda"), page, (1, W))
    assert tma_plan(None, None, paged, R, DR) is not None
    got = both(q_lat, q_pe, None, None, 0.15, False, splits=splits, schedule=schedule, paged=paged)
    for b, n in enumerate(lens):
        close(got[b:b + 1], latent_attention_reference(q_lat[b:b + 1], q_pe[b:b + 1], kv[b:b + 1, :n, :R],
                                                       kv[b:b + 1, :n, R:], 0.15, False))


@hopper
@pytest.mark.parametrize("gap", [True, False], ids=["windows-of-a-longer-buffer", "odd-batch-stride-fallback"])
def test_contiguous_keys(gap):
    """Keys as windows [:, :Sk] of a [B, Smax, 576] buffer (TMA rows b * Smax + t), and a
    batch stride that is no whole number of rows (no descriptor: the cp.async copies)."""
    gen = torch.Generator(device="cuda").manual_seed(7 + gap)
    B, H, Sk, Smax = 3, 64, 64 * 6 + 37, 512
    q_lat = (torch.randn(B, H, 1, R, generator=gen, device="cuda") * 0.1).to(BF16)
    q_pe = (torch.randn(B, H, 1, DR, generator=gen, device="cuda") * 0.1).to(BF16)
    buf = torch.randn(B * Smax * W + 64, generator=gen, device="cuda").to(BF16)
    sb = Smax * W if gap else Smax * W + 16
    c = torch.as_strided(buf, (B, Sk, R), (sb, W, 1))
    kr = torch.as_strided(buf, (B, Sk, DR), (sb, W, 1), R)
    assert (tma_plan(c, kr, None, R, DR) is not None) == gap
    got = both(q_lat, q_pe, c, kr, 0.12, False, splits=2)
    close(got, latent_attention_reference(q_lat, q_pe, c, kr, 0.12, False))


@hopper
@pytest.mark.parametrize("causal, zero, sink", [(True, False, True), (False, True, False)])
def test_masks_causal_sinks(causal, zero, sink):
    """Two query rows per head, a finfo.min padding mask, a query row that sees nothing."""
    gen = torch.Generator(device="cuda").manual_seed(11 + causal)
    B, H, Sq, Sk = 2, 64, 2, 64 * 3 + 22
    q_lat = (torch.randn(B, H, Sq, R, generator=gen, device="cuda") * 0.1).to(BF16)
    q_pe = (torch.randn(B, H, Sq, DR, generator=gen, device="cuda") * 0.1).to(BF16)
    kv = torch.randn(B, Sk, W, generator=gen, device="cuda").to(BF16)
    c, kr = kv[..., :R], kv[..., R:]
    mask = torch.zeros(B, 1, Sq, Sk, device="cuda")
    mask[0, :, :, 150:] = torch.finfo(torch.float32).min
    mask[1, :, 1] = float("-inf")
    sinks = torch.randn(H, generator=gen, device="cuda") if sink else None
    got = both(q_lat, q_pe, c, kr, 0.2, causal, mask=mask, zero_empty_rows=zero, sinks=sinks, splits=2)
    close(got, latent_attention_reference(q_lat, q_pe, c, kr, 0.2, causal, mask, zero, sinks))
