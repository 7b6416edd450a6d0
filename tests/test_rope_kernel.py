"""The Triton RoPE kernel against `rope_reference`, which defines the semantics.

On CPU the kernel runs under Triton's interpreter: TRITON_INTERPRET=1 must be in the
environment before the kernel module is imported (tests/conftest.py sets it). With
TRITON_INTERPRET=0 and a CUDA device, the same tests run on the GPU.
"""
import os
import zlib

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")

from kernel_device import kernel_test_device  # noqa: E402
from mla_compile.custom_ops import rope as _rope_op  # noqa: E402,F401  (registers torch.ops.mla.rope)
from mla_compile.custom_ops import triton_rope  # noqa: E402
from mla_compile.custom_ops.reference import rope_reference  # noqa: E402
from mla_compile.custom_ops.triton_backend import TritonBackend  # noqa: E402


DEVICE = kernel_test_device(triton_rope._rope_kernel)
pytestmark = pytest.mark.skipif(
    DEVICE is None,
    reason="the Triton RoPE kernel was imported without TRITON_INTERPRET=1 and there is no "
    "CUDA device: set TRITON_INTERPRET=1 before triton is first imported (tests/conftest.py)",
)

FLAGS = [(ii, io) for ii in (False, True) for io in (False, True)]
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def rand(*shape, dtype=torch.float32, gen=None):
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=DEVICE, dtype=dtype)


@pytest.fixture
def gen(request):
    # fresh random data per test, reproducible per test id
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def poisoned_like(x):
    return torch.empty_like(x, memory_format=torch.preserve_format).fill_(float("nan"))


def assert_matches(out, x, cos, sin, ii, io):
    ref = rope_reference(x, cos, sin, ii, io)
    assert out.shape == ref.shape and out.dtype == x.dtype
    assert not out.isnan().any(), "some output elements were not written"
    tol = TOL[x.dtype]
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol)


def run_backend(xs, cos, sin, ii, io, outs=None):
    outs = [poisoned_like(x) for x in xs] if outs is None else outs
    TritonBackend.rope(xs, cos, sin, ii, io, outs)
    for x, out in zip(xs, outs):
        assert_matches(out, x, cos, sin, ii, io)
    return outs


def run_op(xs, cos, sin, ii, io, kernel="triton"):
    outs = torch.ops.mla.rope(xs, cos, sin, ii, io, impl=kernel)
    assert len(outs) == len(xs)
    for x, out in zip(xs, outs):
        assert_matches(out, x, cos, sin, ii, io)
    return outs


# ----------------------------------------------------------------------------- flags


@pytest.mark.parametrize("ii,io", FLAGS)
@pytest.mark.parametrize("half_width", [False, True])
@pytest.mark.parametrize("d", [8, 32, 64])
@pytest.mark.parametrize("n", [1, 2])
def test_flags_bhsd(ii, io, half_width, d, n, gen):
    B, H, S = 2, 3, 5
    w = d // 2 if half_width else d
    q = rand(B, H, S, d, gen=gen)
    k = rand(B, 1, S, d, gen=gen)
    cos, sin = rand(B, 1, S, w, gen=gen), rand(B, 1, S, w, gen=gen)
    run_backend([q, k][:n], cos, sin, ii, io)


@pytest.mark.parametrize("ii,io", FLAGS)
@pytest.mark.parametrize("half_width", [False, True])
def test_flags_via_op(ii, io, half_width, gen):
    T, H, d = 6, 4, 32
    w = d // 2 if half_width else d
    q, k = rand(T, H, d, gen=gen), rand(T, 1, d, gen=gen)
    cos, sin = rand(T, 1, w, gen=gen), rand(T, 1, w, gen=gen)
    run_op([q, k], cos, sin, ii, io)


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("ii,io", [(False, False), (True, True)])
def test_layout_bshd(ii, io, gen):
    B, S, H, d = 2, 5, 3, 32
    q, k = rand(B, S, H, d, gen=gen), rand(B, S, 1, d, gen=gen)
    cos, sin = rand(B, S, 1, d, gen=gen), rand(B, S, 1, d, gen=gen)
    run_backend([q, k], cos, sin, ii, io)


@pytest.mark.parametrize("cos_shape", ["S,w", "1,1,S,w", "B,1,S,w", "B,H,S,w"])
def test_cos_broadcast_bhsd(cos_shape, gen):
    B, H, S, d = 2, 3, 5, 16
    dims = {"B": B, "H": H, "S": S, "w": d, "1": 1}
    shape = [dims[c] for c in cos_shape.split(",")]
    q = rand(B, H, S, d, gen=gen)
    cos, sin = rand(*shape, gen=gen), rand(*shape, gen=gen)
    xs = [q] if "H" in cos_shape else [q, rand(B, 1, S, d, gen=gen)]
    run_backend(xs, cos, sin, False, False)


@pytest.mark.parametrize("lead", [(7,), (3, 4), (2, 3, 4), (2, 2, 3, 3)])
def test_leading_dims(lead, gen):
    d = 16
    x = rand(*lead, d, gen=gen)
    cos, sin = rand(lead[-1], d // 2, gen=gen), rand(lead[-1], d // 2, gen=gen)
    run_backend([x], cos, sin, True, False)
    run_op([x], cos, sin, False, True)


@pytest.mark.parametrize("d", [2, 6, 80, 256])
@pytest.mark.parametrize("ii,io", [(False, False), (True, True), (True, False)])
def test_odd_rotary_dims(d, ii, io, gen):
    # d/2 not a power of two (padded with masks), d = 2 (one pair), d = 256 (largest)
    T, H = 3, 2
    q, k = rand(T, H, d, gen=gen), rand(T, 1, d, gen=gen)
    for w in (d, d // 2):
        cos, sin = rand(T, 1, w, gen=gen), rand(T, 1, w, gen=gen)
        run_backend([q, k], cos, sin, ii, io)


# ----------------------------------------------------------------- non-contiguous x


@pytest.mark.parametrize("ii,io", FLAGS)
def test_mla_projection_slices(ii, io, gen):
    # q_pe: last 64 of a [T, H, 192] projection; k_pe: last 64 of a [T, 576] kv projection
    T, H, nope, d, latent = 5, 4, 128, 64, 512
    q_pe = rand(T, H, nope + d, gen=gen)[..., nope:]
    k_pe = rand(T, latent + d, gen=gen)[:, latent:].unsqueeze(1)
    assert not q_pe.is_contiguous() and not k_pe.is_contiguous()
    cos, sin = rand(T, 1, d, gen=gen), rand(T, 1, d, gen=gen)
    run_backend([q_pe, k_pe], cos, sin, ii, io)
    run_op([q_pe, k_pe], cos, sin, ii, io)


def test_split_slice_and_transpose(gen):
    # q_pe from split(), then [B, S, H, D] -> [B, H, S, D] by transpose
    B, S, H, nope, d = 2, 5, 3, 16, 32
    proj = rand(B, S, H, nope + d, gen=gen)
    _, q_pe = proj.split([nope, d], dim=-1)
    q_pe = q_pe.transpose(1, 2)
    k_pe = rand(B, S, d + 8, gen=gen)[..., 8:].unsqueeze(1)  # [B, 1, S, d]
    cos, sin = rand(S, d, gen=gen), rand(S, d, gen=gen)
    for ii, io in FLAGS:
        run_backend([q_pe, k_pe], cos, sin, ii, io)


def test_strided_last_dim_x(gen):
    # last-dim stride 2: every other element of a wider tensor
    T, H, d = 4, 3, 16
    x = rand(T, H, 2 * d, gen=gen)[..., ::2]
    assert x.stride(-1) == 2
    cos, sin = rand(T, 1, d // 2, gen=gen), rand(T, 1, d // 2, gen=gen)
    run_backend([x], cos, sin, True, True)
    run_backend([x], cos, sin, False, False)


def test_noncontiguous_out(gen):
    B, H, S, d = 2, 3, 4, 16
    q, k = rand(B, H, S, d, gen=gen), rand(B, 1, S, d, gen=gen)
    cos, sin = rand(S, d, gen=gen), rand(S, d, gen=gen)
    out_q = torch.full((B, S, H, d), float("nan"), device=DEVICE).transpose(1, 2)
    out_k = torch.full((B, 1, S, 2 * d), float("nan"), device=DEVICE)[..., ::2]
    run_backend([q, k], cos, sin, False, True, outs=[out_q, out_k])


# --------------------------------------------------------------------- strided cos/sin


@pytest.mark.parametrize("ii,io", FLAGS)
def test_cos_sin_from_complex_freqs(ii, io, gen):
    # cos/sin as view_as_real(freqs)[..., 0/1]: last-dim stride 2, one angle per pair
    T, H, d = 6, 3, 16
    ang = torch.rand(T, d // 2, generator=gen) * 6.0
    freqs = torch.polar(torch.ones_like(ang), ang).to(DEVICE)
    cos = torch.view_as_real(freqs)[..., 0].unsqueeze(1)  # [T, 1, d/2], strides (d, *, 2)
    sin = torch.view_as_real(freqs)[..., 1].unsqueeze(1)
    assert cos.stride(-1) == 2
    q, k = rand(T, H, d, gen=gen), rand(T, 1, d, gen=gen)
    run_backend([q, k], cos, sin, ii, io)


def test_cos_sin_select_and_gather(gen):
    # cos/sin selected out of one [S, 2, d] table, and gathered by position ids
    S, H, d = 7, 3, 32
    table = rand(S, 2, d, gen=gen)
    cos, sin = table.select(1, 0), table.select(1, 1)  # [S, d], row stride 2d
    q, k = rand(1, H, S, d, gen=gen), rand(1, 1, S, d, gen=gen)
    run_backend([q, k], cos, sin, False, False)
    pos = torch.randint(0, S, (5,), generator=gen).to(DEVICE)
    cos_g, sin_g = cos[pos].unsqueeze(1), sin[pos].unsqueeze(1)  # [T, 1, d]
    run_backend([rand(5, H, d, gen=gen), rand(5, 1, d, gen=gen)], cos_g, sin_g, False, False)


# ----------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("cos_dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_dtypes(x_dtype, cos_dtype, gen):
    T, H, d = 4, 3, 32
    q = rand(T, H, d + 32, dtype=x_dtype, gen=gen)[..., 32:]
    k = rand(T, 1, d, dtype=x_dtype, gen=gen)
    cos, sin = rand(T, 1, d, dtype=cos_dtype, gen=gen), rand(T, 1, d, dtype=cos_dtype, gen=gen)
    outs = run_backend([q, k], cos, sin, False, False)
    assert all(o.dtype == x_dtype for o in outs)
    run_backend([q, k], cos, sin, True, True)


def test_mixed_x_dtypes(gen):
    # q and k of different dtypes in one launch; sin of another dtype than cos
    T, H, d = 4, 2, 16
    q, k = rand(T, H, d, dtype=torch.bfloat16, gen=gen), rand(T, 1, d, dtype=torch.float32, gen=gen)
    cos, sin = rand(T, 1, d, gen=gen), rand(T, 1, d, dtype=torch.float16, gen=gen)
    run_backend([q, k], cos, sin, False, True)


# ------------------------------------------------------------------------ edge cases


def test_empty_tensors(gen):
    d = 16
    cos, sin = rand(0, 1, d, gen=gen), rand(0, 1, d, gen=gen)
    outs = run_backend([rand(0, 3, d, gen=gen), rand(0, 1, d, gen=gen)], cos, sin, False, False)
    assert [o.shape for o in outs] == [(0, 3, d), (0, 1, d)]
    # one empty tensor beside a non-empty one
    cos, sin = rand(4, d, gen=gen), rand(4, d, gen=gen)
    run_backend([rand(0, 4, d, gen=gen), rand(2, 4, d, gen=gen)], cos, sin, True, False)


def test_plan_cache_fresh_data(gen):
    # the cached launch plan must not hold on to tensors: same layout, new data
    T, H, d = 5, 3, 16
    cos, sin = rand(T, 1, d, gen=gen), rand(T, 1, d, gen=gen)
    for _ in range(3):
        q = rand(T, H, d + 16, gen=gen)[..., 16:]
        run_backend([q, rand(T, 1, d, gen=gen)], rand(T, 1, d, gen=gen), rand(T, 1, d, gen=gen), False, False)
    run_backend([q], cos, sin, False, False)  # same q layout, one tensor: another plan


def test_int64_offsets(monkeypatch, gen):
    # tensors of 2**31 elements are too big for CI: lower the int32 limit instead
    monkeypatch.setattr(triton_rope, "_INT32_MAX", 8)
    triton_rope._make_plan.cache_clear()
    T, H, d = 5, 3, 16
    q, k = rand(T, H, d + 16, gen=gen)[..., 16:], rand(T, 1, d, gen=gen)
    cos, sin = rand(T, 1, d // 2, gen=gen), rand(T, 1, d // 2, gen=gen)
    run_backend([q, k], cos, sin, True, False)
    key = (True, False, tuple(cos.shape), cos.stride(), sin.stride(), q.get_device(),
           ((tuple(q.shape), q.stride(), (H * d, d, 1)), (tuple(k.shape), k.stride(), k.stride())))
    assert triton_rope._make_plan(key)[4]["INT64"]
    triton_rope._make_plan.cache_clear()  # plans made under the lowered limit must not outlive it


def test_auto_selects_triton(gen):
    from mla_compile.lowering.kernel_choice import select_backend

    assert select_backend(DEVICE, "auto") is TritonBackend
    T, H, d = 3, 2, 16
    q, k = rand(T, H, d, gen=gen), rand(T, 1, d, gen=gen)
    cos, sin = rand(T, 1, d, gen=gen), rand(T, 1, d, gen=gen)
    a = run_op([q, k], cos, sin, True, True, kernel="auto")
    b = run_op([q, k], cos, sin, True, True, kernel="triton")
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


# -------------------------------------------------------------------------- property


def test_random_layouts_property():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=20, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(
        T=st.integers(1, 6), H=st.integers(1, 4), half=st.sampled_from([1, 3, 4, 8, 16]),
        pad=st.integers(0, 3), ii=st.booleans(), io=st.booleans(), half_width=st.booleans(),
        two=st.booleans(), transpose=st.booleans(), seed=st.integers(0, 2**31 - 1),
        dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    )
    def prop(T, H, half, pad, ii, io, half_width, two, transpose, seed, dtype):
        g = torch.Generator().manual_seed(seed)
        d = 2 * half
        w = half if half_width else d
        q = rand(T, H, d + pad, dtype=dtype, gen=g)[..., pad:]
        if transpose:
            q = rand(H, T, d, dtype=dtype, gen=g).transpose(0, 1)
        cos, sin = rand(T, 1, w, gen=g), rand(T, 1, w, gen=g)
        xs = [q, rand(T, 1, d, dtype=dtype, gen=g)] if two else [q]
        run_backend(xs, cos, sin, ii, io)

    prop()


# ------------------------------------------------------------------------- opcheck


@pytest.mark.parametrize("case", ["mla_slices", "half_width_interleaved", "single_bhsd"])
def test_opcheck_triton(case, gen):
    if case == "mla_slices":
        T, H, d = 4, 3, 16
        xs = [rand(T, H, 2 * d, gen=gen)[..., d:], rand(T, 3 * d, gen=gen)[:, 2 * d:].unsqueeze(1)]
        cos, sin = rand(T, 1, d, gen=gen), rand(T, 1, d, gen=gen)
        ii, io = False, False
    elif case == "half_width_interleaved":
        T, H, d = 3, 2, 8
        xs = [rand(T, H, d, dtype=torch.bfloat16, gen=gen), rand(T, 1, d, dtype=torch.bfloat16, gen=gen)]
        cos, sin = rand(T, 1, d // 2, gen=gen), rand(T, 1, d // 2, gen=gen)
        ii, io = True, True
    else:
        B, H, S, d = 1, 2, 3, 8
        xs = [rand(B, H, S, d, gen=gen)]
        cos, sin = rand(S, d, gen=gen), rand(S, d, gen=gen)
        ii, io = True, False
    torch.library.opcheck(torch.ops.mla.rope.default, (xs, cos, sin, ii, io), {"impl": "triton"})
