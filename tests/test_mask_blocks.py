"""Mask block tables (custom_ops/mask_blocks.py) and the prefill kernel's tile skipping.

Random block patterns: every (query tile, key tile) block is drawn EMPTY (all -inf),
FULL (all 0, some -0.0), finfo.min, or random additive values with -inf / finfo.min
holes. The Triton classifier must equal the PyTorch one and the pattern as drawn;
the kernel with skipping must equal the kernel without it bit for bit (NaN where it
has NaN), and eager's math.
"""
import os
import zlib

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")

from kernel_device import kernel_test_device  # noqa: E402
from mla_compile.custom_ops import triton_prefill  # noqa: E402
from mla_compile.custom_ops.mask_blocks import (  # noqa: E402
    EMPTY, FULL, PARTIAL, classify_blocks, classify_blocks_reference)
from mla_compile.custom_ops.triton_prefill import (  # noqa: E402
    mla_prefill_attention, mla_prefill_reference)

DEVICE = kernel_test_device(triton_prefill._mla_prefill_fwd)
pytestmark = [
    pytest.mark.skipif(DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device"),
    # the interpreter's numpy warns on finfo.min * log2(e) (-> -inf, as on the GPU) and 0/0
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning"),
]

BM, BN = 16, 16
NINF = float("-inf")


@pytest.fixture
def gen(request):
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def block_pattern(shape, gen, dtype=torch.float32, kinds=("empty", "full", "min", "rand")):
    """(mask [.., Sq, Sk] of `shape`, drawn kind per block [.., nM, nN]); blocks of
    BM x BN, ragged at the end."""
    *lead, Sq, Sk = shape
    nm, nn = -(-Sq // BM), -(-Sk // BN)
    pick = torch.randint(0, len(kinds), (*lead, nm, nn), generator=gen)
    flat = pick.view(-1)
    flat[:len(kinds)] = torch.arange(len(kinds))[:flat.numel()]  # every kind at least once
    fmin = torch.finfo(dtype).min
    mask = torch.empty(*lead, nm * BM, nn * BN)
    tiles = mask.view(*lead, nm, BM, nn, BN).movedim(-3, -2)  # [.., nM, nN, BM, BN] view
    for i, kind in enumerate(kinds):
        sel = pick == i
        n = int(sel.sum())
        if kind == "empty":
            tiles[sel] = NINF
        elif kind == "full":  # zeros of both signs
            tiles[sel] = torch.where(torch.rand(n, BM, BN, generator=gen) < 0.5, 0.0, -0.0)
        elif kind == "min":
            tiles[sel] = fmin
        else:
            t = 0.5 * torch.randn(n, BM, BN, generator=gen)
            u = torch.rand(n, BM, BN, generator=gen)
            tiles[sel] = t.masked_fill(u < 0.3, NINF).masked_fill(u > 0.85, fmin)
    return mask[..., :Sq, :Sk].to(DEVICE, dtype), pick


def expected_kinds(mask):
    """The table by brute force over each block's valid entries."""
    *lead, Sq, Sk = mask.shape
    nm, nn = -(-Sq // BM), -(-Sk // BN)
    out = torch.empty(*lead, nm, nn, dtype=torch.int8)
    for i in range(nm):
        for j in range(nn):
            t = mask[..., i * BM:(i + 1) * BM, j * BN:(j + 1) * BN].flatten(-2).cpu()
            ninf = (t == NINF).all(-1) if t.dtype != torch.bool else (~t).all(-1)
            zero = (t == 0).all(-1) if t.dtype != torch.bool else t.all(-1)
            out[..., i, j] = torch.where(ninf, EMPTY, torch.where(zero, FULL, PARTIAL)).to(torch.int8)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 3, 37, 45), (2, 1, 16, 33), (1, 1, 40, 23), (29, 17)],
                         ids=lambda s: "x".join(map(str, s)))
def test_classifier_random_blocks(shape, dtype, gen):
    mask, pick = block_pattern(shape, gen, dtype)
    Sq, Sk = shape[-2:]
    table = classify_blocks(mask, Sq, Sk, BM, BN)
    ref = classify_blocks_reference(mask, Sq, Sk, BM, BN)
    want = expected_kinds(mask)
    assert torch.equal(table.cpu(), ref.cpu())
    assert torch.equal(ref.cpu().reshape(want.shape), want)
    # blocks drawn all -inf or all 0 are EMPTY / FULL; finfo.min blocks are not EMPTY
    kinds = ref.cpu().reshape(pick.shape)
    assert (kinds[pick == 0] == EMPTY).all() and (kinds[pick == 1] == FULL).all()
    assert (kinds[pick == 2] == PARTIAL).all()
    assert {EMPTY, FULL, PARTIAL} <= set(kinds.unique().tolist())


def test_classifier_broadcast_and_strides(gen):
    B, H, Sq, Sk = 2, 3, 37, 45
    # key padding [B, 1, 1, Sk]: one row of tiles, read once per batch element
    pad = torch.zeros(B, 1, 1, Sk, device=DEVICE)
    pad[1, ..., :20] = NINF
    table = classify_blocks(pad, Sq, Sk, BM, BN)
    assert table.shape == (B, 1, 1, 3)
    assert table.cpu().tolist() == [[[[FULL, FULL, FULL]]], [[[EMPTY, PARTIAL, FULL]]]]
    assert torch.equal(table.cpu(), classify_blocks_reference(pad, Sq, Sk, BM, BN).cpu())
    # the same mask expanded (stride 0) and a sliced view of a wider one
    big, _ = block_pattern((B, 1, Sq, Sk + 20), gen)
    for m in (pad.expand(B, 1, Sq, Sk), big[..., 3:Sk + 3]):
        table = classify_blocks(m, Sq, Sk, BM, BN)
        assert torch.equal(table.cpu(), classify_blocks_reference(m, Sq, Sk, BM, BN).cpu())
        assert torch.equal(table.cpu(), expected_kinds(m.expand(B, 1, Sq, Sk)))
    # boolean masks read as where(m, 0, -inf)
    keep = torch.rand(B, H, Sq, Sk, generator=gen).to(DEVICE) < 0.5
    keep[:, :, :16, :16] = False
    keep[:, :, 16:32, 16:32] = True
    table = classify_blocks(keep, Sq, Sk, BM, BN)
    assert torch.equal(table.cpu(), classify_blocks_reference(keep, Sq, Sk, BM, BN).cpu())
    assert torch.equal(table.cpu(), expected_kinds(keep))
    assert (table[:, :, 0, 0] == EMPTY).all() and (table[:, :, 1, 1] == FULL).all()


def make(B, H, Sq, Sk, gen, dtype=torch.float32):
    def r(*s):
        return torch.randn(*s, generator=gen).to(DEVICE, dtype)
    return r(B, H, Sq, 16), r(B, H, Sq, 8), r(B, H, Sk, 16), r(B, Sk, 8), r(B, H, Sk, 16)


def same(a, b):
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def run_both(ins, scale, causal, mask, zero_empty_rows, **cfg):
    kw = dict(mask=mask, zero_empty_rows=zero_empty_rows, block_m=BM, block_n=BN, **cfg)
    skipped = mla_prefill_attention(*ins, scale, causal, block_skip=True, **kw)
    plain = mla_prefill_attention(*ins, scale, causal, block_skip=False, **kw)
    assert same(skipped, plain), (skipped - plain).abs().nan_to_num().max()
    return skipped


def check_eager(out, ins, scale, causal, mask, zero_empty_rows, tol=1e-4):
    ref = mla_prefill_reference(*[t.float() for t in ins], scale, causal, mask=mask)
    if zero_empty_rows:  # SDPA's safe softmax: rows with every score -inf give 0
        keep = torch.ones(ref.shape[-2], ins[2].shape[2], dtype=torch.bool, device=DEVICE)
        vis = (mask.float() > NINF).expand(*ref.shape[:2], *keep.shape)
        if causal:
            vis = vis & keep.tril()
        ref = ref.masked_fill(~vis.any(-1, keepdim=True), 0.0)
    assert torch.equal(out.isnan(), ref.isnan())
    assert (out.float() - ref).nan_to_num().abs().max() < tol


@pytest.mark.parametrize("zero_empty_rows", [False, True], ids=["nan_rows", "safe"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mshape", ["BH", "B1", "11"])
def test_kernel_random_blocks(mshape, causal, zero_empty_rows, gen):
    B, H, Sq, Sk = 2, 2, 37, 45
    ins = make(B, H, Sq, Sk, gen)
    lead = (B if mshape[0] == "B" else 1, H if mshape[1] == "H" else 1)
    mask, _ = block_pattern((*lead, Sq, Sk), gen)
    out = run_both(ins, 0.3, causal, mask, zero_empty_rows)
    check_eager(out, ins, 0.3, causal, mask, zero_empty_rows)


@pytest.mark.parametrize("tma", [False, True], ids=["ptr", "tma"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_random_blocks_half(dtype, tma, gen):
    B, H, Sq, Sk = 1, 2, 33, 40
    ins = make(B, H, Sq, Sk, gen, dtype)
    mask, _ = block_pattern((B, 1, Sq, Sk), gen, dtype)
    for causal in (False, True):
        out = run_both(ins, 0.3, causal, mask, True, tma=tma)
        check_eager(out, ins, 0.3, causal, mask, True, tol=2e-2)


@pytest.mark.parametrize("fill", ["-inf", "finfo.min"])
def test_kernel_left_padding_and_causal(fill, gen):
    # transformers' causal + left padding mask: pad query rows see no key (-inf: NaN or
    # 0 with safe softmax; finfo.min: eager's uniform softmax over every key)
    B, H, Sq = 2, 2, 45
    ins = make(B, H, Sq, Sq, gen)
    f = NINF if fill == "-inf" else torch.finfo(torch.float32).min
    i = torch.arange(Sq, device=DEVICE)
    key_ok = torch.ones(B, Sq, dtype=torch.bool, device=DEVICE)
    key_ok[1, :19] = False  # batch element 1: 19 pad tokens on the left
    visible = (i[None, :] <= i[:, None])[None, None] & key_ok[:, None, None, :]
    mask = torch.zeros(B, 1, Sq, Sq, device=DEVICE).masked_fill(~visible, f)
    for zero_empty_rows in (False, True):
        out = run_both(ins, 0.25, False, mask, zero_empty_rows)
        check_eager(out, ins, 0.25, False, mask, zero_empty_rows)
    if fill == "finfo.min":  # the pad rows are the mean of v over all keys, as eager's
        mean_v = ins[4][1].mean(dim=1)
        assert (out[1, :, :19] - mean_v[:, None]).abs().max() < 1e-4


def test_kernel_dsa_topk(gen):
    # DSA: per query, the top-k keys of an index score (causal) are 0, the rest -inf
    B, H, Sq, topk = 1, 2, 48, 12
    ins = make(B, H, Sq, Sq, gen)
    i = torch.arange(Sq, device=DEVICE)
    score = torch.rand(B, Sq, Sq, generator=gen).to(DEVICE).masked_fill(i[None, :] > i[:, None], NINF)
    idx = score.topk(topk, dim=-1).indices
    mask = torch.full((B, Sq, Sq), NINF, device=DEVICE).scatter(-1, idx, 0.0)
    mask = mask.masked_fill(i[None, :] > i[:, None], NINF)[:, None]
    out = run_both(ins, 0.25, True, mask, True)
    check_eager(out, ins, 0.25, True, mask, True)


def test_empty_blocks_are_not_read(gen):
    # poison the keys and values of an all -inf key block: visiting it gives NaN
    # (NaN * 0), skipping it gives attention over the other keys
    B, H, Sq, Sk = 1, 2, 20, 48
    ins = [t.clone() for t in make(B, H, Sq, Sk, gen)]
    mask = torch.zeros(B, 1, Sq, Sk, device=DEVICE)
    mask[..., 16:32] = NINF
    for t in (ins[2], ins[4]):
        t[:, :, 16:32] = float("nan")
    ins[3][:, 16:32] = float("nan")
    kw = dict(mask=mask, block_m=BM, block_n=BN)
    out = mla_prefill_attention(*ins, 0.25, False, block_skip=True, **kw)
    assert torch.isnan(mla_prefill_attention(*ins, 0.25, False, block_skip=False, **kw)).any()
    assert torch.isfinite(out).all()
    keep = torch.cat([torch.arange(16), torch.arange(32, 48)]).to(DEVICE)
    sub = ins[:2] + [ins[2][:, :, keep], ins[3][:, keep], ins[4][:, :, keep]]
    assert (out - mla_prefill_reference(*sub, 0.25, False)).abs().max() < 1e-4
