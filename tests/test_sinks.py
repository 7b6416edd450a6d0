"""Attention sinks (issue 13 item 2): a logit per head that joins every row's softmax
denominator and has no value. The Triton kernels (prefill, split decode, wide decode;
interpreted on CPU) against the reference, and the ops' checks and opcheck. The pass
side: the "sink" code shape of tests/attention_models.py (tests/test_attention_fusion.py)
and the fuzzer's "sink" programs (tests/attention_codegen.py)."""
from __future__ import annotations

import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")
sys.path.insert(0, os.path.dirname(__file__))

from kernel_device import kernel_test_device  # noqa: E402
from mla_compile.custom_ops import triton_prefill  # noqa: E402
from mla_compile.custom_ops.reference import latent_attention_reference, prefill_attention_reference  # noqa: E402
from mla_compile.custom_ops.triton_decode import mla_decode_attention  # noqa: E402
from mla_compile.custom_ops.triton_decode_wide import mla_decode_attention_wide  # noqa: E402

DEVICE = kernel_test_device(triton_prefill._mla_prefill_fwd)
pytestmark = pytest.mark.skipif(DEVICE is None, reason="needs TRITON_INTERPRET=1 (CPU) or a CUDA device")
B, H, DN, DR, DV, R = 2, 3, 16, 8, 8, 24


def rand(gen, *shape, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=gen) * scale).to(DEVICE, dtype)


def prefill_args(gen, Sq, Sk, dtype=torch.float32):
    return (rand(gen, B, H, Sq, DN, dtype=dtype), rand(gen, B, H, Sq, DR, dtype=dtype),
            rand(gen, B, Sk, R, dtype=dtype), rand(gen, B, Sk, DR, dtype=dtype),
            rand(gen, H, DN, R, scale=R ** -0.5, dtype=dtype), rand(gen, H, DV, R, scale=R ** -0.5, dtype=dtype))


def padding_mask(Sq, Sk, empty_row: bool):
    """Additive [B, 1, Sq, Sk]: batch row 1 sees only its first 3 keys, and with
    `empty_row` its first query sees none (-inf everywhere: the sink takes it all)."""
    m = torch.zeros(B, 1, Sq, Sk)
    m[1, ..., 3:] = float("-inf")
    if empty_row:
        m[1, 0, 0] = float("-inf")
    return m.to(DEVICE)


def test_reference_is_an_extra_softmax_column():
    gen = torch.Generator().manual_seed(0)
    args = prefill_args(gen, 4, 9)
    sinks = rand(gen, H)
    out = prefill_attention_reference(*args, 0.3, False, "decompressed", None, False, sinks)
    q = torch.cat(args[:2], -1)
    k = torch.cat([torch.einsum("bsr,hdr->bhsd", args[2], args[4]), args[3][:, None].expand(B, H, 9, DR)], -1)
    v = torch.einsum("bsr,hdr->bhsd", args[2], args[5])
    s = q @ k.transpose(-1, -2) * 0.3
    col = sinks.view(1, H, 1, 1).expand(B, H, 4, 1)
    p = torch.cat([s, col], -1).softmax(-1)[..., :-1]
    torch.testing.assert_close(out, p @ v, rtol=1e-5, atol=1e-5)
    assert (p.sum(-1) < 1).all()  # the sink takes some mass: not the plain softmax


@pytest.mark.parametrize("form", ["decompressed", "absorbed"])
@pytest.mark.parametrize("mask, causal", [(None, False), (None, True), ("pad", False), ("empty", True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_prefill_op_kernels_match_reference(form, mask, causal, dtype):
    gen = torch.Generator().manual_seed(1)
    Sq, Sk = (7, 7) if causal else (5, 19)
    args = prefill_args(gen, Sq, Sk, dtype)
    sinks = rand(gen, H, scale=2.0)
    m = None if mask is None else padding_mask(Sq, Sk, mask == "empty").to(dtype)
    out = torch.ops.mla.prefill_attention(*args, 0.3, causal, form, "triton", m, False, sinks)
    ref = prefill_attention_reference(*args, 0.3, causal, form, m, False, sinks)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol)
    if mask == "empty":  # no visible key: the sink takes every probability, the output is 0
        assert out[1, :, 0].abs().max() == 0


@pytest.mark.parametrize("run", [mla_decode_attention, mla_decode_attention_wide], ids=["split", "wide"])
@pytest.mark.parametrize("splits", [1, 3])
def test_decode_kernels_count_the_sink_once(run, splits):
    """Several key splits: the sink is in split 0 only, the combine counts it once."""
    gen = torch.Generator().manual_seed(2)
    q_lat, q_pe, c, k_pe = rand(gen, B, H, 2, R), rand(gen, B, H, 2, DR), rand(gen, B, 40, R), rand(gen, B, 40, DR)
    sinks, mask = rand(gen, H, scale=2.0), padding_mask(2, 40, empty_row=True)
    out = run(q_lat, q_pe, c, k_pe, 0.2, False, mask=mask, splits=splits, block_n=16, sinks=sinks)
    ref = latent_attention_reference(q_lat, q_pe, c, k_pe, 0.2, False, mask, False, sinks)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert out[1, :, 0].abs().max() == 0


@pytest.mark.parametrize("op", ["decompressed", "absorbed", "latent", "sparse", "sparse-dense-route"])
def test_one_sink_expanded_over_the_heads(op, monkeypatch):
    """One logit shared by every head, as the pass passes it (expand: stride 0): the
    kernels read head h's sink at SINKS + h, so the backend gives them a unit-stride
    copy (once a miscompile: heads past the first read past the one logit)."""
    from mla_compile.custom_ops import sparse_attention_reference, triton_backend
    gen = torch.Generator().manual_seed(4)
    args = prefill_args(gen, 4, 9)
    sinks = rand(gen, 1, scale=2.0).expand(H)
    assert sinks.stride() == (0,)
    if op.startswith("sparse"):
        if op == "sparse-dense-route":
            monkeypatch.setattr(triton_backend, "gather_chosen_keys", lambda *a: False)
        idx = torch.randint(0, 9, (B, 4, 5), generator=gen).to(DEVICE)
        out = torch.ops.mla.sparse_attention(*args, idx, 0.3, "triton", None, False, False, sinks)
        ref = sparse_attention_reference(*args, idx, 0.3, None, False, sinks)
    elif op == "latent":
        q_lat = rand(gen, B, H, 4, R)
        out = torch.ops.mla.latent_attention(q_lat, *args[1:4], 0.3, False, "triton", None, False, sinks)
        ref = latent_attention_reference(q_lat, *args[1:4], 0.3, False, None, False, sinks)
    else:
        out = torch.ops.mla.prefill_attention(*args, 0.3, False, op, "triton", None, False, sinks)
        ref = prefill_attention_reference(*args, 0.3, False, op, None, False, sinks)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_sinks_checked_and_opcheck():
    gen = torch.Generator().manual_seed(3)
    args = prefill_args(gen, 3, 6)
    with pytest.raises(ValueError, match=r"sinks must be \[H\] = \(3,\)"):
        torch.ops.mla.prefill_attention(*args, 0.3, False, "decompressed", "reference", None, False, rand(gen, 4))
    with pytest.raises(ValueError, match="sinks must be a float tensor"):
        torch.ops.mla.latent_attention(rand(gen, B, H, 1, R), args[1][:, :, :1], args[2], args[3], 0.3, False,
                                       "reference", None, False, torch.zeros(H, dtype=torch.int64))
    for form in ("decompressed", "absorbed"):
        torch.library.opcheck(torch.ops.mla.prefill_attention.default,
                              (*args, 0.3, False, form, "reference", None, False, rand(gen, H)))



def test_sink_softmax_in_fp32_sliced_then_cast_back_fused():
    """The softmax over [scores, sinks] in fp32, sliced, cast back to bf16 (the fuzzer's
    sink_cast_quiet, once a quiet miss): read through the cast, fused, equal."""
    from attention_models import AttnSize, SinkAttention

    class SinkCast(SinkAttention):
        def _probs(self, scores, dtype):
            B, H, S, _ = scores.shape
            sinks = self.sinks.reshape(1, H, 1, 1).expand(B, H, S, 1)
            probs = torch.softmax(torch.cat([scores, sinks], dim=-1), dim=-1, dtype=torch.float32)
            return probs[..., :-1].to(dtype)

    model = SinkCast(AttnSize(B=2, S=7, H=2), torch.bfloat16)
    inputs = model.example_inputs(seed=3)
    reports = []
    with torch.no_grad():
        out = torch.compile(model, backend="mla", options={"report": reports.append})(*inputs)
        ref = model(*inputs)
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2 * ref.float().abs().max().item())
    (p,) = [m.params for m in reports[0].matches if m.pattern == "attention.mla"]
    assert p["sinks"] == "per head" and reports[0].near_misses == [], reports[0].format()
