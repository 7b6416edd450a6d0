"""DeepSeek's inference code in attn_impl="naive" (issue 13 item 4; tests/latent_models.py
NaiveMLA): K and V decompressed into per-head cache buffers, scores an einsum in
[B, S, H, T] order, the [S, T] mask added over the heads. A prefill from position 0
reads back exactly what it wrote, so its attention is over this step's latent: fused,
equal to eager. A later step reads keys written by earlier calls (decompressed, in a
buffer): nothing in its graph makes them a latent's projection, so it stays alone."""
from __future__ import annotations

import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from latent_models import DIMS, NaiveMLA, causal_mask, freqs_cis  # noqa: E402

pytest.importorskip("triton")


def twins(dtype):
    torch.manual_seed(0)
    eager = NaiveMLA(dtype=dtype)
    for p in eager.parameters():  # weights O(1/sqrt(fan_in)): activations not vanishing
        torch.nn.init.normal_(p, std=p.shape[-1] ** -0.5 if p.dim() > 1 else 1.0)
    compiled = NaiveMLA(dtype=dtype)
    compiled.load_state_dict(eager.state_dict())
    return eager, compiled


def run(eager, compiled_model, steps):
    """steps: (start_pos, seqlen) in order, the same inputs to both; compiled outputs,
    eager outputs, reports."""
    reports, outs, refs = [], [], []
    fn = torch.compile(compiled_model, backend="mla", options={"report": reports.append})
    gen = torch.Generator().manual_seed(5)
    freqs = freqs_cis(DIMS["rope"], 64)
    with torch.no_grad():
        for start, seqlen in steps:
            dtype = eager.wq.weight.dtype  # DeepSeek's generate.py makes bf16 the default dtype: the mask's too
            x = torch.randn(2, seqlen, DIMS["dim"], generator=gen).to(dtype)
            f, mask = freqs[start:start + seqlen], causal_mask(seqlen, start, dtype) if seqlen > 1 else None
            refs.append(eager(x, start, f, mask))
            outs.append(fn(x, start, f, mask))
    return outs, refs, reports


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_prefill_fused_and_equal(dtype):
    eager, model = twins(dtype)
    (out,), (ref,), (report,) = run(eager, model, [(0, 6)])
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol)
    assert report.counts().get("attention.mla", 0) == 1, report.format()
    assert report.near_misses == [], report.format()
    (p,) = [m.params for m in report.matches if m.pattern == "attention.mla"]
    assert (p["B"], p["H"], p["Sq"], p["Sk"], p["Dn"], p["Dr"]) == (2, DIMS["heads"], 6, 6, DIMS["nope"], DIMS["rope"])
    assert p["mask"] == "additive" and p["form"] == "decompressed"
    # the caches still hold what eager wrote: the write stays, only the read-back is skipped
    torch.testing.assert_close(model.k_cache, eager.k_cache, rtol=tol, atol=tol)


def test_decode_step_over_old_cache_left_alone():
    eager, model = twins(torch.float32)
    outs, refs, reports = run(eager, model, [(0, 5), (5, 1)])
    for out, ref in zip(outs, refs):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert reports[0].counts().get("attention.mla", 0) == 1
    step = reports[-1]
    assert step.counts().get("attention.mla", 0) == 0, step.format()
    (miss,) = step.near_misses
    assert "key is no cat([k_nope, k_pe]) (aten.slice" in miss.reason, miss.reason  # a read of the K cache
