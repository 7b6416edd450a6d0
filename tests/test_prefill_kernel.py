"""The Triton MLA prefill attention kernel against `mla_prefill_reference` and SDPA.

On CPU the kernel runs under Triton's interpreter: TRITON_INTERPRET=1 must be in the
environment before triton is first imported (tests/conftest.py sets it). With
TRITON_INTERPRET=0 and a CUDA device the same tests run on the GPU. Sizes are tiny and
blocks 16 x 16 so that the interpreter stays fast.
"""
import math
import os
import zlib

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

triton = pytest.importorskip("triton")

from kernel_device import kernel_test_device  # noqa: E402
from mla_compile.custom_ops import triton_prefill  # noqa: E402
from mla_compile.custom_ops.triton_prefill import (  # noqa: E402
    mla_prefill_attention,
    mla_prefill_reference,
)


DEVICE = kernel_test_device(triton_prefill._mla_prefill_fwd)
pytestmark = pytest.mark.skipif(
    DEVICE is None,
    reason="the Triton prefill kernel was imported without TRITON_INTERPRET=1 and there is "
    "no CUDA device: set TRITON_INTERPRET=1 before triton is first imported (tests/conftest.py)",
)

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 1e-2}
BLOCKS = dict(block_m=16, block_n=16)  # small tiles: ragged lengths cross several blocks


@pytest.fixture
def gen(request):
    # fresh random data per test, reproducible per test id
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def rand(*shape, gen, dtype=torch.float32):
    return torch.randn(*shape, generator=gen).to(device=DEVICE, dtype=dtype)


def make(B, H, Sq, Sk, Dn, Dr, Dv, gen, dtype=torch.float32, transposed=False):
    """(q_nope, q_pe, k_nope, k_pe, v); transposed: strided views of [B, S, H, D] buffers,
    as the projections produce them (q and k/v each one buffer, sliced)."""
    if not transposed:
        return (rand(B, H, Sq, Dn, gen=gen, dtype=dtype), rand(B, H, Sq, Dr, gen=gen, dtype=dtype),
                rand(B, H, Sk, Dn, gen=gen, dtype=dtype), rand(B, Sk, Dr, gen=gen, dtype=dtype),
                rand(B, H, Sk, Dv, gen=gen, dtype=dtype))
    q = rand(B, Sq, H, Dn + Dr, gen=gen, dtype=dtype)
    kv = rand(B, Sk, H, Dn + Dv, gen=gen, dtype=dtype)
    kv_a = rand(B, Sk, 8 + Dr, gen=gen, dtype=dtype)  # latent part in front, as in kv_a_proj
    return (q[..., :Dn].transpose(1, 2), q[..., Dn:].transpose(1, 2),
            kv[..., :Dn].transpose(1, 2), kv_a[..., 8:], kv[..., Dn:].transpose(1, 2))


def sdpa(qn, qr, kn, kr, v, scale, causal):
    B, H, Sk, _ = kn.shape
    q = torch.cat([qn, qr], dim=-1).float()
    k = torch.cat([kn, kr[:, None].expand(B, H, Sk, kr.shape[-1])], dim=-1).float()
    return F.scaled_dot_product_attention(q, k, v.float(), is_causal=causal, scale=scale)


def max_err(a, b):
    return (a.float() - b.float()).abs().max().item()


def check(ins, scale, causal, dtype, **cfg):
    out = mla_prefill_attention(*ins, scale, causal, **{**BLOCKS, **cfg})
    assert out.dtype == dtype and out.shape == ins[0].shape[:3] + (ins[4].shape[-1],)
    assert torch.isfinite(out).all()
    ref = mla_prefill_reference(*[t.float() for t in ins], scale, causal)
    tol = TOL[dtype]
    assert max_err(out, ref) < tol
    assert max_err(ref, sdpa(*ins, scale, causal)) < 1e-4  # the reference is SDPA's math
    return out, ref


# (B, H, Sq, Sk): Sq == Sk, Sq < Sk, Sq > Sk, ragged (not multiples of 16), one query, one key
SHAPES = [(1, 2, 32, 32), (2, 2, 37, 37), (1, 3, 13, 37), (1, 2, 37, 13), (2, 1, 1, 20),
          (1, 2, 5, 1)]


# K/V tiles through pointer loads, or through TMA tensor descriptors (zero padding)
TMA = pytest.mark.parametrize("tma", [False, True], ids=["ptr", "tma"])


@TMA
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fp32_matches_reference(shape, causal, tma, gen):
    B, H, Sq, Sk = shape
    ins = make(B, H, Sq, Sk, 16, 8, 16, gen)
    check(ins, 0.25, causal, torch.float32, tma=tma)


@TMA
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [True, False])
def test_half_precision(dtype, causal, tma, gen):
    ins = make(2, 2, 37, 45, 32, 16, 32, gen, dtype=dtype)
    check(ins, 32**-0.5 + 0.05, causal, dtype, tma=tma)


@TMA
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_transposed_views(dtype, causal, tma, gen):
    ins = make(2, 3, 29, 29, 16, 8, 16, gen, dtype=dtype, transposed=True)
    assert not any(t.is_contiguous() for t in ins)
    check(ins, 0.3, causal, dtype, tma=tma)


@TMA
@pytest.mark.parametrize("dims", [(16, 8, 32), (32, 16, 16), (24, 8, 20), (20, 12, 40)],
                         ids=lambda d: "-".join(map(str, d)))
def test_head_dims(dims, tma, gen):
    # Dv != Dn, and dims that are not powers of two (padded and masked in the kernel)
    dn, dr, dv = dims
    ins = make(1, 2, 21, 35, dn, dr, dv, gen)
    check(ins, (dn + dr) ** -0.5, True, torch.float32, tma=tma)


def test_tma_needs_aligned_layout(gen):
    qn, qr, kn, kr, v = make(1, 2, 8, 8, 16, 8, 16, gen, dtype=torch.bfloat16)
    kr_odd = torch.empty(1, 8, 11, device=DEVICE, dtype=torch.bfloat16)[..., 3:].copy_(kr)
    with pytest.raises(ValueError):  # k_pe rows 22 bytes apart, base 6 bytes off
        mla_prefill_attention(qn, qr, kn, kr_odd, v, 0.25, True, tma=True, **BLOCKS)
    out = mla_prefill_attention(qn, qr, kn, kr_odd, v, 0.25, True, **BLOCKS)  # auto: pointers
    assert max_err(out, mla_prefill_reference(qn, qr, kn, kr, v, 0.25, True)) < TOL[torch.bfloat16]


@pytest.mark.parametrize("blocks", [(32, 16), (16, 32), (32, 32)])
def test_block_shapes(blocks, gen):
    # BLOCK_M != BLOCK_N: the diagonal stage covers several key blocks, or a key block
    # wider than the query block
    bm, bn = blocks
    ins = make(1, 2, 70, 70, 16, 8, 16, gen)
    check(ins, 0.25, True, torch.float32, block_m=bm, block_n=bn)
    ins = make(1, 1, 50, 77, 16, 8, 16, gen)
    check(ins, 0.25, False, torch.float32, block_m=bm, block_n=bn)


def test_scale_is_used_as_given(gen):
    # DeepSeek yarn: softmax scale = Dqk**-0.5 * mscale**2, not any dim-derived value
    mscale = 0.1 * math.log(40) + 1
    dn, dr, dv = 128, 64, 128
    scale = (dn + dr) ** -0.5 * mscale**2
    ins = make(1, 1, 20, 20, dn, dr, dv, gen)
    out, ref = check(ins, scale, True, torch.float32)
    f32 = [t.float() for t in ins]
    for wrong in (576**-0.5, (dn + dr) ** -0.5):
        bad = mla_prefill_reference(*f32, wrong, True)
        assert max_err(bad, ref) > 100 * TOL[torch.float32]
        assert max_err(out, bad) > 100 * TOL[torch.float32]


@TMA
@pytest.mark.parametrize("scale", [-0.3, 0.0])
def test_nonpositive_scale(scale, tma, gen):
    # the unmasked blocks take the row max as max(qk) * scale, min(qk) * scale below 0
    ins = make(1, 2, 40, 40, 16, 8, 16, gen)
    check(ins, scale, True, torch.float32, tma=tma)
    check(ins, scale, False, torch.float32, tma=tma)


@TMA
@pytest.mark.skipif(DEVICE is None or DEVICE.type != "cuda", reason="4.7 GB buffer: GPU only")
def test_offsets_past_int32(tma, gen):
    # row strides of 2**18 elements over 9000 rows: offsets past 2**31 elements
    S, W = 9000, 2**18 + 512
    big = torch.empty(S, W, device=DEVICE, dtype=torch.bfloat16)
    big[:, :576].copy_(rand(S, 576, gen=gen, dtype=torch.bfloat16))
    view = lambda a, b: big[:, a:b][None, None]  # noqa: E731
    ins = (view(0, 128), view(128, 192), view(256, 384), big[None, :, 384:448], view(448, 576))
    out = mla_prefill_attention(*ins, 192**-0.5, True, tma=tma)
    ref = sdpa(*ins, 192**-0.5, True)
    del big
    assert max_err(out, ref) < TOL[torch.bfloat16]


def test_k_pe_is_shared_across_heads(gen):
    # changing k_pe moves every head; changing one head's k_nope moves only that head
    qn, qr, kn, kr, v = make(1, 3, 16, 16, 16, 8, 16, gen)
    base = mla_prefill_attention(qn, qr, kn, kr, v, 0.5, False, **BLOCKS)
    out = mla_prefill_attention(qn, qr, kn, kr + rand(*kr.shape, gen=gen), v, 0.5, False, **BLOCKS)
    assert all(max_err(out[:, h], base[:, h]) > 1e-3 for h in range(3))
    kn2 = kn.clone()
    kn2[:, 1] += rand(*kn2[:, 1].shape, gen=gen)
    out = mla_prefill_attention(qn, qr, kn2, kr, v, 0.5, False, **BLOCKS)
    assert max_err(out[:, 1], base[:, 1]) > 1e-3
    assert max_err(out[:, 0], base[:, 0]) == 0 and max_err(out[:, 2], base[:, 2]) == 0


def test_out_argument_strided(gen):
    # out may be a transposed view of a [B, Sq, H, Dv] buffer; every element is written
    ins = make(2, 2, 19, 19, 16, 8, 16, gen)
    buf = torch.full((2, 19, 2, 16), float("nan"), device=DEVICE)
    out = mla_prefill_attention(*ins, 0.25, True, out=buf.transpose(1, 2), **BLOCKS)
    assert out.data_ptr() == buf.data_ptr()
    assert max_err(out, mla_prefill_reference(*ins, 0.25, True)) < TOL[torch.float32]


def test_default_config_runs(gen):
    # no config overrides: the interpreter's default tiles
    ins = make(1, 2, 23, 23, 16, 8, 16, gen)
    out = mla_prefill_attention(*ins, 0.25, True)
    assert max_err(out, mla_prefill_reference(*ins, 0.25, True)) < TOL[torch.float32]


def test_empty_and_no_keys(gen):
    ins = make(1, 2, 0, 5, 16, 8, 16, gen)
    assert mla_prefill_attention(*ins, 0.25, True).shape == (1, 2, 0, 16)
    ins = make(1, 2, 4, 0, 16, 8, 16, gen)
    out = mla_prefill_attention(*ins, 0.25, False)
    assert torch.equal(out, mla_prefill_reference(*ins, 0.25, False))


def test_rejects_bad_shapes(gen):
    qn, qr, kn, kr, v = make(1, 2, 8, 8, 16, 8, 16, gen)
    with pytest.raises(ValueError):
        mla_prefill_attention(qn, qr, kn, kr[:, :4], v, 0.25, True)
    with pytest.raises(ValueError):
        mla_prefill_attention(qn, qr, kn, kr.half(), v, 0.25, True)


def test_default_config_gpu_choices():
    # the fixed GPU table: 128 x 64 tiles, 8 warps for DeepSeek bf16; smaller for fp32
    cfg = triton_prefill.default_config(128, 64, 128, torch.bfloat16, 4096, True)
    assert cfg == (128, 64, 8, 3)
    bm, bn, _, _ = triton_prefill.default_config(128, 64, 128, torch.float32, 4096, True)
    assert bm <= 64 and bn <= 64


# ------------------------------------------------------------------ additive masks
# transformers' eager attention: s = (q k^T) * scale + mask in fp32, then softmax;
# masked keys carry torch.finfo(dtype).min (finite), visible ones 0.
# The kernel's exp2((s - m) * log2(e)) overflows to -inf on purpose for masked keys
# (exp2 -> 0); under the interpreter numpy reports it: not a failure
MASK_OVERFLOW_OK = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


def eager(ins, scale, mask, causal=False):
    """softmax(q k^T * scale + mask) @ v computed as eager attention does (fp32)."""
    qn, qr, kn, kr, v = ins
    B, H, Sk, _ = kn.shape
    q = torch.cat([qn, qr], dim=-1).float()
    k = torch.cat([kn, kr[:, None].expand(B, H, Sk, kr.shape[-1])], dim=-1).float()
    s = (q @ k.transpose(-1, -2)) * scale + mask.float()
    if causal:
        s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).tril().logical_not(),
                          float("-inf"))
    return torch.softmax(s, dim=-1, dtype=torch.float32) @ v.float()


def causal_additive(Sq, Sk, dtype=torch.float32):
    keep = torch.ones(Sq, Sk, dtype=torch.bool, device=DEVICE).tril()
    return torch.zeros(Sq, Sk, device=DEVICE, dtype=dtype).masked_fill(
        ~keep, torch.finfo(dtype).min)[None, None]


def random_mask(shape, gen, dtype=torch.float32, p=0.3):
    """finfo.min at random (rate p) over small additive biases (ALiBi-like)."""
    bias = 0.5 * torch.randn(*shape, generator=gen)
    drop = torch.rand(*shape, generator=gen) < p
    return bias.masked_fill(drop, torch.finfo(dtype).min).to(device=DEVICE, dtype=dtype)


def check_mask(ins, scale, causal, mask, dtype, **cfg):
    out = mla_prefill_attention(*ins, scale, causal, mask=mask, **{**BLOCKS, **cfg})
    assert out.dtype == dtype and torch.isfinite(out).all()
    ref = mla_prefill_reference(*[t.float() for t in ins], scale, causal, mask=mask)
    assert max_err(out, ref) < TOL[dtype]
    assert max_err(ref, eager(ins, scale, mask, causal)) < 1e-5  # the reference is eager's math
    return out, ref


@MASK_OVERFLOW_OK
@TMA
@pytest.mark.parametrize("shape", [(2, 2, 37, 37), (1, 2, 21, 45), (1, 2, 40, 23)],
                         ids=lambda s: "x".join(map(str, s)))
def test_mask_causal_as_additive(shape, tma, gen):
    # finfo.min above the diagonal == causal=True (top-left), also through the masked path
    B, H, Sq, Sk = shape
    ins = make(B, H, Sq, Sk, 16, 8, 16, gen)
    out, _ = check_mask(ins, 0.25, False, causal_additive(Sq, Sk), torch.float32, tma=tma)
    assert max_err(out, mla_prefill_attention(*ins, 0.25, True, **BLOCKS)) < 1e-5
    assert max_err(out, mla_prefill_reference(*ins, 0.25, True)) < TOL[torch.float32]


@MASK_OVERFLOW_OK
def test_mask_padding(gen):
    # batch element 1: left padding over a whole key block and right padding, as a
    # [B, 1, Sq, Sk] expand of a [B, 1, 1, Sk] mask (stride 0 over heads and rows)
    B, H, Sq, Sk = 2, 2, 29, 45
    ins = make(B, H, Sq, Sk, 16, 8, 16, gen)
    pad = torch.zeros(B, 1, 1, Sk, device=DEVICE)
    pad[1, ..., :18] = torch.finfo(torch.float32).min
    pad[1, ..., 40:] = torch.finfo(torch.float32).min
    mask = pad.expand(B, 1, Sq, Sk)
    out, _ = check_mask(ins, 0.3, False, mask, torch.float32)
    # batch 0 untouched; batch 1 equals attention over keys 18..39 only
    assert max_err(out[0], mla_prefill_attention(*[t[:1] for t in ins], 0.3, False,
                                                 **BLOCKS)[0]) < 1e-5
    sub = [t[1:, :, :, :] for t in ins[:2]] + [ins[2][1:, :, 18:40], ins[3][1:, 18:40],
                                                ins[4][1:, :, 18:40]]
    assert max_err(out[1], mla_prefill_reference(*sub, 0.3, False)[0]) < TOL[torch.float32]


@MASK_OVERFLOW_OK
@pytest.mark.parametrize("mshape", ["11", "B1", "BH"])
def test_mask_broadcast_and_strides(mshape, gen):
    B, H, Sq, Sk = 2, 3, 21, 37
    ins = make(B, H, Sq, Sk, 16, 8, 16, gen)
    mb, mh = (1 if mshape[0] == "1" else B), (1 if mshape[1] == "1" else H)
    mask = random_mask((mb, mh, Sq, Sk), gen)
    check_mask(ins, 0.25, False, mask, torch.float32)
    if mshape == "BH":  # a sliced view of a longer mask (rows Sk + 11 apart), as
        big = random_mask((mb, mh, Sq, Sk + 11), gen)  # eager's mask[..., :Sk]
        check_mask(ins, 0.25, False, big[..., :Sk], torch.float32)
    else:  # distinct per-(b, h) masks really are told apart
        per = random_mask((B, H, Sq, Sk), gen)
        out = mla_prefill_attention(*ins, 0.25, False, mask=per, **BLOCKS)
        assert max_err(out, eager(ins, 0.25, per)) < TOL[torch.float32]


@MASK_OVERFLOW_OK
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mask_half_precision(dtype, gen):
    # mask in the inputs' dtype, with its own finfo.min (bf16's absorbs the scores in
    # fp32 as fp32's does; fp16's -65504 does not, and eager keeps it as given)
    B, H, Sq, Sk = 2, 2, 37, 45
    ins = make(B, H, Sq, Sk, 32, 16, 32, gen, dtype=dtype)
    check_mask(ins, 32**-0.5 + 0.05, False, random_mask((B, 1, Sq, Sk), gen, dtype), dtype)
    check_mask(ins, 32**-0.5 + 0.05, True, random_mask((1, H, Sq, Sk), gen, dtype), dtype)


@MASK_OVERFLOW_OK
@TMA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mask_fully_masked_rows(dtype, tma, gen):
    # rows masked everywhere: eager's softmax of all-equal finfo.min scores is uniform,
    # i.e. the mean of v over all Sk keys (not NaN, not zeros)
    B, H, Sq, Sk = 2, 2, 24, 37
    ins = make(B, H, Sq, Sk, 16, 8, 16, gen, dtype=dtype)
    mask = random_mask((B, 1, Sq, Sk), gen, dtype)
    dead = [0, 5, 17, 23]
    mask[0, :, dead] = torch.finfo(dtype).min
    mask[1, :, 9] = torch.finfo(dtype).min
    out, ref = check_mask(ins, 0.25, False, mask, dtype, tma=tma)
    mean_v = ins[4].float().mean(dim=2, keepdim=True)  # [B, H, 1, Dv]
    for b, rows in ((0, dead), (1, [9])):
        assert max_err(out[b, :, rows], mean_v[b].expand(H, len(rows), -1)) < TOL[dtype]
        assert max_err(ref[b, :, rows], mean_v[b].expand(H, len(rows), -1)) < 1e-5
    # with causal=True as well: uniform over the keys j <= i
    out = mla_prefill_attention(*ins, 0.25, True, mask=mask, tma=tma, **BLOCKS)
    assert max_err(out, eager(ins, 0.25, mask, causal=True)) < TOL[dtype]
    for i in dead:
        assert max_err(out[0, :, i], ins[4][0, :, : i + 1].float().mean(dim=1)) < TOL[dtype]


@MASK_OVERFLOW_OK
@pytest.mark.parametrize("shape", [(2, 2, 37, 37), (1, 2, 13, 40), (1, 2, 40, 21)],
                         ids=lambda s: "x".join(map(str, s)))
def test_mask_with_causal(shape, gen):
    # both apply: causal on top of a random pattern (packed sequences + padding)
    B, H, Sq, Sk = shape
    ins = make(B, H, Sq, Sk, 16, 8, 16, gen)
    mask = random_mask((B, 1, Sq, Sk), gen)
    check_mask(ins, 0.25, True, mask, torch.float32)
    # block-diagonal packed sequences (no mask on their own) plus causal == causal per segment
    seg = torch.arange(max(Sq, Sk), device=DEVICE) // 16
    packed = torch.zeros(1, 1, Sq, Sk, device=DEVICE).masked_fill(
        seg[:Sq, None] != seg[None, :Sk], torch.finfo(torch.float32).min)
    check_mask(ins, 0.25, True, packed, torch.float32)


@MASK_OVERFLOW_OK
def test_mask_minus_inf(gen):
    # -inf masks too: a row whose first key blocks are all -inf must not turn to NaN
    B, H, Sq, Sk = 1, 2, 20, 50
    ins = make(B, H, Sq, Sk, 16, 8, 16, gen)
    mask = torch.zeros(B, 1, Sq, Sk, device=DEVICE)
    mask[..., :35] = float("-inf")
    mask[..., 3, 35:] = torch.finfo(torch.float32).min  # -inf and finfo.min in one row
    check_mask(ins, 0.25, False, mask, torch.float32)


@MASK_OVERFLOW_OK
def test_mask_rejects_bad(gen):
    ins = make(1, 2, 8, 8, 16, 8, 16, gen)
    with pytest.raises(ValueError):  # does not broadcast to [B, H, Sq, Sk]
        mla_prefill_attention(*ins, 0.25, True, mask=torch.zeros(1, 1, 8, 7, device=DEVICE))
    with pytest.raises(ValueError):
        mla_prefill_attention(*ins, 0.25, True, mask=torch.zeros(1, 3, 8, 8, device=DEVICE))
    with pytest.raises(ValueError):  # boolean masks are not additive
        mla_prefill_attention(*ins, 0.25, True, mask=torch.ones(1, 1, 8, 8, device=DEVICE,
                                                                dtype=torch.bool))
