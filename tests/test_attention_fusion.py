"""backend="mla" rewrites every MLA attention code shape of tests/attention_models.py
into one torch.ops.mla.prefill_attention, leaves look-alikes alone with a reason, and
gives eager's numbers (fresh random inputs, exact match counts).

CPU runs go through the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
"""
from __future__ import annotations

import math
import os
import sys

import pytest
import torch
from torch._inductor.utils import run_and_get_code

sys.path.insert(0, os.path.dirname(__file__))
from attention_models import SHAPES, YARN_MSCALE, AttnSize  # noqa: E402

BY_NAME = {s.name: s for s in SHAPES}
MATCH = [s.name for s in SHAPES if s.kind == "match"]
LEAVE = [s.name for s in SHAPES if s.kind == "leave_alone"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SIZE = AttnSize(B=2, S=7, H=2)
ODD = AttnSize(B=1, S=5, H=3)  # a batch of one (size-1 axes everywhere) and odd heads

# why each look-alike is left alone (a substring of the report's reason)
LEFT_ALONE_BECAUSE = {
    "softcap": "aten.tanh",
    "per_head_rope": "varies over heads",
    "separate_v": "not projections of one latent",
}


def assert_close_to_eager(out, ref, dtype):
    """fp32: 1e-5 of the output's magnitude; bf16: 2e-2 (plain Inductor, with no mla
    rewrite, already differs from eager by up to ~1.3e-2 on these models). NaN fails."""
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.isfinite(out).all() and torch.isfinite(ref).all()
    scale = ref.float().abs().max().item()
    assert scale > 0, "eager output is all zeros: a vacuous comparison"
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol * max(1.0, scale))


def compile_run(model, inputs, **options):
    reports = []
    compiled = torch.compile(model, backend="mla", options={"report": reports.append, **options})
    with torch.no_grad():
        out = compiled(*inputs)
        ref = model(*inputs)
    assert len(reports) == 1, f"one graph expected (no graph break), got {len(reports)}"
    return out, ref, reports[0], compiled


def attention_misses(report):
    return [n for n in report.near_misses if n.pattern == "attention.mla"]


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", MATCH)
def test_shape_fused_and_equal(name, dtype):
    model = BY_NAME[name].build(SIZE, dtype)
    out, ref, report, compiled = compile_run(model, model.example_inputs(seed=11))
    assert_close_to_eager(out, ref, dtype)
    fresh = model.example_inputs(seed=12)  # the same compiled code, new values
    with torch.no_grad():
        assert_close_to_eager(compiled(*fresh), model(*fresh), dtype)
    assert report.counts().get("attention.mla", 0) == model.expected_matches, report.format()
    assert attention_misses(report) == [], report.format()
    assert report.final_graph.count("mla.prefill_attention.default(") == model.expected_matches
    for m in report.matches:
        if m.pattern == "attention.mla":
            p = m.params
            b, t = (1, SIZE.B * SIZE.S) if name.startswith("token") else (SIZE.B, SIZE.S)  # tokens flattened
            assert (p["B"], p["H"], p["Sq"], p["Sk"]) == (b, SIZE.H, t, t), p
            assert (p["Dn"], p["Dr"], p["Dv"], p["R"]) == (SIZE.nope, SIZE.rope, SIZE.v, SIZE.latent), p
            assert p["form"] == "decompressed"  # Sq == Sk: never absorbed


@pytest.mark.parametrize("name", MATCH)
def test_shape_fused_with_size_one_axes(name):
    """B = 1 and H = 3: size-1 axes are where layout proofs go wrong."""
    model = BY_NAME[name].build(ODD, torch.float32)
    out, ref, report, _ = compile_run(model, model.example_inputs(seed=5))
    assert_close_to_eager(out, ref, torch.float32)
    assert report.counts().get("attention.mla", 0) == model.expected_matches, report.format()


@pytest.mark.parametrize("name", LEAVE)
def test_look_alike_left_alone_with_reason(name):
    model = BY_NAME[name].build(SIZE, torch.float32)
    out, ref, report, _ = compile_run(model, model.example_inputs(seed=3))
    assert_close_to_eager(out, ref, torch.float32)
    assert "attention.mla" not in report.counts(), report.format()
    reasons = [n.reason for n in attention_misses(report)]
    assert any(LEFT_ALONE_BECAUSE[name] in r for r in reasons), reasons


def test_strict_raises_on_look_alike():
    from mla_compile.report import LeftAloneError

    model = BY_NAME["softcap"].build(SIZE, torch.float32)
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed, match="aten.tanh") as err, torch.no_grad():
        torch.compile(model, backend="mla", options={"strict": True})(*model.example_inputs())
    assert isinstance(err.value.inner_exception, LeftAloneError)


def test_op_runs_in_compiled_code():
    model = BY_NAME["hf_v3"].build(SIZE, torch.float32)
    inputs = model.example_inputs(seed=2)
    with torch.no_grad():
        _, codes = run_and_get_code(torch.compile(model, backend="mla"), *inputs)
    code = "\n".join(codes)
    assert code.count("torch.ops.mla.prefill_attention.default(") == 1, code


def test_attention_option_off():
    model = BY_NAME["hf_v3"].build(SIZE, torch.float32)
    out, ref, report, _ = compile_run(model, model.example_inputs(), attention=False)
    assert_close_to_eager(out, ref, torch.float32)
    assert "attention.mla" not in report.counts() and "mla.prefill_attention" not in report.final_graph


# ------------------------------------------------------------------ the softmax scale

def _scale_match(name):
    model = BY_NAME[name].build(SIZE, torch.float32)
    _, _, report, _ = compile_run(model, model.example_inputs())
    (m,) = [m for m in report.matches if m.pattern == "attention.mla"]
    return m.params


@pytest.mark.parametrize("name, mscale", [("hf_v3", True), ("hf_div_sqrt", False),
                                          ("sdpa_causal", True), ("sdpa_no_mask", False)])
def test_scale_read_from_graph_and_decomposed(name, mscale):
    """The scale is the graph's (seed 000): (nope + rope)^-0.5 times mscale^2 where the
    model folds YaRN in, carried as read; the report shows the decomposition."""
    p = _scale_match(name)
    qk = SIZE.nope + SIZE.rope
    want = qk ** -0.5 * (YARN_MSCALE ** 2 if mscale else 1.0)
    assert math.isclose(p["scale"], want, rel_tol=1e-6), p
    rest = YARN_MSCALE ** 2 if mscale else 1.0
    assert p["scale_decomposition"] == f"({SIZE.nope}+{SIZE.rope})^-0.5 * {rest:.6g}", p
    # the scale a latent-width (seed 000) or mscale-less kernel would use is far off
    assert not math.isclose(p["scale"], (SIZE.latent + SIZE.rope) ** -0.5, rel_tol=1e-3)
    if mscale:
        assert not math.isclose(p["scale"], qk ** -0.5, rel_tol=1e-3)


def test_extra_query_multiply_stays_in_the_math():
    """q_nope * 0.5 (a LoRA-style factor) is inside the fused op's q_nope, not dropped:
    the compiled model equals eager, and eager without the factor differs."""
    model = BY_NAME["hf_q_nope_scaled"].build(SIZE, torch.float32)
    inputs = model.example_inputs(seed=4)
    out, ref, report, _ = compile_run(model, inputs)
    assert_close_to_eager(out, ref, torch.float32)
    assert report.counts()["attention.mla"] == 1


# ------------------------------------------------------------------ training, dynamic shapes

def test_training_graph_left_alone_and_correct():
    model = BY_NAME["hf_v3"].build(SIZE, torch.float32).train()
    x, *rest = model.example_inputs(seed=6)
    reports = []
    compiled = torch.compile(model, backend="mla", options={"report": reports.append})
    grads = []
    for fn in (model, compiled):
        model.zero_grad()
        xi = x.clone().requires_grad_(True)
        fn(xi, *rest).square().mean().backward()
        grads.append([xi.grad.clone()] + [p.grad.clone() for p in model.parameters()])
    for g_eager, g_compiled in zip(*grads):
        torch.testing.assert_close(g_compiled, g_eager, rtol=1e-4, atol=1e-5)
    assert all("attention.mla" not in r.counts() for r in reports)
    reasons = [n.reason for r in reports for n in r.near_misses if n.pattern == "attention.mla"]
    assert any("training" in r for r in reasons), reasons


@pytest.mark.parametrize("name", ["hf_v3", "sdpa_causal", "bshd_einsum_neox"])
def test_dynamic_sequence_length(name):
    """Batch and sequence length dynamic (mark_dynamic): one graph serves both sizes."""
    model = BY_NAME[name].build(SIZE, torch.float32)
    reports = []
    compiled = torch.compile(model, backend="mla", options={"report": reports.append})
    with torch.no_grad():
        for B, S in ((2, 6), (3, 9)):
            inputs = model.example_inputs(seed=S, S=S, B=B)
            for t in inputs:
                for d, n in enumerate(t.shape):
                    if n in (B, S):
                        torch._dynamo.mark_dynamic(t, d)
            assert_close_to_eager(compiled(*inputs), model(*inputs), torch.float32)
    assert len(reports) == 1 and reports[0].counts().get("attention.mla") == 1, [r.format() for r in reports]
    assert "s" in str(reports[0].matches[-1].params["Sq"])  # symbolic, not specialised


def test_runtime_scale_left_alone_with_advice():
    """dynamic=True turns the module's float scale into a graph input: left alone,
    and the report says what to do."""
    model = BY_NAME["hf_v3"].build(SIZE, torch.float32)
    reports = []
    with torch.no_grad():
        inputs = model.example_inputs(seed=1)
        out = torch.compile(model, backend="mla", dynamic=True, options={"report": reports.append})(*inputs)
        assert_close_to_eager(out, model(*inputs), torch.float32)
    reasons = [n.reason for r in reports for n in r.near_misses if n.pattern == "attention.mla"]
    assert any("specialize_float" in r for r in reasons), reasons


# ------------------------------------------------------------------ regressions found by the fuzzer

class _Sdpa(torch.nn.Module):
    """MLA with V zero-padded (so CPU SDPA is the fused flash op) or not, mask given."""
    B, S, H, N, R, V, L, HID = 2, 5, 2, 8, 4, 8, 16, 16

    def __init__(self, pad_v: bool, inplace_eager: bool = False, einsum: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        lin = lambda i, o: torch.nn.Parameter(torch.randn(o, i, generator=g) * i ** -0.5)  # noqa: E731
        self.wq, self.wkv_a = lin(self.HID, self.H * (self.N + self.R)), lin(self.HID, self.L + self.R)
        self.wkv_b = lin(self.L, self.H * (self.N + self.V))
        self.pad_v, self.inplace_eager, self.einsum = pad_v, inplace_eager, einsum

    def forward(self, x, mask):
        B, S, H, N, R, V, L = self.B, self.S, self.H, self.N, self.R, self.V, self.L
        q = torch.nn.functional.linear(x, self.wq).view(B, S, H, N + R).transpose(1, 2)
        q = torch.cat(torch.split(q, [N, R], dim=-1), dim=-1)  # (where RoPE would rotate q_pe)
        c_kv, k_pe = torch.split(torch.nn.functional.linear(x, self.wkv_a), [L, R], dim=-1)
        kv = torch.nn.functional.linear(c_kv, self.wkv_b).view(B, S, H, N + V).transpose(1, 2)
        k_nope, v = torch.split(kv, [N, V], dim=-1)
        k = torch.cat([k_nope, k_pe.view(B, 1, S, R).expand(-1, H, -1, -1)], dim=-1)
        if self.inplace_eager:  # scale folded into q, mask added in place on the matmul's output
            q = q * (N + R) ** -0.5
            scores = torch.einsum("bhsd,bhtd->bhst", q, k) if self.einsum else torch.matmul(q, k.transpose(2, 3))
            scores += mask  # functionalised: add(view of the bmm), views back to the bmm and out again
            return torch.matmul(scores.softmax(-1), v)
        if self.pad_v:
            v = torch.nn.functional.pad(v, [0, N + R - V])
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)[..., :V]
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("pad_v", [True, False], ids=["fused_sdpa", "sdpa_math"])
def test_sdpa_fully_masked_row_gives_zero_like_eager(pad_v):
    """A left-padded row sees no key: SDPA (fused op and math path alike) returns 0 there;
    the fused MLA op must too, not NaN (a miscompile the fuzzer found)."""
    model = _Sdpa(pad_v)
    keep = torch.ones(2, 1, 5, 5, dtype=torch.bool).tril()
    keep[1, :, :, :2] = False
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    out, ref, report, _ = compile_run(model, (x, keep))
    assert report.counts().get("attention.mla") == 1, report.format()
    assert (ref[1, :, 0] == 0).all() and torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("einsum", [False, True], ids=["matmul", "einsum"])
def test_inplace_mask_add_on_matmul_output_is_matched(einsum):
    """The views back and forth are proven the identity (with an einsum's permutes:
    by mapping an arange through them), so the add is the scores + mask it is."""
    model = _Sdpa(False, inplace_eager=True, einsum=einsum)
    mask = torch.zeros(2, 1, 5, 5).masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(2))
    out, ref, report, _ = compile_run(model, (x, mask))
    assert report.counts().get("attention.mla") == 1, report.format()
    assert_close_to_eager(out, ref, torch.float32)
