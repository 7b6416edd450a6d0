"""The Gluon prefill program (custom_ops/gluon_prefill.py: warp-specialised, TMA, sm_90)
against `mla_prefill_reference` and the Triton kernel, and its dispatch.

Gluon has no interpreter: the GPU tests run only on an H100 / H200 with
TRITON_INTERPRET=0 (skipped on CPU CI). The dispatch tests run everywhere: CPU and
interpreter calls never pick the Gluon program.
"""
import os
import zlib

import pytest
import torch

from mla_compile.custom_ops import gluon_prefill
from mla_compile.custom_ops.triton_prefill import mla_prefill_attention, mla_prefill_reference

DN, DR, DV, LATENT = 128, 64, 128, 512
SCALE = 0.1352  # DeepSeek-V3's yarn-scaled softmax scale: not Dqk ** -0.5
ON_HOPPER = (os.environ.get("TRITON_INTERPRET") != "1" and torch.cuda.is_available()
             and torch.cuda.get_device_capability() == (9, 0) and gluon_prefill.gluon is not None)
hopper = pytest.mark.skipif(not ON_HOPPER, reason="Gluon program: needs an sm_90 GPU, TRITON_INTERPRET=0")


def make_inputs(B, H, Sq, Sk, dtype, device, seed):
    """The launcher's realistic strided views (benchmarks/bench_prefill.py): q_nope / q_pe
    slices of a [B, S, H, 192] projection, k_nope / v of a [B, S, H, 256] one, k_pe a slice
    of a [B, S, 576] latent projection, transposed to [B, H, S, D]."""
    g = torch.Generator(device=device).manual_seed(seed)
    q_proj = torch.randn(B, Sq, H, DN + DR, device=device, generator=g).to(dtype)
    kv_b = torch.randn(B, Sk, H, DN + DV, device=device, generator=g).to(dtype)
    kv_a = torch.randn(B, Sk, LATENT + DR, device=device, generator=g).to(dtype)
    return (q_proj[..., :DN].transpose(1, 2), q_proj[..., DN:].transpose(1, 2),
            kv_b[..., :DN].transpose(1, 2), kv_a[..., LATENT:], kv_b[..., DN:].transpose(1, 2))


def reference(ins, causal, scale=SCALE, heads_per_chunk=8):
    """mla_prefill_reference in head chunks (its fp32 S x S scores stay small)."""
    qn, qr, kn, kr, v = ins
    return torch.cat([mla_prefill_reference(qn[:, h:h + heads_per_chunk], qr[:, h:h + heads_per_chunk],
                                            kn[:, h:h + heads_per_chunk], kr, v[:, h:h + heads_per_chunk],
                                            scale, causal)
                      for h in range(0, qn.shape[1], heads_per_chunk)], dim=1)


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


# ---------------------------------------------------------------- dispatch (any machine)

def test_cpu_and_interpreter_never_pick_gluon(monkeypatch):
    ins = make_inputs(1, 2, 128, 128, torch.bfloat16, "cpu", seed=0)
    assert not gluon_prefill.applies(*ins, interpreting=False)
    assert not gluon_prefill.applies(*ins, interpreting=True)
    with pytest.raises(ValueError, match="Gluon program does not apply"):
        mla_prefill_attention(*ins, SCALE, True, gluon=True)

    def boom(*a, **k):
        raise AssertionError("the Gluon program was launched")

    monkeypatch.setattr(gluon_prefill, "gluon_prefill_attention", boom)
    monkeypatch.setattr(gluon_prefill, "DEFAULT_ON", True)  # even where it were the default
    if os.environ.get("TRITON_INTERPRET") == "1":  # the Triton kernel interpreted: small config
        small = make_inputs(1, 1, 40, 40, torch.float32, "cpu", seed=1)
        got = mla_prefill_attention(*small, SCALE, True)
        assert rel_err(got, mla_prefill_reference(*small, SCALE, True)) < 1e-4


def test_fits_what_the_program_computes():
    ins = make_inputs(1, 2, 256, 256, torch.bfloat16, "cpu", seed=2)
    assert gluon_prefill.fits(*ins)
    assert gluon_prefill.fits(*make_inputs(1, 2, 128, 300, torch.float16, "cpu", seed=3))  # Sk > Sq
    assert not gluon_prefill.fits(*ins, mask=torch.zeros(1, 1, 256, 256))
    assert not gluon_prefill.fits(*ins, sinks=torch.zeros(2))
    assert not gluon_prefill.fits(*make_inputs(1, 2, 256, 256, torch.float32, "cpu", seed=4))
    assert not gluon_prefill.fits(*make_inputs(1, 2, 100, 100, torch.bfloat16, "cpu", seed=5))  # Sq < 128
    qn, qr, kn, kr, v = ins
    assert not gluon_prefill.fits(qn, qr, kn[:, :, :200], kr[:, :200], v[:, :, :200])  # Sk < Sq
    odd = torch.randn(1, 2, 256, DN + 1).to(torch.bfloat16)[..., 1:]  # 2-byte offset, 258-byte rows
    assert not gluon_prefill.fits(qn, qr, odd, kr, v)
    nope = torch.zeros(1, 2, 256, 0, dtype=torch.bfloat16)
    assert not gluon_prefill.fits(qn, nope, kn, kr[..., :0], v)  # Dr = 0: the Triton kernel


@hopper
def test_applies_on_hopper():
    ins = make_inputs(1, 2, 256, 256, torch.bfloat16, "cuda", seed=4)
    assert gluon_prefill.applies(*ins, interpreting=False)
    assert not gluon_prefill.applies(*ins, interpreting=True)
    assert not gluon_prefill.applies(*ins, interpreting=False, mask=torch.zeros(1, 1, 256, 256, device="cuda"))


@hopper
def test_default_dispatch(monkeypatch):
    """With DEFAULT_ON the launcher picks the program by itself, unless a Triton config is
    given; with it off, only gluon=True does."""
    calls = []
    real = gluon_prefill.gluon_prefill_attention
    monkeypatch.setattr(gluon_prefill, "gluon_prefill_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    ins = make_inputs(1, 2, 256, 256, torch.bfloat16, "cuda", seed=10)
    mla_prefill_attention(*ins, SCALE, True)
    assert len(calls) == int(gluon_prefill.DEFAULT_ON)
    monkeypatch.setattr(gluon_prefill, "DEFAULT_ON", True)
    calls.clear()
    mla_prefill_attention(*ins, SCALE, True)
    mla_prefill_attention(*ins, SCALE, True, block_m=64)  # a Triton config: the Triton kernel
    mla_prefill_attention(*ins, SCALE, True, gluon=False)
    assert len(calls) == 1


# ---------------------------------------------------------------- the program (sm_90)

@hopper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("S", [128, 333, 1000, 4096])  # 333, 1000: ragged last query and key tiles
@pytest.mark.parametrize("B, H", [(1, 1), (2, 3), (1, 128)])
def test_matches_reference(B, H, S, causal, dtype, request):
    seed = zlib.crc32(request.node.nodeid.encode())
    ins = make_inputs(B, H, S, S, dtype, "cuda", seed)
    out = torch.full((B, H, S, DV), float("nan"), device="cuda", dtype=dtype)  # poisoned
    mla_prefill_attention(*ins, SCALE, causal, out=out, gluon=True)
    assert torch.isfinite(out).all(), "an element not written (or NaN)"
    ref = reference(ins, causal)
    assert rel_err(out, ref) < 1e-2
    triton_out = mla_prefill_attention(*ins, SCALE, causal, gluon=False)
    assert rel_err(out, triton_out) < 1e-2


@hopper
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("block_n, stages, pingpong", [(128, 2, False), (64, 3, True), (64, 2, False)])
def test_variants(block_n, stages, pingpong, causal):
    """The tile / ring / schedule variants the benchmark sweeps (the default is (128, 2, True))."""
    ins = make_inputs(2, 3, 1000, 1000, torch.bfloat16, "cuda", seed=block_n + stages + pingpong)
    out = torch.full((2, 3, 1000, DV), float("nan"), device="cuda", dtype=torch.bfloat16)
    gluon_prefill.gluon_prefill_attention(*ins, SCALE, causal, out, block_n=block_n, stages=stages,
                                          pingpong=pingpong)
    assert torch.isfinite(out).all()
    assert rel_err(out, reference(ins, causal)) < 1e-2


@hopper
@pytest.mark.parametrize("causal", [True, False])
def test_longer_keys_and_transposed_out(causal):
    """Sk > Sq (top-left causal: keys past row i stay hidden), into a [B, Sq, H, Dv] buffer."""
    B, H, Sq, Sk = 2, 3, 300, 700
    qn, qr, _, _, _ = make_inputs(B, H, Sq, Sq, torch.bfloat16, "cuda", seed=7)
    _, _, kn, kr, v = make_inputs(B, H, Sk, Sk, torch.bfloat16, "cuda", seed=8)
    ins = (qn, qr, kn, kr, v)
    buf = torch.full((B, Sq, H, DV), float("nan"), device="cuda", dtype=torch.bfloat16)
    mla_prefill_attention(*ins, SCALE, causal, out=buf.transpose(1, 2), gluon=True)
    assert rel_err(buf.transpose(1, 2), reference(ins, causal)) < 1e-2


@hopper
def test_negative_scale():
    """POS_SCALE=False: the row max comes from the min of q k^T."""
    ins = make_inputs(1, 2, 512, 512, torch.bfloat16, "cuda", seed=9)
    got = mla_prefill_attention(*ins, -SCALE, True, gluon=True)
    assert rel_err(got, reference(ins, True, scale=-SCALE)) < 1e-2


def test_compiled_graph_launch_calls_the_gluon_op(monkeypatch):
    """A traced launch (a compiled graph's) where `traced_route` holds calls
    mla.prefill_gluon, one op call and no kernel launch (Inductor cannot launch Gluon);
    the trace run on real tensors gives the launcher's numbers (here the op runs the
    Triton kernel or the reference: no sm_90 on CPU). Where it does not hold, the
    Triton kernel is launched."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from mla_compile.custom_ops.launch import is_traced

    monkeypatch.setattr(gluon_prefill, "traced_route", lambda q, *a, **k: is_traced(q))
    g = torch.Generator().manual_seed(7)
    ins = [torch.randn(1, 2, 20, d, generator=g) for d in (8, 4)] + [
        torch.randn(1, 2, 20, 8, generator=g), torch.randn(1, 20, 4, generator=g), torch.randn(1, 2, 20, 8, generator=g)]

    def run(*ins):
        return mla_prefill_attention(*ins, 0.3, True)

    gm = make_fx(torch.func.functionalize(run, remove="mutations"), tracing_mode="fake")(*ins)
    targets = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count("mla.prefill_gluon.default") == 1 and not any("triton_kernel" in t for t in targets), targets
    if os.environ.get("TRITON_INTERPRET") == "1":
        torch.testing.assert_close(gm(*ins), mla_prefill_reference(*ins, 0.3, True), rtol=1e-4, atol=1e-4)
        torch.library.opcheck(torch.ops.mla.prefill_gluon, (*ins, 0.3, True))


def test_traced_route_needs_rows_or_cuda_graphs():
    """No sm_90 here: never. (On the GPU: test_inductor_launch's prefill test.)"""
    ins = make_inputs(1, 2, 256, 256, torch.bfloat16, "cpu", seed=8)
    assert not gluon_prefill.traced_route(*ins, interpreting=False)


def test_traced_route_never_holds_for_real_tensors(monkeypatch):
    """The op's own eager call (real tensors) must launch, not call the op again: session 9's
    GPU run recursed here (a 1 GiB output per level at S=32768: out of memory)."""
    monkeypatch.setattr(gluon_prefill, "TRACED_ROUTE", True)
    monkeypatch.setattr(gluon_prefill, "DEFAULT_ON", True)
    monkeypatch.setattr(gluon_prefill, "_sm90", lambda t: True)
    monkeypatch.setattr(gluon_prefill, "TRACED_FROM_ROWS", 1)
    ins = make_inputs(1, 2, 256, 256, torch.bfloat16, "cpu", seed=8)
    assert gluon_prefill.fits(*ins)
    assert not gluon_prefill.traced_route(*ins, interpreting=False)
