"""Attention the model already wrote over the latent (DeepSeek's inference code,
"absorb" mode; tests/latent_models.py) becomes `mla.latent_attention`: prefill with
a causal mask, chunked prefill, decode steps, fp32 and bf16, B = 1, compared with
eager on fresh inputs, caches included; look-alikes are left alone with a reason;
twenty decode steps with batch and context changing compile a bounded number of
graphs. The op itself against its reference, and its argument checks."""
import copy
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from latent_models import DIMS, AbsorbedMLA, causal_mask, freqs_cis  # noqa: E402
from mla_compile.custom_ops import latent_attention_reference  # noqa: E402

FREQS = freqs_cis(DIMS["rope"], 64)
TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


def latent_matches(reports):
    return [m.params for r in reports for m in r.matches if m.pattern == "attention.mla"]


def near_misses(reports):
    return [n.reason for r in reports for n in r.near_misses if n.pattern == "attention.mla"]


def steps(model, compiled, plan, B, dtype, seed):
    """Run (start_pos, seqlen) steps on both, comparing outputs and caches each step."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for start, seqlen in plan:
            x = torch.randn(B, seqlen, DIMS["dim"], generator=gen).to(dtype)
            mask = causal_mask(seqlen, start, dtype) if seqlen > 1 else None
            args = (start, FREQS[start:start + seqlen], mask)
            want = model(x, *args)
            got = compiled(x, *args)
            torch.testing.assert_close(got, want, rtol=TOL[dtype], atol=TOL[dtype])
            torch.testing.assert_close(compiled_module(compiled).kv_cache, model.kv_cache,
                                       rtol=TOL[dtype], atol=TOL[dtype])


def compiled_module(compiled):
    return getattr(compiled, "_orig_mod", compiled)


def build(dtype=torch.float32, variant=None, seed=0):
    torch.manual_seed(seed)
    model = AbsorbedMLA(**DIMS, variant=variant, dtype=dtype).eval()
    reports = []
    twin = copy.deepcopy(model)
    return model, torch.compile(twin, backend="mla", options={"report": reports.append}), reports


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("B", [1, 2])
def test_prefill_then_decode_steps(B, dtype):
    """Prefill (5 queries, causal mask; the einsum merges the query positions with the
    heads into the bmm's rows) and three decode steps: every graph fused, equal."""
    torch._dynamo.reset()
    model, compiled, reports = build(dtype)
    steps(model, compiled, [(0, 5), (5, 1), (6, 1), (7, 1)], B, dtype, seed=B)
    matches = latent_matches(reports)
    assert len(matches) == len(reports) >= 2 and not near_misses(reports)
    assert all(m["form"] == "latent" and m["R"] == DIMS["rank"] and m["Dr"] == DIMS["rope"] and m["B"] == B
               for m in matches)
    heads = DIMS["heads"]
    assert (matches[0]["rows"], matches[0]["Sk"], matches[0]["mask"]) == (f"5x{heads}", 5, "additive")
    assert all(m["rows"] == f"1x{heads}" and m["mask"] == "none" for m in matches[1:])
    assert abs(matches[0]["scale"] - model.scale) < 1e-7  # the graph's scale, not (R + Dr)^-0.5


def test_chunked_prefill_over_a_filled_cache():
    torch._dynamo.reset()
    model, compiled, reports = build(seed=3)
    steps(model, compiled, [(0, 3), (3, 4)], 2, torch.float32, seed=3)
    matches = latent_matches(reports)
    assert len(matches) == len(reports) == 2 and not near_misses(reports)
    # the second graph is dynamic in the positions (Dynamo saw two): symbolic sizes
    assert matches[1]["rows"].endswith(f"x{DIMS['heads']}") and "+" in str(matches[1]["Sk"])


def test_op_in_the_compiled_code():
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    model, compiled, _ = build(seed=4)
    x = torch.randn(2, 1, DIMS["dim"])
    with torch.no_grad():
        _, code = run_and_get_code(compiled, x, 4, FREQS[4:5], None)
    assert "mla.latent_attention" in "\n".join(code)


@pytest.mark.parametrize("variant, reason", [
    ("value_other", "neither term's key is the value"),
    ("pe_per_head", "a key that varies over the query axis"),
    ("scaled_apart", "scaled differently"),
])
def test_look_alikes_left_alone(variant, reason):
    torch._dynamo.reset()
    model, compiled, reports = build(variant=variant, seed=5)
    steps(model, compiled, [(0, 3), (3, 1)], 2, torch.float32, seed=5)
    assert not latent_matches(reports)
    decode = near_misses(reports[1:])  # the step with one query: the latent form's own reason
    assert any(reason in r for r in decode), decode


def test_twenty_decode_steps_batch_and_context_vary():
    """Issue 4, item 5: the batch (1, 2, 3, 1, ...) and the context (one more key each
    step) change every step. Exactly 3 graphs serve all 20 steps: the first step's
    (static), one dynamic in batch and context (from the second step), and one for
    batch 1 with a dynamic context (Dynamo specializes size-1 dims); no recompile after
    the fourth step. Each has the latent attention fused."""
    torch._dynamo.reset()
    model, compiled, reports = build(seed=6)
    gen = torch.Generator().manual_seed(6)
    counts = torch._dynamo.utils.counters
    counts.clear()
    with torch.no_grad():
        x = torch.randn(3, 8, DIMS["dim"], generator=gen)
        model(x, 0, FREQS[:8], causal_mask(8, 0))
        compiled_module(compiled).load_state_dict(model.state_dict())
        compiled_module(compiled).kv_cache.copy_(model.kv_cache)
        compiled_module(compiled).pe_cache.copy_(model.pe_cache)
        for step in range(20):
            B, start = (1, 2, 3)[step % 3], 8 + step
            x = torch.randn(B, 1, DIMS["dim"], generator=gen)
            want = model(x, start, FREQS[start:start + 1])
            got = compiled(x, start, FREQS[start:start + 1])
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert len(reports) == 3, f"{len(reports)} compiles in 20 steps"
    assert len(latent_matches(reports)) == len(reports) and not near_misses(reports)


# ------------------------------------------------------------------ the op


# the op's Triton kernel runs on CPU tensors under the interpreter, else on the GPU
OP_DEVICE = torch.device("cuda" if os.environ.get("TRITON_INTERPRET") != "1" and torch.cuda.is_available()
                         else "cpu")


def _inputs(B=2, H=3, Sq=2, Sk=9, R=16, Dr=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g).to(OP_DEVICE, dtype)
            for s in ((B, H, Sq, R), (B, H, Sq, Dr), (B, Sk, R), (B, Sk, Dr))]


@pytest.mark.parametrize("kernel", ["triton", "reference"])
@pytest.mark.parametrize("causal, masked", [(False, False), (True, False), (False, True)])
def test_op_matches_reference(kernel, causal, masked):
    q_lat, q_pe, c, kr = _inputs()
    mask = torch.randn(2, 1, 2, 9, device=OP_DEVICE) if masked else None
    out = torch.ops.mla.latent_attention(q_lat, q_pe, c, kr, 0.3, causal, kernel, mask)
    torch.testing.assert_close(out, latent_attention_reference(q_lat, q_pe, c, kr, 0.3, causal, mask),
                               rtol=1e-4, atol=1e-4)
    assert out.shape == q_lat.shape


@pytest.mark.parametrize("bad, message", [
    (lambda a: a.__setitem__(0, a[0][0]), "q_lat must be 4-D"),
    (lambda a: a.__setitem__(1, a[1].double()), "q_pe dtype"),
    (lambda a: a.__setitem__(2, a[2][:, :, :8]), "c_kv must be"),
    (lambda a: a.__setitem__(3, a[3][:, :5]), "k_pe must be"),
    (lambda a: a.__setitem__(0, a[0].long()), "q_lat dtype must be one of"),
])
def test_op_validates(bad, message):
    args = _inputs()
    bad(args)
    with pytest.raises(ValueError, match=message):
        torch.ops.mla.latent_attention(*args, 0.3, False, "reference")


def test_op_validates_mask_and_kernel():
    args = _inputs()
    with pytest.raises(ValueError, match="mask .* must broadcast"):
        torch.ops.mla.latent_attention(*args, 0.3, False, "reference", torch.zeros(2, 1, 2, 5, device=OP_DEVICE))
    with pytest.raises(ValueError, match="kernel must be one of"):
        torch.ops.mla.latent_attention(*args, 0.3, False, "cuda")


@pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                    reason="needs a CUDA device with TRITON_INTERPRET=0")
@pytest.mark.parametrize("H", [16, 128])
def test_cuda_deepseek_dims_decode(H):
    """DeepSeek-V3 dims on the GPU (latent 512, rope 64, bf16): three decode steps
    over a filled cache, the compiled Triton latent kernel against eager."""
    torch._dynamo.reset()
    torch.manual_seed(7)
    model = AbsorbedMLA(dim=256, heads=H, rank=512, nope=128, rope=64, v=128, max_batch=3, max_len=300,
                        dtype=torch.bfloat16).cuda().eval()
    model.kv_cache.normal_()
    model.pe_cache.normal_()
    twin, reports = copy.deepcopy(model), []
    compiled = torch.compile(twin, backend="mla", options={"report": reports.append})
    freqs = freqs_cis(64, 300).cuda()
    with torch.no_grad():
        for pos in (250, 251, 252):
            x = torch.randn(3, 1, 256, device="cuda", dtype=torch.bfloat16)
            torch.testing.assert_close(compiled(x, pos, freqs[pos:pos + 1]), model(x, pos, freqs[pos:pos + 1]),
                                       rtol=3e-2, atol=3e-2)
    assert reports and len(latent_matches(reports)) == len(reports) and not near_misses(reports)
