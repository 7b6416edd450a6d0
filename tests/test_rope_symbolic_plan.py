"""The RoPE launch plan on symbolic sizes (a dynamic-shape graph whose RoPE Inductor
launches, passes/inline_launches.py): planning adds no guard, and the plan, whose
grid and integer arguments are then expressions, serves sizes other than the example's.

The plan is made on fake tensors with symbolic sizes, its launch recorded instead of
run; each expression is then evaluated at new sizes and the recorded launch replayed
on real tensors of those sizes (the interpreter on CPU), against the reference.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext  # noqa: E402

pytest.importorskip("triton")

from kernel_device import kernel_test_device  # noqa: E402
from mla_compile.custom_ops import triton_rope  # noqa: E402
from mla_compile.custom_ops.reference import rope_reference  # noqa: E402

DEVICE = kernel_test_device(triton_rope._rope_kernel)
pytestmark = pytest.mark.skipif(DEVICE is None, reason="no interpreted Triton and no CUDA device")


def _fake(mode, t, static_last=True):
    """A fake of t whose every dim is symbolic but the last (the rotary dim, a constexpr)."""
    dyn = [DimDynamic.DUCK] * t.dim()
    if static_last:
        dyn[-1] = DimDynamic.STATIC
    return mode.from_tensor(t, symbolic_context=StatelessSymbolicContext(dynamic_sizes=dyn))


def _plan_symbolically(monkeypatch, q, k, cos, sin, ii, io):
    env = ShapeEnv()
    mode = FakeTensorMode(shape_env=env)
    fq, fk, fcos, fsin = (_fake(mode, t) for t in (q, k, cos, sin))
    calls = []
    monkeypatch.setattr(triton_rope, "launch", lambda kernel, grid, *a, **kw: calls.append((grid, a, kw)))
    with mode:
        outs = [torch.empty_like(x) for x in (fq, fk)]
        triton_rope.rope_triton([fq, fk], fcos, fsin, ii, io, outs)
    assert len(calls) == 1
    assert not env.guards, env.guards  # the plan added no guard: the graph stays dynamic
    fakes = {id(t): i for i, t in enumerate((fcos, fsin, fq, outs[0], fk, outs[1]))}
    symbols = [s.node.expr for s in fq.shape[:3]]  # B, H, S (k and cos share them: duck sizing)
    return calls[0], fakes, symbols


def _evaluate(v, sizes: dict):
    """An int, or a SymInt evaluated at `sizes` ({symbol: int})."""
    return int(v.node.expr.subs(sizes)) if isinstance(v, torch.SymInt) else v


@pytest.mark.parametrize("ii, io", [(False, False), (True, True), (True, False)])
def test_symbolic_plan_serves_other_sizes(monkeypatch, ii, io):
    gen = torch.Generator().manual_seed(7)
    B, H, S, d = 2, 3, 5, 16  # distinct example sizes: one symbol each
    q = torch.randn(B, H, S, d, generator=gen)
    k = torch.randn(B, 1, S, d, generator=gen)
    cos, sin = torch.randn(1, 1, S, d, generator=gen), torch.randn(1, 1, S, d, generator=gen)
    (grid, args, kwargs), fakes, symbols = _plan_symbolically(monkeypatch, q, k, cos, sin, ii, io)
    assert isinstance(grid[0], torch.SymInt) and len(symbols) == 3, (grid, symbols)
    assert kwargs["INT64"], "int32 offsets are not proven for every size: int64"
    for B2, H2, S2 in [(3, 4, 9), (1, 2, 33)]:  # other sizes; B 1 too
        sizes = dict(zip(symbols, (B2, H2, S2)))
        gen2 = torch.Generator().manual_seed(B2 * 100 + S2)
        real = [torch.randn(1, 1, S2, d, generator=gen2), torch.randn(1, 1, S2, d, generator=gen2),
                torch.randn(B2, H2, S2, d, generator=gen2), None, torch.randn(B2, 1, S2, d, generator=gen2), None]
        real[3], real[5] = torch.full_like(real[2], float("nan")), torch.full_like(real[4], float("nan"))
        real = [t.to(DEVICE) for t in real]
        replay = [real[fakes[id(a)]] if isinstance(a, torch.Tensor) else _evaluate(a, sizes) for a in args]
        triton_rope._rope_kernel[tuple(_evaluate(g, sizes) for g in grid)](*replay, **kwargs)
        for x, out in ((real[2], real[3]), (real[4], real[5])):
            torch.testing.assert_close(out, rope_reference(x, real[0], real[1], ii, io), rtol=1e-5, atol=1e-5)


def test_symbolic_rotary_dim_is_refused(monkeypatch):
    """The rotary dim is a constexpr of the kernel: a symbolic one is refused (the op
    call then stays, with the reason in the report), never guarded on."""
    env = ShapeEnv()
    mode = FakeTensorMode(shape_env=env)
    q = _fake(mode, torch.randn(2, 3, 5, 16), static_last=False)
    cos = _fake(mode, torch.randn(5, 16), static_last=False)
    monkeypatch.setattr(triton_rope, "launch", lambda *a, **kw: None)
    with mode, pytest.raises(NotImplementedError, match="rotary dim must be static"):
        triton_rope.rope_triton([q], cos, cos, False, False, [torch.empty_like(q)])
    assert not env.guards


@pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                    reason="needs a CUDA device and compiled Triton: TRITON_INTERPRET=0")
def test_dynamic_rope_launched_by_inductor():
    """End to end on a GPU: sequence length dynamic, the RoPE launch traced with
    symbolic sizes and emitted by Inductor (no mla op call, no fallback), one graph
    for every length, numbers equal eager."""
    import sys

    from torch._inductor.utils import run_and_get_code

    sys.path.insert(0, os.path.dirname(__file__))
    from rope_models import MlaNeoxBSHD, Size

    model = MlaNeoxBSHD(Size(B=2, S=7, H=2, rope=16), torch.bfloat16).cuda()
    torch._dynamo.reset()
    reports = []
    compiled = torch.compile(model, backend="mla", dynamic=True, options={"report": reports.append})
    for i, S in enumerate((7, 5, 19)):
        (x,) = (t.cuda() for t in model.example_inputs(seed=90 + i, S=S))
        with torch.no_grad():
            outs, code = run_and_get_code(compiled, x) if i == 0 else (compiled(x), None)
            refs = model(x)
        for o, r in zip(outs, refs):
            torch.testing.assert_close(o.float(), r.float(), rtol=2e-2, atol=2e-2)
        if code is not None:
            text = "\n".join(code)
            assert "_rope_kernel" in text and "torch.ops.mla" not in text, text
    assert len(reports) == 1, [r.format() for r in reports]  # one dynamic graph
    counts = reports[0].counts()
    assert counts.get("rope.one_launch") == 1 and counts.get("launch.inductor") == 1, reports[0].format()
    assert "launch.op" not in counts, reports[0].format()
