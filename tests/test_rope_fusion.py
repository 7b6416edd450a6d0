"""backend="mla" rewrites every RoPE code shape of tests/rope_models.py into
torch.ops.mla.rope (q_pe and k_pe in one launch), leaves look-alikes alone with
a reason, and gives eager's numbers.

tests/conftest.py sets TRITON_INTERPRET=1 unless it is set, so CPU runs go
through the Triton interpreter; TRITON_INTERPRET=0 runs the PyTorch reference.
"""
from __future__ import annotations

import logging
import os
import re
import sys

import pytest
import torch
from torch._inductor.utils import run_and_get_code

sys.path.insert(0, os.path.dirname(__file__))
from rope_models import (  # noqa: E402
    NOPE, SHAPES, DeepseekV2Attention, MlaNeoxBSHD, PartialRotary, Size, TokenMLA, rotate_half,
)

SIZES = [Size(B=1, S=5, H=1, rope=8), Size(B=2, S=8, H=4, rope=64)]
MID = Size(B=2, S=7, H=2, rope=16)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SHAPE_IDS = [s.name for s in SHAPES]
BY_NAME = {s.name: s for s in SHAPES}


@pytest.fixture(autouse=True)
def _reset_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ------------------------------------------------------------ helpers

def _flat(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def assert_matches_eager(out, ref, dtype=None):
    """Compiled vs eager: fp32 rel 1e-5, bf16 rel 1e-2 (both also absolute at
    that fraction of the tensor's magnitude, for entries near zero). NaN fails."""
    out, ref = _flat(out), _flat(ref)
    assert len(out) == len(ref)
    for i, (o, r) in enumerate(zip(out, ref)):
        assert o.shape == r.shape and o.dtype == r.dtype, f"output {i}: {o.shape}/{o.dtype} vs {r.shape}/{r.dtype}"
        assert torch.isfinite(r).all(), f"eager output {i} is not finite"
        assert torch.isfinite(o).all(), f"compiled output {i} is not finite"
        assert r.abs().max() > 0, f"eager output {i} is all zeros: a vacuous comparison"
        tol = 1e-5 if (dtype or r.dtype) == torch.float32 else 1e-2
        scale = max(1.0, r.abs().max().item())
        torch.testing.assert_close(o, r, rtol=tol, atol=tol * scale, msg=lambda m: f"output {i}: {m}")


def compile_and_run(fn, *inputs, options=None, **compile_kwargs):
    """(compiled output, eager output, reports) under no_grad (inference)."""
    reports = []
    opts = {"report": reports.append, **(options or {})}
    with torch.no_grad():
        compiled = torch.compile(fn, backend="mla", options=opts, **compile_kwargs)
        out = compiled(*inputs)
        ref = fn(*inputs)
    return out, ref, reports, compiled


def only_report(reports):
    assert len(reports) == 1, f"expected one graph (no graph break, no recompile), got {len(reports)}"
    return reports[0]


def near_miss_text(report) -> str:
    return "; ".join(f"{n.pattern} at {n.node}: {n.reason}" for n in report.near_misses)


def rope_matches(report):
    return [m for m in report.matches if m.pattern != "rope.one_launch"]


# ------------------------------------------------------------ every shape

@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_shape_fused_and_equal(shape, size, dtype):
    model = shape.build(size, dtype)
    inputs = model.example_inputs(seed=11)
    out, ref, reports, compiled = compile_and_run(model, *inputs)
    assert_matches_eager(out, ref, dtype)
    # the same compiled code on fresh inputs of the same shapes
    fresh = model.example_inputs(seed=12)
    with torch.no_grad():
        assert_matches_eager(compiled(*fresh), model(*fresh), dtype)
    report = only_report(reports)
    assert report.counts() == shape.counts, report.format()
    assert report.near_misses == [], near_miss_text(report)
    assert report.final_graph.count("mla.rope.default(") == 1, report.final_graph
    for m in rope_matches(report):
        assert m.params["form"] == shape.form
        assert m.params["rotary_dim"] == size.rope


EXPECTED_ROPE_SHAPES = {
    # q_pe, k_pe: what the fused op rotates, as the graph holds them
    "neox_slice": lambda s: [(s.B, s.H, s.S, s.rope), (s.B, 1, s.S, s.rope)],
    "neox_chunk": lambda s: [(s.B, s.H, s.S, s.rope), (s.B, 1, s.S, s.rope)],
    "even_odd": lambda s: [(s.B, s.S, s.H, s.rope), (s.B, s.S, 1, s.rope)],
    "deinterleave": lambda s: [(s.B, s.H, s.S, s.rope), (s.B, 1, s.S, s.rope)],
    "complex": lambda s: [(s.B, s.S, s.H, s.rope), (s.B, s.S, 1, s.rope)],
    "complex_qk": lambda s: [(s.B, s.S, s.H, s.rope), (s.B, s.S, 1, s.rope)],
    "mla_bshd": lambda s: [(s.B, s.S, s.H, s.rope), (s.B, s.S, 1, s.rope)],
    "token_thd": lambda s: [(s.B * s.S, s.H, s.rope), (s.B * s.S, 1, s.rope)],
    "partial": lambda s: [(s.B, s.H, s.S, s.rope), (s.B, 1, s.S, s.rope)],
}
COS_WIDTH_HALF = {"even_odd", "complex", "complex_qk"}


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_report_params(shape):
    """What each match says it bound: q_pe with H heads, k_pe with one (shared) head."""
    size = MID
    model = shape.build(size, torch.float32)
    _, _, reports, _ = compile_and_run(model, *model.example_inputs(seed=21))
    report = only_report(reports)
    ropes = rope_matches(report)
    want_shapes = EXPECTED_ROPE_SHAPES[shape.name](size)
    assert sorted(tuple(m.params["shape"]) for m in ropes) == sorted(want_shapes), report.format()
    for m in ropes:
        is_q = tuple(m.params["shape"]) == want_shapes[0]
        assert m.params["form"] == shape.form
        assert m.params["style"] == shape.style
        assert m.params["rotary_dim"] == size.rope
        assert m.params["dtype"] == "float32"
        assert m.params["cos_width"] == (size.rope // 2 if shape.name in COS_WIDTH_HALF else size.rope)
        assert m.params["heads"] == (size.H if is_q else 1), (
            f"{'q_pe' if is_q else 'k_pe'} {m.params['shape']}: heads={m.params['heads']}")
    launches = [m for m in report.matches if m.pattern == "rope.one_launch"]
    assert len(launches) == 1, report.format()
    assert launches[0].params["tensors"] == 2
    assert sorted(map(tuple, launches[0].params["shapes"])) == sorted(want_shapes)


# ------------------------------------------------------------ partial rotary (seed 001)

@pytest.mark.parametrize("rot", [8, 16])
def test_partial_rotary_dim_from_graph(rot):
    size = Size(B=2, S=6, H=2, rope=rot)
    model = PartialRotary(size, torch.float32)
    assert model.head_dim == NOPE + rot
    out, ref, reports, _ = compile_and_run(model, *model.example_inputs(seed=31))
    assert_matches_eager(out, ref)
    report = only_report(reports)
    assert report.counts() == {"rope.neox": 2, "rope.one_launch": 1}, report.format()
    assert report.near_misses == []
    for m in rope_matches(report):
        assert m.params["rotary_dim"] == rot
        assert m.params["shape"][-1] == rot != model.head_dim
    # the op rotates only the rot-wide slices; the pass-through part is cat'ed back
    call = next(l for l in report.final_graph.splitlines() if "mla.rope.default(" in l)
    result_types = re.findall(r"f32\[([^\]]*)\]", call.split(" = ")[0])
    assert [int(t.split(", ")[-1]) for t in result_types] == [rot, rot], call


# ------------------------------------------------------------ look-alikes left alone

def rope_of_other_tensor(q, k, cos, sin):
    return q * cos + rotate_half(k) * sin


def rope_not_a_half(x, cos, sin):
    return x * cos + torch.cat((-x[..., 3:], x[..., :3]), dim=-1) * sin


def rope_promoting(x, cos, sin):
    return x * cos + rotate_half(x) * sin


def rope_alpha(x, cos, sin):
    return torch.add(x * cos, rotate_half(x) * sin, alpha=2)


def _neg_inputs(name):
    g = torch.Generator().manual_seed(41)
    x = torch.randn(2, 4, 8, 16, generator=g)
    cos, sin = torch.randn(1, 1, 8, 16, generator=g), torch.randn(1, 1, 8, 16, generator=g)
    if name == "other_tensor":
        return x, torch.randn(2, 4, 8, 16, generator=g), cos, sin
    if name == "promotion":
        return x.to(torch.bfloat16), cos, sin          # cos/sin fp32, x bf16: result fp32
    return x, cos, sin


NEGATIVES = {
    # name: (fn, substring the near miss reason must contain)
    "other_tensor": (rope_of_other_tensor, "different tensors"),
    "not_a_half": (rope_not_a_half, "not a half"),
    "promotion": (rope_promoting, "type promotion"),
    "alpha": (rope_alpha, "alpha"),
}


@pytest.mark.parametrize("name", NEGATIVES)
def test_lookalike_left_alone_with_reason(name):
    fn, cause = NEGATIVES[name]
    out, ref, reports, _ = compile_and_run(fn, *_neg_inputs(name))
    assert_matches_eager(out, ref)
    report = only_report(reports)
    assert report.counts() == {}
    assert "mla.rope" not in report.final_graph
    assert len(report.near_misses) == 1, near_miss_text(report)
    miss = report.near_misses[0]
    assert miss.pattern == "rope.neox"
    assert cause in miss.reason, f"near-miss reason {miss.reason!r} does not mention {cause!r}"


# ------------------------------------------------------------ options

def test_option_rope_off():
    model = TokenMLA(MID, torch.float32)
    inputs = model.example_inputs(seed=51)
    reports = []
    with torch.no_grad():
        compiled = torch.compile(model, backend="mla", options={"rope": False, "report": reports.append})
        out, code = run_and_get_code(compiled, *inputs)
        ref = model(*inputs)
    assert_matches_eager(out, ref)
    report = only_report(reports)
    assert report.counts() == {}
    assert report.near_misses == []
    assert "mla.rope" not in report.final_graph
    assert code and not any("mla.rope" in c for c in code)


def test_option_rope_on_runs_the_op():
    """Control for the test above: the generated code calls the op."""
    model = TokenMLA(MID, torch.float32)
    inputs = model.example_inputs(seed=52)
    with torch.no_grad():
        compiled = torch.compile(model, backend="mla", options={"report": lambda r: None})
        out, code = run_and_get_code(compiled, *inputs)
        assert_matches_eager(out, model(*inputs))
    assert sum(c.count("torch.ops.mla.rope.default(") for c in code) == 1


def test_option_kernel_reference():
    model = DeepseekV2Attention(MID, torch.float32)
    out, ref, reports, _ = compile_and_run(model, *model.example_inputs(seed=53), options={"kernel": "reference"})
    assert_matches_eager(out, ref)
    report = only_report(reports)
    assert report.counts() == {"rope.neox": 2, "rope.one_launch": 1}
    calls = [l for l in report.final_graph.splitlines() if "mla.rope.default(" in l]
    assert len(calls) == 1 and calls[0].endswith(", 'reference')"), report.final_graph


# ------------------------------------------------------------ modes

@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune-no-cudagraphs"])
def test_mode(mode, caplog):
    """mode= with no options: the report is only logged (mla_compile logger)."""
    caplog.set_level(logging.INFO, logger="mla_compile")
    model = TokenMLA(MID, torch.float32)
    inputs = model.example_inputs(seed=61)
    # a cached graph would skip the passes and so the log
    with torch.no_grad(), torch._inductor.config.patch(force_disable_caches=True):
        compiled = torch.compile(model, backend="mla", mode=mode)
        out = compiled(*inputs)
        out2 = compiled(*inputs)  # a second run (cudagraph trees record on CUDA only)
        ref = model(*inputs)
    assert_matches_eager(out, ref)
    assert_matches_eager(out2, ref)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "mla_compile")
    assert logged.count("matched rope.neox") == 2, logged
    assert logged.count("matched rope.one_launch") == 1, logged


# ------------------------------------------------------------ dynamic shapes

DYNAMIC_SHAPES = ["neox_slice", "deinterleave", "complex", "token_thd"]


@pytest.mark.parametrize("name", DYNAMIC_SHAPES)
def test_dynamic_seq_len(name):
    shape = BY_NAME[name]
    model = shape.build(MID, torch.float32)
    reports = []
    with torch.no_grad():
        compiled = torch.compile(model, backend="mla", dynamic=True, options={"report": reports.append})
        for i, S in enumerate((5, 7)):
            inputs = model.example_inputs(seed=70 + i, S=S)
            assert_matches_eager(compiled(*inputs), model(*inputs))
    report = only_report(reports)  # one dynamic graph serves both lengths
    assert report.counts() == shape.counts, report.format()
    assert report.near_misses == []
    assert report.final_graph.count("mla.rope.default(") == 1


def test_automatic_dynamic_second_seq_len():
    """Default dynamic=None: the second sequence length recompiles with a dynamic
    seq dim (automatic dynamic), which must still fuse and equal eager."""
    model = MlaNeoxBSHD(MID, torch.float32)
    reports = []
    with torch.no_grad():
        compiled = torch.compile(model, backend="mla", options={"report": reports.append})
        for i, S in enumerate((5, 7)):
            inputs = model.example_inputs(seed=80 + i, S=S)
            assert_matches_eager(compiled(*inputs), model(*inputs))
    assert len(reports) == 2
    for report in reports:
        assert report.counts() == {"rope.neox": 2, "rope.one_launch": 1}, report.format()


def test_pairs_near_miss_names_the_real_cause():
    """With sin written first in a product, the reason must still be the wrong hi
    term, not an operand that failed as a pair element (found by the fuzzer)."""
    def wrong_hi(x, cos, sin):
        a, b = x[..., :4], x[..., 4:]
        return torch.cat((a * cos - sin * b, a * cos + b * sin), dim=-1)

    args = (torch.randn(2, 3, 2, 8), torch.randn(3, 1, 4), torch.randn(3, 1, 4))
    reports = []
    out = torch.compile(wrong_hi, backend="mla", options={"report": reports.append})(*args)
    torch.testing.assert_close(out, wrong_hi(*args))
    assert reports[0].counts() == {}
    assert [n.reason for n in reports[0].near_misses] == [
        "hi is not b*cos + a*sin with the lo half's a, b, cos, sin"]
