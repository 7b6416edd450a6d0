"""The prefill op's `empty_row_fill` (left-padded prefill at causal speed): a query row
with no visible unmasked key attends every key, those above the diagonal at the fill;
every other row is causal with the key-only mask.

The rule itself (`reference.empty_rows_mask`) against eager attention under the
materialised mask where(causal & keep, 0, fill): equal on the empty rows always, and
on the others while the scores are bounded (the pass's claim). The Triton kernel (and
both op forms) against the rule, for random key vectors: left padding, holes in the
middle, fully padded sequences, none; fills -65504, finfo.min and -inf; tiles where
only some rows are empty. Under the interpreter on CPU (tests/conftest.py).
"""
import zlib

import pytest
import torch

from mla_compile.custom_ops.reference import empty_rows_mask
from mla_compile.custom_ops.triton_backend import TritonBackend
from test_prefill_op import DEVICE, DIMS, KERNELS, mla_inputs, split_kv_b

op = torch.ops.mla.prefill_attention
FMIN = torch.finfo(torch.float32).min
FILLS = {"fp16_min": -65504.0, "finfo_min": FMIN, "ninf": float("-inf")}
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


@pytest.fixture
def gen(request):
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def keep_vectors(B, S, gen):
    """[B, S] bool key-keep vectors, one per kind (cycled over the batch): left padding
    of a random length, random holes, every key padded, no padding."""
    out = torch.ones(B, S, dtype=torch.bool)
    for b in range(B):
        kind = b % 4
        if kind == 0:
            out[b, :int(torch.randint(1, S, (1,), generator=gen))] = False
        elif kind == 1:
            out[b] = torch.rand(S, generator=gen) < 0.5
        elif kind == 2:
            out[b] = False
    return out


def key_mask(keep, fill, dtype):
    """where(keep, 0, fill) as [B, 1, 1, S] in `dtype` (the pass's key-only mask)."""
    return torch.where(keep, 0.0, fill).to(dtype)[:, None, None, :].to(DEVICE)


def eager_mask(keep, fill, dtype):
    """transformers' materialised mask where(causal & keep, 0, fill): [B, 1, S, S]."""
    S = keep.shape[-1]
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    return torch.where(causal & keep[:, None, None, :], 0.0, fill).to(dtype).to(DEVICE)


def test_rule_is_eager_on_empty_rows_and_causal_elsewhere(gen):
    B, S = 4, 9
    keep = keep_vectors(B, S, gen)
    keep[0, :4], keep[0, 4:] = False, True  # rows 0..3 of batch 0 empty
    rule = empty_rows_mask(key_mask(keep, FMIN, torch.float32), FMIN, S, S)
    full = eager_mask(keep, FMIN, torch.float32)
    empty = ~(keep.cumsum(-1) > 0)  # [B, S]: no kept key at or before the row
    for b in range(B):
        for i in range(S):
            if empty[b, i]:  # eager's row: every key at the fill
                assert (rule[b, 0, i] == full[b, 0, i]).all()
            else:  # causal: the keys above the diagonal -inf, the rest the key mask
                assert (rule[b, 0, i, i + 1:] == float("-inf")).all()
                assert (rule[b, 0, i, :i + 1] == full[b, 0, i, :i + 1]).all()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("form", ["decompressed", "absorbed"])
@pytest.mark.parametrize("fill", list(FILLS))
def test_op_matches_its_rule(kernel, form, fill, gen):
    """Both forms and kernels against the reference of the rule; with a finite fill
    also against eager under the materialised mask (the scores here are small)."""
    B, H, S = 4, 1, 21  # 16-row tiles: rows of one tile empty and not, per batch
    q_nope, q_pe, c_kv, k_pe, kv_b = mla_inputs(B, H, S, S, gen)
    keep = keep_vectors(B, S, gen)
    keep[0, :18] = False  # the second tile: rows 16, 17 empty, 18..20 not
    keep[0, 18:] = True
    f = FILLS[fill]
    mask = key_mask(keep, f, torch.float32)
    w_uk, w_uv = split_kv_b(kv_b, H, DIMS["Dn"], DIMS["Dv"])
    scale = (DIMS["Dn"] + DIMS["Dr"]) ** -0.5
    args = (q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, scale, True, form, kernel, mask, fill == "ninf")
    out = op(*args, None, f)
    rule = op(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, scale, False, form, "reference",
              empty_rows_mask(mask, f, S, S), fill == "ninf")
    torch.testing.assert_close(out, rule, rtol=1e-4, atol=1e-4)
    assert not out.isnan().any()
    if f != float("-inf"):  # eager: every padded row a softmax over all keys
        eager = op(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, scale, False, form, "reference",
                   eager_mask(keep, f, torch.float32))
        torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-4)
    else:  # -inf: the rule is plain causal + the mask (empty rows 0 under safe softmax)
        causal = op(*args)
        torch.testing.assert_close(out, causal, rtol=0, atol=0)
    if kernel == "reference" and form == "decompressed":  # the schema once (opcheck runs it often)
        torch.library.opcheck(op.default, (*args, None, f))


@pytest.mark.skipif(not TritonBackend.supports(DEVICE), reason="Triton needs CUDA or TRITON_INTERPRET=1")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask_dtype", ["same", "float32"])
def test_kernel_tiles_and_dtypes(dtype, mask_dtype, gen):
    """The kernel alone: ragged S, B > 1, heads broadcast; bf16 rounds -65504 to -65536
    (the fill as the mask holds it is what the op compares against)."""
    from mla_compile.custom_ops.triton_prefill import mla_prefill_attention, mla_prefill_reference

    B, H, S, Dn, Dr, Dv = 5, 2, 29, 16, 8, 16
    ts = [torch.randn(*s, generator=gen).to(DEVICE, dtype) for s in
          ((B, H, S, Dn), (B, H, S, Dr), (B, H, S, Dn), (B, S, Dr), (B, H, S, Dv))]
    keep = keep_vectors(B, S, gen)
    keep[4] = torch.arange(S) >= 16  # tile 0 empty, tile 1 not: the causal walk
    mdt = dtype if mask_dtype == "same" else torch.float32
    mask = key_mask(keep, -65504.0, mdt)
    fill = float(torch.tensor(-65504.0).to(mdt))
    out = mla_prefill_attention(*ts, 0.2, True, mask=mask, empty_row_fill=fill, block_m=16, block_n=16)
    ref = mla_prefill_reference(*ts, 0.2, True, mask=mask, empty_row_fill=fill)
    tol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol)
    eager = mla_prefill_reference(*ts, 0.2, False, mask=eager_mask(keep, fill, mdt))
    torch.testing.assert_close(out.float(), eager.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("change, message", [
    (dict(causal=False), "empty_row_fill needs causal=True and a mask"),
    (dict(mask=None), "empty_row_fill needs causal=True and a mask"),
    (dict(mask=torch.zeros(2, 1, 3, 5)), r"empty_row_fill needs a key-only mask \(size 1 on the query axis\)"),
])
def test_invalid_use_is_named(change, message):
    B, H, S = 2, 2, 3
    q_nope, q_pe, c_kv, k_pe, kv_b = mla_inputs(B, H, S, 5, torch.Generator().manual_seed(0))
    w_uk, w_uv = split_kv_b(kv_b, H, DIMS["Dn"], DIMS["Dv"])
    args = dict(q_nope=q_nope, q_pe=q_pe, c_kv=c_kv, k_pe=k_pe, w_uk=w_uk, w_uv=w_uv, scale=0.1, causal=True,
                form="decompressed", impl="reference", mask=torch.zeros(2, 1, 1, 5), empty_row_fill=FMIN)
    args.update({k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in change.items()})
    if args["mask"] is not None:
        args["mask"] = args["mask"].to(DEVICE)
    with pytest.raises(ValueError, match=f"mla.prefill_attention: {message}"):
        op(**args)


@pytest.mark.parametrize("kernel", KERNELS)
def test_with_sinks(kernel, gen):
    """Attention sinks join every row's denominator, the empty rows' too: the rule's
    mask with the sinks, whichever kernel."""
    B, H, S = 2, 2, 19
    q_nope, q_pe, c_kv, k_pe, kv_b = mla_inputs(B, H, S, S, gen)
    keep = keep_vectors(B, S, gen)
    keep[1, :17], keep[1, 17:] = False, True
    mask, sinks = key_mask(keep, FMIN, torch.float32), torch.randn(H, generator=gen).to(DEVICE)
    w_uk, w_uv = split_kv_b(kv_b, H, DIMS["Dn"], DIMS["Dv"])
    out = op(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, 0.3, True, "decompressed", kernel, mask, False, sinks, FMIN)
    rule = op(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, 0.3, False, "decompressed", "reference",
              empty_rows_mask(mask, FMIN, S, S), False, sinks)
    torch.testing.assert_close(out, rule, rtol=1e-4, atol=1e-4)
