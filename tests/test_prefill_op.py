"""torch.ops.mla.prefill_attention as an op: opcheck, both forms and both kernels
against MLA written the way transformers' DeepSeek does it, the form choice, the
scale carried as given, and errors that name the argument at fault.

Triton kernels run on CPU under the interpreter (tests/conftest.py sets
TRITON_INTERPRET=1); sizes are tiny to keep it fast. With TRITON_INTERPRET=0 and a
CUDA device the same tests run on the GPU.
"""
import math
import os
import zlib

import pytest
import torch
import torch.nn.functional as F

from mla_compile.custom_ops import prefill_attention_reference
from mla_compile.custom_ops.triton_backend import TritonBackend
from mla_compile.lowering.attention_form import choose_attention_form

op = torch.ops.mla.prefill_attention
DEVICE = torch.device("cuda" if os.environ.get("TRITON_INTERPRET") != "1"
                      and torch.cuda.is_available() else "cpu")
KERNELS = ["reference", pytest.param("triton", marks=pytest.mark.skipif(
    not TritonBackend.supports(DEVICE), reason="Triton needs CUDA or TRITON_INTERPRET=1"))]
FORMS = ["decompressed", "absorbed"]
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
DIMS = dict(Dn=16, Dr=8, Dv=24, R=32)  # Dv != Dn, none a multiple of the other


@pytest.fixture
def gen(request):
    # fresh random data per test, reproducible per test id
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def mla_inputs(B, H, Sq, Sk, gen, dtype=torch.float32, Dn=16, Dr=8, Dv=24, R=32):
    """(q_nope, q_pe, c_kv, k_pe, kv_b_proj weight); weights ~ 1/sqrt(R) so that
    k_nope and v have unit scale like the (normalised) latent."""
    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(DEVICE, dtype)
    return (rand(B, H, Sq, Dn), rand(B, H, Sq, Dr), rand(B, Sk, R), rand(B, Sk, Dr),
            rand(H * (Dn + Dv), R, scale=R ** -0.5))


def split_kv_b(kv_b, H, Dn, Dv):
    """w_uk [H, Dn, R] and w_uv [H, Dv, R]: strided views of kv_b_proj's weight."""
    return kv_b.view(H, Dn + Dv, -1).split([Dn, Dv], dim=1)


def eager_deepseek(q_nope, q_pe, c_kv, k_pe, kv_b, scale, causal, Dn, Dv, sdpa=True):
    """transformers' DeepSeek attention: kv_b_proj on the latent, split, cat k_pe."""
    B, H, Sq, _ = q_nope.shape
    Sk = c_kv.shape[1]
    kv = F.linear(c_kv, kv_b).view(B, Sk, H, Dn + Dv).transpose(1, 2)
    k_nope, v = torch.split(kv, [Dn, Dv], dim=-1)
    k_rot = k_pe.view(B, 1, Sk, -1)
    query = torch.cat((q_nope, q_pe), dim=-1)
    key = torch.cat((k_nope, k_rot.expand(*k_nope.shape[:-1], -1)), dim=-1)
    if sdpa:
        return F.scaled_dot_product_attention(query, key, v, scale=scale, is_causal=causal)
    weights = torch.matmul(query, key.transpose(2, 3)) * scale
    if causal:  # top-left, as is_causal
        mask = torch.full((Sq, Sk), float("-inf"), dtype=weights.dtype, device=weights.device)
        weights = weights + mask.triu(1)
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, v)


def run_op(q_nope, q_pe, c_kv, k_pe, kv_b, scale, causal, form, kernel, Dn, Dv):
    w_uk, w_uv = split_kv_b(kv_b, q_nope.shape[1], Dn, Dv)
    return op(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, scale, causal, form, kernel)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("form", FORMS)
def test_opcheck(kernel, form, gen):
    q_nope, q_pe, c_kv, k_pe, kv_b = mla_inputs(2, 2, 5, 9, gen)
    w_uk, w_uv = split_kv_b(kv_b, 2, DIMS["Dn"], DIMS["Dv"])
    for causal in (False, True):
        torch.library.opcheck(op.default, (q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, 0.3, causal,
                                           form, kernel))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("H", [1, 4])
@pytest.mark.parametrize("Sq, Sk", [(13, 13), (3, 37)])
def test_matches_eager_deepseek(kernel, form, dtype, causal, H, Sq, Sk, gen):
    inputs = mla_inputs(2, H, Sq, Sk, gen, dtype)
    scale = (DIMS["Dn"] + DIMS["Dr"]) ** -0.5
    out = run_op(*inputs, scale, causal, form, kernel, DIMS["Dn"], DIMS["Dv"])
    assert out.shape == (2, H, Sq, DIMS["Dv"]) and out.dtype == dtype
    assert out.transpose(1, 2).is_contiguous()  # [B, Sq, H, Dv] in memory: o_proj reads a view
    assert not out.isnan().any()
    tol = TOL[dtype]
    for sdpa in (True, False):
        ref = eager_deepseek(*inputs, scale, causal, DIMS["Dn"], DIMS["Dv"], sdpa=sdpa)
        torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("causal", [False, True])
def test_absorbed_equals_decompressed(causal, gen):
    q_nope, q_pe, c_kv, k_pe, kv_b = mla_inputs(2, 4, 7, 21, gen)
    w_uk, w_uv = split_kv_b(kv_b, 4, DIMS["Dn"], DIMS["Dv"])
    args = (q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, 0.2, causal)
    ref_a, ref_d = (prefill_attention_reference(*args, form) for form in FORMS)
    torch.testing.assert_close(ref_a, ref_d, rtol=1e-5, atol=1e-5)
    a, d = (op(*args, form) for form in FORMS)  # kernel "auto": Triton where it runs
    torch.testing.assert_close(a, d, rtol=1e-5, atol=1e-5)


def test_form_choice():
    deepseek = dict(heads=128, nope_dim=128, rope_dim=64, v_dim=128, latent_dim=512)
    assert choose_attention_form(4096, 4096, **deepseek) == "decompressed"
    assert choose_attention_form(1, 4096, **deepseek) == "absorbed"
    assert choose_attention_form(512, 4096, **deepseek) == "decompressed"


def test_form_choice_symbolic_adds_no_guard():
    from torch._dynamo.source import ConstantSource
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    env = ShapeEnv()
    kv, q = (env.create_symintnode(env.create_symbol(4096, ConstantSource(n)), hint=4096)
             for n in ("kv", "q"))
    dims = (128, 128, 64, 128, 512)
    assert choose_attention_form(1, kv, *dims) == "absorbed"  # true for every kv >= 2
    assert choose_attention_form(q, kv, *dims) == "decompressed"  # undecidable
    assert choose_attention_form(q, q, *dims) == "decompressed"
    assert not env.guards


@pytest.mark.parametrize("form", FORMS)
def test_scale_is_used_as_given(form, gen):
    # DeepSeek yarn: softmax_scale = (Dn + Dr)**-0.5 * mscale**2; never the latent
    # cache's head size (R + Dr)**-0.5, the bug of seed 000
    d = dict(Dn=128, Dr=64, Dv=128, R=512)
    inputs = mla_inputs(1, 2, 6, 6, gen, **d)
    mscale = 0.1 * math.log(40) + 1
    scale = 192 ** -0.5 * mscale ** 2
    ref = eager_deepseek(*inputs, scale, True, d["Dn"], d["Dv"])
    out = run_op(*inputs, scale, True, form, "auto", d["Dn"], d["Dv"])
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    wrong = run_op(*inputs, 576 ** -0.5, True, form, "auto", d["Dn"], d["Dv"])
    assert not torch.allclose(wrong, ref, rtol=1e-2, atol=1e-2)


def _bad(**change):
    """Valid arguments (B=2, H=4, Sq=3, Sk=5, Dn=16, Dr=8, Dv=24, R=32) with some replaced."""
    g = torch.Generator().manual_seed(0)
    q_nope, q_pe, c_kv, k_pe, kv_b = mla_inputs(2, 4, 3, 5, g)
    w_uk, w_uv = split_kv_b(kv_b, 4, 16, 24)
    args = dict(q_nope=q_nope, q_pe=q_pe, c_kv=c_kv, k_pe=k_pe, w_uk=w_uk, w_uv=w_uv,
                scale=0.25, causal=False, form="decompressed", impl="reference")
    args.update({k: v(args[k]) if callable(v) else v for k, v in change.items()})
    return args


@pytest.mark.parametrize("change, message", [
    (dict(impl="cuda"), "kernel must be one of"),
    (dict(form="latent"), "form must be one of"),
    (dict(q_nope=lambda t: t[0]), r"q_nope must be 4-D \[B, H, Sq, Dn\]"),
    (dict(q_pe=lambda t: t[0]), r"q_pe must be 4-D \[B, H, Sq, Dr\]"),
    (dict(c_kv=lambda t: t[:, None]), r"c_kv must be 3-D \[B, Sk, R\]"),
    (dict(k_pe=lambda t: t[:, None]), r"k_pe must be 3-D \[B, Sk, Dr\]"),
    (dict(w_uk=lambda t: t.reshape(-1, 32)), r"w_uk must be 3-D \[H, Dn, R\]"),
    (dict(w_uv=lambda t: t.reshape(-1, 32)), r"w_uv must be 3-D \[H, Dv, R\]"),
    (dict(q_nope=lambda t: t.int()), "q_nope dtype must be one of"),
    (dict(q_pe=lambda t: t.double()), "q_pe dtype torch.float64 differs from q_nope's torch.float32"),
    (dict(c_kv=lambda t: t.bfloat16()), "c_kv dtype torch.bfloat16 differs"),
    (dict(k_pe=lambda t: t.half()), "k_pe dtype torch.float16 differs"),
    (dict(w_uk=lambda t: t.bfloat16()), "w_uk dtype torch.bfloat16 differs"),
    (dict(w_uv=lambda t: t.bfloat16()), "w_uv dtype torch.bfloat16 differs"),
    (dict(w_uv=lambda t: t.to("meta")), "w_uv is on meta but q_nope is on"),
    (dict(q_pe=lambda t: t[:, :3]), r"q_pe must be \[B, H, Sq, Dr\] = \(2, 4, 3, 8\) .* got \(2, 3, 3, 8\)"),
    (dict(q_pe=lambda t: t[:, :, :2]), r"q_pe must be .* got \(2, 4, 2, 8\)"),
    (dict(c_kv=lambda t: t[:1]), r"c_kv must be \[B, Sk, R\] = \(2, 5, 32\) .* got \(1, 5, 32\)"),
    (dict(k_pe=lambda t: t[:, :4]), r"k_pe must be \[B, Sk, Dr\] = \(2, 5, 8\) .* got \(2, 4, 8\)"),
    (dict(k_pe=lambda t: t[..., :4]), r"k_pe must be .* got \(2, 5, 4\)"),
    (dict(w_uk=lambda t: t[:, :8]), r"w_uk must be \[H, Dn, R\] = \(4, 16, 32\) .* got \(4, 8, 32\)"),
    (dict(w_uk=lambda t: t[..., :16]), r"w_uk must be .* got \(4, 16, 16\)"),
    (dict(w_uv=lambda t: t[:2]), r"w_uv must be \[H, Dv, R\] = \(4, 24, 32\) .* got \(2, 24, 32\)"),
    (dict(w_uv=lambda t: t[..., :16]), r"w_uv must be .* got \(4, 24, 16\)"),
])
def test_invalid_arguments_are_named(change, message):
    with pytest.raises(ValueError, match=f"mla.prefill_attention: {message}"):
        op(**_bad(**change))


def padding_mask(B, Sq, Sk, dtype, gen):
    """transformers' eager mask: 0 where visible, finfo.min elsewhere; causal plus left
    padding of a random length for each batch row (row 0 unpadded), [B, 1, Sq, Sk]."""
    visible = torch.ones(Sq, Sk, dtype=torch.bool).tril(Sk - Sq).expand(B, 1, Sq, Sk).clone()
    for b in range(1, B):
        visible[b, :, :, : int(torch.randint(1, Sk, (1,), generator=gen))] = False
    mask = torch.zeros(B, 1, Sq, Sk, dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)
    return mask.to(DEVICE)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_additive_mask_matches_eager(kernel, form, dtype, gen):
    B, H, Sq, Sk = 3, 2, 9, 9
    q_nope, q_pe, c_kv, k_pe, kv_b = mla_inputs(B, H, Sq, Sk, gen, dtype)
    mask = padding_mask(B, Sq, Sk, dtype, gen)
    scale = (DIMS["Dn"] + DIMS["Dr"]) ** -0.5
    w_uk, w_uv = split_kv_b(kv_b, H, DIMS["Dn"], DIMS["Dv"])
    out = op(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, scale, False, form, kernel, mask)
    # eager attention as transformers writes it: scores * scale + mask, fp32 softmax
    kv = F.linear(c_kv, kv_b).view(B, Sk, H, -1).transpose(1, 2)
    k_nope, v = kv.split([DIMS["Dn"], DIMS["Dv"]], dim=-1)
    key = torch.cat((k_nope, k_pe[:, None].expand(B, H, Sk, -1)), dim=-1)
    query = torch.cat((q_nope, q_pe), dim=-1)
    weights = torch.matmul(query, key.transpose(2, 3)) * scale + mask
    expected = torch.matmul(F.softmax(weights, dim=-1, dtype=torch.float32).to(dtype), v)
    tol = TOL[dtype]
    torch.testing.assert_close(out.float(), expected.float(), rtol=tol, atol=tol)
    torch.library.opcheck(op.default, (q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, scale, False,
                                       form, kernel, mask))


@pytest.mark.parametrize("mask, message", [
    (lambda m: m.bool(), "mask must be a float tensor"),
    (lambda m: m[:, :, :, :4], r"mask \(2, 1, 3, 4\) must broadcast to \[B, H, Sq, Sk\]"),
    (lambda m: m.expand(2, 3, 3, 5), r"mask \(2, 3, 3, 5\) must broadcast"),
])
def test_invalid_mask_is_named(mask, message):
    args = _bad()
    args["mask"] = mask(torch.zeros(2, 1, 3, 5, device=DEVICE))
    with pytest.raises(ValueError, match=f"mla.prefill_attention: {message}"):
        op(**args)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("form", FORMS)
def test_zero_empty_rows_is_sdpa_safe_softmax(kernel, form, gen):
    """A query row with every key masked by -inf: SDPA's safe softmax gives 0 there
    (zero_empty_rows=True), plain softmax NaN (False); other rows agree with SDPA."""
    B, H, Sq, Sk = 2, 2, 5, 6
    q_nope, q_pe, c_kv, k_pe, kv_b = mla_inputs(B, H, Sq, Sk, gen)
    keep = torch.ones(B, 1, Sq, Sk, dtype=torch.bool, device=DEVICE)
    keep[1, :, 2] = False  # batch 1, query 2 sees nothing
    mask = torch.zeros(keep.shape, device=DEVICE).masked_fill(~keep, float("-inf"))
    scale = (DIMS["Dn"] + DIMS["Dr"]) ** -0.5
    w_uk, w_uv = split_kv_b(kv_b, H, DIMS["Dn"], DIMS["Dv"])
    args = (q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, scale, False, form, kernel, mask)
    zeroed = op(*args, True)
    kv = F.linear(c_kv, kv_b).view(B, Sk, H, -1).transpose(1, 2)
    k_nope, v = kv.split([DIMS["Dn"], DIMS["Dv"]], dim=-1)
    key = torch.cat((k_nope, k_pe[:, None].expand(B, H, Sk, -1)), dim=-1)
    expected = F.scaled_dot_product_attention(torch.cat((q_nope, q_pe), -1), key, v, attn_mask=keep, scale=scale)
    torch.testing.assert_close(zeroed, expected, rtol=1e-4, atol=1e-4)
    assert (zeroed[1, :, 2] == 0).all()
    plain = op(*args, False)
    assert plain[1, :, 2].isnan().all() and not plain[0].isnan().any()
    torch.testing.assert_close(plain[0], expected[0], rtol=1e-4, atol=1e-4)


def test_ops_run_inside_plain_inductor(gen):
    """Our ops called directly in a model compiled with plain `backend="inductor"` (a
    fallback kernel each): they name their kernel choice `impl`, not `kernel`, which
    Inductor's fallback takes as its own parameter name (a TypeError before)."""
    B, H, S, Dn, Dr, Dv, R = 1, 2, 6, 8, 4, 8, 16
    q_nope, q_pe = torch.randn(B, H, S, Dn, generator=gen), torch.randn(B, H, S, Dr, generator=gen)
    c, kr = torch.randn(B, S, R, generator=gen), torch.randn(B, S, Dr, generator=gen)
    w_uk, w_uv = torch.randn(H, Dn, R, generator=gen) * 0.3, torch.randn(H, Dv, R, generator=gen) * 0.3
    cos, sin = torch.randn(S, Dr, generator=gen), torch.randn(S, Dr, generator=gen)
    idx = torch.stack([torch.randperm(S, generator=gen)[:3] for _ in range(S)])[None]

    def model(q_nope, q_pe, c, kr):
        (q_rot,) = torch.ops.mla.rope([q_pe], cos, sin, False, False)
        dense = torch.ops.mla.prefill_attention(q_nope, q_rot, c, kr, w_uk, w_uv, 0.3, True, "decompressed")
        q_lat = torch.einsum("bhqd,hdr->bhqr", q_nope, w_uk)
        latent = torch.ops.mla.latent_attention(q_lat, q_rot, c, kr, 0.3, True)
        sparse = torch.ops.mla.sparse_attention(q_nope, q_rot, c, kr, w_uk, w_uv, idx, 0.3)
        return dense, latent, sparse

    torch._dynamo.reset()
    got = torch.compile(model, backend="inductor", fullgraph=True)(q_nope, q_pe, c, kr)
    for g, w in zip(got, model(q_nope, q_pe, c, kr)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
