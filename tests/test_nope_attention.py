"""MLA with no RoPE part (NoPE, issue 13 item 3): the pass fuses it as
`mla.prefill_attention` with zero-width rope operands (Dr = 0), decompressed for a
prefill and absorbed for a decode step over a latent cache, equal to eager; the
kernels compile the rope dot out. Plain multi-head attention (no latent) stays alone.

Models: tests/nope_models.py (the code shapes of Kimi-Linear, GLM-5-Next and
Mistral-Large-4's NoPE layers in transformers 5.23, and one with no rope part at all).
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from nope_models import DN, DV, H, R, NopeMLA, SeparateProjections  # noqa: E402
from mla_compile.custom_ops.reference import latent_attention_reference, prefill_attention_reference  # noqa: E402

triton = pytest.importorskip("triton")

from kernel_device import kernel_test_device  # noqa: E402
from mla_compile.custom_ops import triton_decode  # noqa: E402

# the kernel tests below: interpreted on CPU (CI), compiled on a GPU
KERNEL_DEVICE = kernel_test_device(triton_decode._decode_split)
needs_kernel_device = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")


def compile_run(model, inputs):
    reports = []
    compiled = torch.compile(model, backend="mla", options={"report": reports.append})
    with torch.no_grad():
        out, ref = compiled(*inputs), model(*inputs)
    assert len(reports) == 1
    return out, ref, reports[0]


@pytest.mark.parametrize("style, attn, dtype", [
    ("kimi", "eager", torch.float32), ("mistral", "eager", torch.float32),
    ("plain", "sdpa", torch.float32), ("kimi", "sdpa", torch.bfloat16)])
@pytest.mark.parametrize("past", [0, 6], ids=["prefill", "decode"])
def test_nope_fused_and_equal(style, attn, dtype, past):
    model = NopeMLA(dtype, style=style, attn=attn)
    inputs = model.example_inputs(S=1 if past else 5, past=past)
    out, ref, report = compile_run(model, inputs)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert ref.abs().max() > 0.1 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol)
    assert report.counts() == {"attention.mla": 1}, report.format()
    assert report.near_misses == [], report.format()
    (p,) = [m.params for m in report.matches]
    assert (p["H"], p["Dn"], p["Dr"], p["Dv"], p["R"]) == (H, DN, 0, DV, R), p
    assert p["form"] == ("absorbed" if past else "decompressed"), p
    assert p["scale_decomposition"].startswith(f"({DN}+0)^-0.5"), p


def test_plain_multi_head_attention_left_alone():
    """With no rope part the key alone does not say MLA: keys and values from two
    projections of x are plain attention, reported and left alone."""
    model = SeparateProjections()
    out, ref, report = compile_run(model, model.example_inputs())
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert report.counts().get("attention.mla", 0) == 0
    (miss,) = report.near_misses
    assert "not windows of one up-projection" in miss.reason


def _operands(B, Sq, Sk, dtype, gen):
    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)
    q_nope = rand(B, H, Sq, DN)
    c_kv = rand(B, Sk, R)
    # zero-width rope parts as the pass passes them: views of q and of the latent
    return q_nope, q_nope[..., :0], c_kv, c_kv[..., :0], rand(H, DN, R) * R ** -0.5, rand(H, DV, R)


@needs_kernel_device
@pytest.mark.parametrize("form", ["decompressed", "absorbed"])
@pytest.mark.parametrize("causal", [False, True])
def test_ops_with_zero_width_rope(form, causal):
    """Both forms on the Triton kernels (interpreted) equal the reference with Dr = 0,
    which is plain softmax(q_nope k_nope^T * scale) v."""
    gen = torch.Generator().manual_seed(3)
    args = [a.to(KERNEL_DEVICE) for a in _operands(2, 5, 19, torch.float32, gen)]
    mask = torch.randn(2, 1, 5, 19, generator=gen).to(KERNEL_DEVICE)
    out = torch.ops.mla.prefill_attention(*args, 0.3, causal, form, "triton", mask)
    ref = prefill_attention_reference(*args, 0.3, causal, form, mask)
    q, _, c, _, wk, wv = args
    k, v = torch.einsum("bsr,hdr->bhsd", c, wk), torch.einsum("bsr,hdr->bhsd", c, wv)
    s = q @ k.transpose(-1, -2) * 0.3 + mask
    if causal:
        s = s.masked_fill(~torch.ones(5, 19, dtype=torch.bool, device=s.device).tril(), float("-inf"))
    torch.testing.assert_close(ref, s.softmax(-1) @ v, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@needs_kernel_device
def test_decode_kernels_with_zero_width_rope():
    """The split and the wide decode kernels with Dr = 0, several splits."""
    from mla_compile.custom_ops.triton_decode import mla_decode_attention
    from mla_compile.custom_ops.triton_decode_wide import mla_decode_attention_wide
    gen = torch.Generator().manual_seed(4)
    q_lat = torch.randn(2, H, 1, R, generator=gen).to(KERNEL_DEVICE)
    c = torch.randn(2, 40, R, generator=gen).to(KERNEL_DEVICE)
    q_pe, k_pe = q_lat[..., :0], c[..., :0]
    ref = latent_attention_reference(q_lat, q_pe, c, k_pe, 0.2, False)
    for run in (mla_decode_attention, mla_decode_attention_wide):
        out = run(q_lat, q_pe, c, k_pe, 0.2, False, splits=3, block_n=16)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
