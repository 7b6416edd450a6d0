"""Inside compiled graphs, Inductor launches our Triton kernels itself
(passes/inline_launches.py): each fused op is replaced by its computation traced with
the launches wrapped, so the generated code calls the kernels like Inductor's own,
with no `torch.ops.mla` dispatch and no Python checks per call.

On CUDA (the GPU machine; CI has none) the generated code is read: our kernels are
launched there and no mla op is called, numbers equal eager, and `launch="op"` keeps
the op calls. On CPU the same splicing is exercised with the reference computation
(pure torch ops) standing in for the kernels, so that argument mapping, list outputs
and symbolic sizes are checked in CI too.
"""
import os
import sys

import pytest
import torch
from torch._inductor.utils import run_and_get_code

sys.path.insert(0, os.path.dirname(__file__))
from attention_models import SHAPES, AttnSize  # noqa: E402
from latent_models import DIMS, AbsorbedMLA, freqs_cis  # noqa: E402

cuda_only = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="needs a CUDA device and compiled (not interpreted) Triton: TRITON_INTERPRET=0")

HF_V3 = next(s for s in SHAPES if s.name == "hf_v3")
SDPA_CAUSAL = next(s for s in SHAPES if s.name == "sdpa_causal")


def _compile_and_code(model, inputs, **options):
    torch._dynamo.reset()
    reports = []
    compiled = torch.compile(model, backend="mla", options={"report": reports.append, **options})
    with torch.no_grad():
        out, code = run_and_get_code(compiled, *inputs)
        ref = model(*inputs)
    return out, ref, "\n".join(code), reports


def _counts(reports) -> dict:
    counts: dict = {}
    for r in reports:
        for k, v in r.counts().items():
            counts[k] = counts.get(k, 0) + v
    return counts


def _close(out, ref, tol):
    scale = max(1.0, ref.float().abs().max().item())
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol * scale)


@cuda_only
@pytest.mark.parametrize("shape", [HF_V3, SDPA_CAUSAL], ids=lambda s: s.name)
def test_prefill_kernels_launched_by_inductor(shape):
    size = AttnSize(B=2, S=29, H=4, nope=128, rope=64, v=128, latent=512)
    model = shape.build(size, torch.bfloat16).cuda()
    inputs = tuple(t.cuda() if isinstance(t, torch.Tensor) else t for t in model.example_inputs(seed=3))
    out, ref, code, reports = _compile_and_code(model, inputs)
    counts = _counts(reports)
    assert counts.get("attention.mla") == 1 and counts.get("launch.inductor") == 2, counts  # attention, rope
    assert "launch.op" not in counts, [r.format() for r in reports]
    assert "torch.ops.mla" not in code, code
    assert "_mla_prefill_fwd" in code and "_rope_kernel" in code, code
    _close(out, ref, 2e-2)

    out_op, _, code_op, reports_op = _compile_and_code(model, inputs, launch="op")
    assert "torch.ops.mla.prefill_attention" in code_op and "launch.inductor" not in _counts(reports_op)
    _close(out_op, ref, 2e-2)



@cuda_only
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="the Gluon prefill program needs sm_90")
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_long_prefill_calls_the_gluon_op(monkeypatch, mode):
    """With the route on (gluon_prefill.TRACED_ROUTE), a compiled graph's
    mla.prefill_attention calls mla.prefill_gluon (Inductor cannot launch a Gluon kernel)
    instead of the Triton kernel from TRACED_FROM_ROWS query rows, and under CUDA graphs
    from the program's 128: equal to the eager op (replayed, under CUDA graphs)."""
    from mla_compile.custom_ops import gluon_prefill

    monkeypatch.setattr(gluon_prefill, "TRACED_ROUTE", True)
    torch._dynamo.reset()
    S = gluon_prefill.TRACED_FROM_ROWS if mode == "default" else 256
    B, H, Dn, Dr, Dv, R = 1, 4, 128, 64, 128, 512
    g = torch.Generator(device="cuda").manual_seed(5)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, device="cuda", generator=g) * scale).to(torch.bfloat16)

    args = (rand(B, H, S, Dn), rand(B, H, S, Dr), rand(B, S, R), rand(B, S, Dr), rand(H, Dn, R, scale=R ** -0.5),
            rand(H, Dv, R, scale=R ** -0.5))

    def attend(*a):
        return torch.ops.mla.prefill_attention(*a, 0.1352, True, "decompressed")

    compiled = torch.compile(attend, backend="mla", options={"mode": mode})
    with torch.no_grad():
        first, code = run_and_get_code(compiled, *args)
        first = first.clone()
        for _ in range(2):  # CUDA graphs: recorded, then replayed
            out = compiled(*args).clone()
        ref = attend(*args)
    code = "\n".join(code)
    assert "torch.ops.mla.prefill_gluon" in code and "_mla_prefill_fwd" not in code, code
    _close(first, ref, 2e-2)
    _close(out, ref, 2e-2)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_decode_kernels_launched_by_inductor(dtype):
    """DeepSeek-absorb decode: mla.latent_attention's split-KV and combine kernels."""
    torch.manual_seed(0)
    model = AbsorbedMLA(**DIMS, dtype=dtype).cuda().eval()
    freqs = freqs_cis(DIMS["rope"], 64).cuda()
    x = torch.randn(2, 1, DIMS["dim"], device="cuda", dtype=dtype)
    with torch.no_grad():
        model.kv_cache.normal_()
        model.pe_cache.normal_()
    inputs = (x, 20, freqs[20:21], None)
    out, ref, code, reports = _compile_and_code(model, inputs)
    counts = _counts(reports)
    assert counts.get("attention.mla") == 1 and counts.get("launch.inductor", 0) >= 1, counts
    assert "torch.ops.mla" not in code and "_decode_split" in code and "_combine" in code, code
    _close(out, ref, 1e-3 if dtype == torch.float32 else 3e-2)


@cuda_only
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="the Gluon decode program is for sm_90")
def test_wide_decode_at_128_heads_calls_the_gluon_op_under_cuda_graphs():
    """DeepSeek's attention dims at 128 heads, batch 4 (512 query rows: the wide kernel's
    64-row program, Gluon on sm_90). Default mode: Inductor launches the Triton program
    (an op call would cost more host time than the Gluon program saves). Under CUDA
    graphs the graph calls mla.wide_decode_gluon (Inductor cannot launch a Gluon
    kernel); with launch="op" the fused op runs it. All equal eager."""
    torch.manual_seed(0)
    model = AbsorbedMLA(dim=256, heads=128, rank=512, nope=128, rope=64, v=128, max_batch=4, max_len=300,
                        dtype=torch.bfloat16).cuda().eval()
    freqs = freqs_cis(64, 300).cuda()
    x = torch.randn(4, 1, 256, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        model.kv_cache.normal_()
        model.pe_cache.normal_()
    inputs = (x, 250, freqs[250:251], None)
    out, ref, code, reports = _compile_and_code(model, inputs)
    assert _counts(reports).get("attention.mla") == 1, [r.format() for r in reports]
    assert "torch.ops.mla" not in code and "_wide_split" in code, code
    _close(out, ref, 3e-2)
    out_g, _, code_g, _ = _compile_and_code(model, inputs, mode="reduce-overhead")
    assert "torch.ops.mla.wide_decode_gluon" in code_g and "_wide_split" not in code_g, code_g
    assert "torch.ops.mla.latent_attention" not in code_g, code_g
    _close(out_g, ref, 3e-2)
    out_op, _, code_op, _ = _compile_and_code(model, inputs, launch="op")
    assert "torch.ops.mla.latent_attention" in code_op
    _close(out_op, ref, 3e-2)


@cuda_only
@pytest.mark.parametrize("variant", ["float_sinks", "bool_sinks"])
def test_sparse_attention_with_sinks_launched_by_inductor(variant):
    """A DSA layer with HY-V4's attention sinks (tests/test_sparse_pass.py): the sparse
    op, sinks passed, opened into kernel launches (a prefill: the dense route under the
    selection mask), equal to eager."""
    from test_sparse_pass import D, TOPK, DsaLayer
    torch.manual_seed(0)
    model = DsaLayer(variant).cuda().eval()
    x = torch.randn(2, 7, D, device="cuda")
    other = torch.zeros(2, 7, TOPK, dtype=torch.int32, device="cuda")
    out, ref, code, reports = _compile_and_code(model, (x, other))
    params = [m.params for r in reports for m in r.matches if m.pattern == "attention.mla"]
    assert [(p["form"], p.get("sinks")) for p in params] == [("sparse", "per head")], params
    assert "launch.op" not in _counts(reports) and "torch.ops.mla" not in code, code
    _close(out, ref, 1e-3)


@cuda_only
def test_dynamic_lengths_keep_one_graph():
    """Sequence length marked dynamic: the launches are traced with symbolic sizes
    (tile and split choices read the example sizes, no guard), one graph serves every
    length, and every length equals eager."""
    size = AttnSize(B=2, S=24, H=4, nope=128, rope=64, v=128, latent=512)
    model = SDPA_CAUSAL.build(size, torch.bfloat16).cuda()
    torch._dynamo.reset()
    frames = []
    reports = []
    compiled = torch.compile(model, backend="mla", dynamic=True, options={"report": reports.append})
    for S in (24, 17, 31):
        inputs = tuple(t.cuda() if isinstance(t, torch.Tensor) else t for t in model.example_inputs(seed=S, S=S))
        with torch.no_grad():
            _close(compiled(*inputs), model(*inputs), 2e-2)
        frames.append(len(reports))
    assert frames[-1] == frames[0], f"recompiled for a new length: reports after each call {frames}"
    assert _counts(reports).get("attention.mla", 0) >= 1, [r.format() for r in reports]


def test_equal_ops_are_traced_once(monkeypatch):
    """Two attentions with equal arguments (a model's layers) share one trace, spliced
    twice; a third whose weight windows are views of ONE storage (same sizes, strides and
    offsets otherwise: the decompression is then one GEMM) is traced apart. The result
    equals eager."""
    import importlib

    from torch._guards import detect_fake_mode
    from torch.fx.experimental.proxy_tensor import make_fx

    from mla_compile.options import Options
    from mla_compile.report import PassRecord

    inline_launches = importlib.import_module("mla_compile.passes.inline_launches")
    monkeypatch.setattr(inline_launches, "inductor_launches", lambda device, kernel: True)
    traces = []
    real_trace = inline_launches._trace
    monkeypatch.setattr(inline_launches, "_trace", lambda *a: traces.append(a) or real_trace(*a))
    gen = torch.Generator().manual_seed(0)
    B, H, S, Dn, Dr, Dv, R = 1, 2, 5, 8, 4, 8, 16

    def attend(q_nope, q_pe, c, kr, w_uk, w_uv):
        return torch.ops.mla.prefill_attention(q_nope, q_pe, c, kr, w_uk, w_uv, 0.2, True, "decompressed",
                                               impl="reference")

    def layers(x1, x2, x3, w1, w2, kv_b):
        a = attend(*x1, *w1)
        b = attend(*x2, *w2)
        c = attend(*x3, kv_b[:, :Dn], kv_b[:, Dn:])  # adjacent windows of one weight
        return a + b + c

    def xs():
        return (torch.randn(B, H, S, Dn, generator=gen), torch.randn(B, H, S, Dr, generator=gen),
                torch.randn(B, S, R, generator=gen), torch.randn(B, S, Dr, generator=gen))

    def ws():  # windows of two weights: the same sizes, strides and offsets as kv_b's two
        return (torch.randn(H, Dn + Dv, R, generator=gen)[:, :Dn], torch.randn(H, Dn + Dv, R, generator=gen)[:, Dn:])

    args = (xs(), xs(), xs(), ws(), ws(), torch.randn(H, Dn + Dv, R, generator=gen))
    gm = make_fx(layers, tracing_mode="fake")(*args)
    record = PassRecord("launch")
    with detect_fake_mode([n.meta["val"] for n in gm.graph.nodes if n.op == "placeholder"]):  # as under AOT
        inline_launches.inline_launches(gm.graph, Options.from_user({"kernel": "reference"}), record)
    gm.recompile()
    assert len(traces) == 2, [str(t[0]) for t in traces]
    assert [m.pattern for m in record.matches] == ["launch.inductor"] * 3, record.matches
    assert not any(str(n.target).startswith("mla.") for n in gm.graph.nodes), gm.graph
    # the second copy's values are its own (Inductor reads aliasing from them): no value
    # of one layer's attention shares storage with the other's
    from mla_compile.compat import same_storage
    spliced = [[n for n in gm.graph.nodes if n.op == "call_function" and any(
        p.name.startswith(x) for p in n.all_input_nodes)] for x in ("x1", "x2")]
    vals = [[n.meta["val"] for n in layer if isinstance(n.meta.get("val"), torch.Tensor)] for layer in spliced]
    assert vals[0] and vals[1], gm.graph
    assert not any(same_storage(a, b) for a in vals[0] for b in vals[1]), gm.graph
    torch.testing.assert_close(gm(*args), layers(*args), rtol=1e-5, atol=1e-5)
    # an argument node whose value is not a tensor (user code may pass a symbolic int)
    # enters the signature by value
    sym = torch.fx.Graph().placeholder("block_size")
    sym.meta["val"] = 64
    assert inline_launches._signature(attend, {"block_size": sym})[2] == (("value", "int", "64"),)


def test_splice_on_cpu_layers_share_their_traces(monkeypatch):
    """The inlining machinery on CPU, on a 2-layer DeepSeek-V3 (transformers, tiny, sdpa
    prefill): with `kernel="reference"` and the device check opened, every fused op (RoPE,
    a list output; attention) is replaced by its traced computation, no mla op is left,
    the 2 RoPEs share one trace and the 2 attentions another, and the logits equal eager's."""
    import importlib

    pytest.importorskip("transformers")
    from transformers_tiny import build

    inline_launches = importlib.import_module("mla_compile.passes.inline_launches")
    monkeypatch.setattr(inline_launches, "inductor_launches", lambda device, kernel: True)
    traces = []
    real_trace = inline_launches._trace
    monkeypatch.setattr(inline_launches, "_trace", lambda *a: traces.append(a[0].__name__) or real_trace(*a))
    model = build("deepseek_v3", "sdpa", num_hidden_layers=2)
    ids = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(0))
    out, ref, code, reports = _compile_and_code(lambda ids: model(ids, use_cache=False).logits, (ids,),
                                                kernel="reference")
    counts = _counts(reports)
    assert counts.get("attention.mla") == 2 and counts.get("launch.inductor") == 4, counts
    assert sorted(traces) == ["compute_prefill_attention", "compute_rope"], traces
    assert "torch.ops.mla" not in code and "mla." not in reports[-1].final_graph, reports[-1].final_graph
    _close(out, ref, 1e-4)


def test_no_launch_pass_in_cpu_reports():
    """On CPU nothing is inlined, and the report does not list an idle launch pass."""
    size = AttnSize(B=1, S=8, H=2, nope=16, rope=8, v=16, latent=32)
    model = HF_V3.build(size, torch.float32)
    _, _, code, reports = _compile_and_code(model, model.example_inputs(seed=2))
    assert [p.name for p in reports[0].passes] == ["rope", "attention"], reports[0].format()
    assert "torch.ops.mla.prefill_attention" in code



@pytest.mark.parametrize("launch", ["inductor", "op"])
def test_op_called_by_user_code_compiles(launch):
    """User code calling a fused op itself (defaults passed by keyword after AOT): the
    op call stays positional, so Inductor's fallback, whose own parameter is named
    `kernel`, takes it; numbers equal the eager op."""
    gen = torch.Generator().manual_seed(0)
    q, qr = torch.randn(1, 2, 1, 32, generator=gen), torch.randn(1, 2, 1, 8, generator=gen)
    c, kr = torch.randn(1, 24, 32, generator=gen), torch.randn(1, 24, 8, generator=gen)

    def fn(q, qr, c, kr):
        return torch.ops.mla.latent_attention(q, qr, c, kr, 0.1, False) * 2

    torch._dynamo.reset()
    out = torch.compile(fn, backend="mla", options={"launch": launch})(q, qr, c, kr)
    _close(out, fn(q, qr, c, kr), 1e-5)
