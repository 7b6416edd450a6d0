"""The DSA indexer's RoPE and key write in one launch (`mla.indexer_rope_cache_write`,
issue 14 items 3 and 5): rope dims FIRST, the cache layout from `lowering.cache_layout`.
The Triton kernel (the interpreter on CPU) against the reference for NORMAL block sizes
1/2/16/64 and SHUFFLE 16/64; the cached keys and the rotated query against
transformers 5.23's own indexer RoPE (deepseek_v32: neox; glm_moe_dsa: interleaved
pairs); q_pe and k never written; one launch; argument checks."""
import os
import zlib

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from kernel_device import kernel_test_device  # noqa: E402
from mla_compile.custom_ops import PagedIndexerKeyCache, triton_rope, triton_rope_cache  # noqa: E402
from mla_compile.custom_ops.reference import ReferenceBackend  # noqa: E402
from mla_compile.custom_ops.triton_backend import TritonBackend  # noqa: E402
from mla_compile.lowering.cache_layout import CacheLayout  # noqa: E402

DEVICE = kernel_test_device(triton_rope_cache._rope_cache_kernel)
pytestmark = pytest.mark.skipif(DEVICE is None, reason="no interpreted Triton and no CUDA device")
D, RD, H = 32, 8, 2  # indexer head dim, rope dims (the first RD), heads


@pytest.fixture
def gen(request):
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def rand(*shape, gen, dtype=torch.float32):
    return torch.randn(*shape, generator=gen).to(DEVICE, dtype)


def cos_sin(T, gen, dtype):
    ang = rand(T, RD // 2, gen=gen)
    return torch.cat([ang.cos()] * 2, -1).to(dtype), torch.cat([ang.sin()] * 2, -1).to(dtype)


LAYOUTS = [(1, CacheLayout.NORMAL), (2, CacheLayout.NORMAL), (16, CacheLayout.NORMAL), (64, CacheLayout.NORMAL),
           (16, CacheLayout.SHUFFLE), (64, CacheLayout.SHUFFLE)]


@pytest.mark.parametrize("block_size, layout", LAYOUTS, ids=lambda v: getattr(v, "value", v))
@pytest.mark.parametrize("ii, dtype", [(False, torch.float32), (True, torch.bfloat16)], ids=["neox-fp32", "pairs-bf16"])
def test_kernel_matches_reference(block_size, layout, ii, dtype, gen):
    cache = PagedIndexerKeyCache.allocate(-(-40 // block_size) + 1, block_size, D, dtype, DEVICE, layout=layout)
    cache.data.copy_(rand(*cache.data.shape, gen=gen, dtype=dtype))  # untouched tokens must stay
    T = 6
    k = rand(T, D, gen=gen, dtype=dtype)
    q_pe = rand(T, H, D, gen=gen, dtype=dtype)[..., :RD].transpose(0, 1)  # [H, T, RD], strided
    cos, sin = cos_sin(T, gen, dtype)
    slots = torch.randperm(cache.data.shape[0] * block_size, generator=gen)[:T].to(DEVICE)
    ref_data, q_ref, q_tri = cache.data.clone(), torch.empty_like(q_pe), torch.empty_like(q_pe)
    args = (q_pe, k[:, :RD], k[:, RD:], cos, sin, slots)
    TritonBackend.rope_cache_write(*args, cache.data, block_size, *cache.params, ii, False, q_tri, rope_first=True)
    ReferenceBackend.rope_cache_write(*args, ref_data, block_size, *cache.params, ii, False, q_ref, rope_first=True)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(cache.data, ref_data, rtol=tol, atol=tol)
    torch.testing.assert_close(q_tri, q_ref, rtol=tol, atol=tol)
    # the unrotated rest is a copy: bit-exact where the reader finds it
    n = cache.data.shape[0] * block_size
    keys, _ = cache.read(torch.arange(cache.data.shape[0], device=DEVICE, dtype=torch.int32)[None],
                         torch.tensor([n], device=DEVICE))
    assert torch.equal(keys[0, slots, RD:], k[:, RD:])


FAMILIES = {  # family: (its indexer's RoPE function, interleaved_in)
    "deepseek_v32": ("apply_rotary_pos_emb", False),
    "glm_moe_dsa": ("apply_rotary_pos_emb_interleave", True),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kernel", ["triton", "reference"])
def test_equals_transformers_indexer(family, kernel, gen):
    """What the family's indexer computes (q_rot, and the key it caches:
    cat([k_rot, k_pass]), rope dims first), with q [B, S, H, D] and k [B, S, 1, D]
    token-flattened for the op (q_pe seen as [H, T, RD]: cos/sin [T, RD] broadcast)."""
    import importlib

    pytest.importorskip("transformers")
    name, ii = FAMILIES[family]
    apply = getattr(importlib.import_module(f"transformers.models.{family}.modeling_{family}"), name)
    B, S = 2, 5
    q, k = rand(B, S, H, D, gen=gen), rand(B, S, 1, D, gen=gen)
    cos, sin = cos_sin(B * S, gen, torch.float32)
    cos, sin = cos.view(B, S, RD), sin.view(B, S, RD)
    q_before, k_before = q.clone(), k.clone()
    q_rot, q_pass = torch.split(q, [RD, D - RD], dim=-1)
    k_rot, k_pass = torch.split(k, [RD, D - RD], dim=-1)
    q_rot, k_rot = apply(q_rot, k_rot, cos, sin, unsqueeze_dim=2)
    want_keys = torch.cat([k_rot, k_pass], dim=-1).squeeze(2).reshape(B * S, D)

    cache = PagedIndexerKeyCache.allocate(2, 16, D, torch.float32, DEVICE)
    T = B * S
    slots = torch.arange(T, device=DEVICE) * 3  # spread over both pages
    got_q = cache.write_with_rope(k.view(T, D), q[..., :RD].reshape(T, H, RD).transpose(0, 1), cos.view(T, RD),
                                  sin.view(T, RD), slots, RD, interleaved_in=ii, kernel=kernel)
    keys, _ = cache.read(torch.tensor([[0, 1]], device=DEVICE, dtype=torch.int32), torch.tensor([32], device=DEVICE))
    torch.testing.assert_close(keys[0, slots], want_keys, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_q.transpose(0, 1).reshape(B, S, H, RD), q_rot, rtol=1e-5, atol=1e-5)
    assert torch.equal(q, q_before) and torch.equal(k, k_before), "q or k was written (seed 003b)"


def test_one_launch(monkeypatch, gen):
    launches = []
    for module in (triton_rope, triton_rope_cache):
        real = module.launch
        monkeypatch.setattr(module, "launch", lambda kernel, *a, real=real, **kw: (launches.append(kernel),
                                                                                   real(kernel, *a, **kw)))
    cache = PagedIndexerKeyCache.allocate(2, 16, D, torch.float32, DEVICE)
    k, q_pe = rand(3, D, gen=gen), rand(H, 3, RD, gen=gen)
    cos, sin = cos_sin(3, gen, torch.float32)
    cache.write_with_rope(k, q_pe, cos, sin, torch.tensor([0, 9, 31], device=DEVICE), RD, kernel="triton")
    assert len(launches) == 1, launches


@pytest.mark.parametrize("rope_dim, message", [
    (0, r"rope_dim must be in \[2, D\] = \[2, 32\]"),
    (40, r"rope_dim must be in \[2, D\] = \[2, 32\]"),
    (4, r"k\[:, :rope_dim\] rotary dim \(last dim\) must equal q_pe's 8, got 4"),
])
def test_checks(rope_dim, message, gen):
    cache = PagedIndexerKeyCache.allocate(2, 16, D, torch.float32, DEVICE)
    k, q_pe = rand(3, D, gen=gen), rand(H, 3, RD, gen=gen)
    cos, sin = cos_sin(3, gen, torch.float32)
    with pytest.raises(ValueError, match=f"mla.indexer_rope_cache_write: {message}"):
        cache.write_with_rope(k, q_pe, cos, sin, torch.tensor([0, 1, 2], device=DEVICE), rope_dim)


@pytest.mark.parametrize("kernel", ["triton", "reference"])
def test_opcheck(kernel, gen):
    """The schema is honest (only the cache is written: q_pe and k are not), the fake
    agrees with the real op, and it traces."""
    cache = PagedIndexerKeyCache.allocate(2, 16, D, torch.float32, DEVICE)
    k, q_pe = rand(3, D, gen=gen), rand(H, 3, RD, gen=gen)
    cos, sin = cos_sin(3, gen, torch.float32)
    args = (cache.data, k, q_pe, cos, sin, torch.tensor([0, 9, 31], device=DEVICE), RD, 16, *cache.params,
            False, False, kernel)
    torch.library.opcheck(torch.ops.mla.indexer_rope_cache_write.default, args)


def test_under_compile(gen):
    """Compiled: the write happens though nothing reads the cache, and q_pe read again
    after the op keeps its pre-RoPE value."""
    cache = PagedIndexerKeyCache.allocate(2, 16, D, torch.float32, DEVICE)
    k, q_pe = rand(3, D, gen=gen), rand(H, 3, RD, gen=gen)
    cos, sin = cos_sin(3, gen, torch.float32)
    slots = torch.tensor([4, 16, 30], device=DEVICE)
    q_before = q_pe.clone()

    def step(data, k, q_pe, cos, sin, slots):
        q_rot = torch.ops.mla.indexer_rope_cache_write(data, k, q_pe, cos, sin, slots, RD, 16, *cache.params,
                                                       False, False)
        return q_rot + q_pe

    torch._dynamo.reset()
    out = torch.compile(step, backend="mla", fullgraph=True)(cache.data, k, q_pe, cos, sin, slots)
    want = torch.zeros_like(cache.data)
    q_ref = torch.empty_like(q_pe)
    ReferenceBackend.rope_cache_write(q_before, k[:, :RD], k[:, RD:], cos, sin, slots, want, 16, *cache.params,
                                      False, False, q_ref, rope_first=True)
    torch.testing.assert_close(cache.data, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, q_ref + q_before, rtol=1e-5, atol=1e-5)
    assert torch.equal(q_pe, q_before)
