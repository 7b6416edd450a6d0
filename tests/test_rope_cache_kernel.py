"""`mla.rope_cache_write` as one Triton launch (issue 11 item 4) against its PyTorch
reference (`reference.rope_cache_write_reference`), for NORMAL and SHUFFLE pages and
several block sizes: the whole cache after the write (untouched tokens included), the
rotated q as a new tensor with the caller's q_pe unchanged, one launch per call, and a
slot outside the cache skipped rather than written out of bounds.

On CPU the kernel runs under Triton's interpreter (tests/conftest.py); with
TRITON_INTERPRET=0 and a CUDA device the same tests run on the GPU.
"""
import os
import zlib

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from kernel_device import kernel_test_device  # noqa: E402
from mla_compile.custom_ops import PagedLatentCache, triton_rope, triton_rope_cache  # noqa: E402
from mla_compile.custom_ops.reference import ReferenceBackend, rope_reference  # noqa: E402
from mla_compile.custom_ops.triton_backend import TritonBackend  # noqa: E402
from mla_compile.lowering.cache_layout import CacheLayout  # noqa: E402

DEVICE = kernel_test_device(triton_rope_cache._rope_cache_kernel)
pytestmark = pytest.mark.skipif(DEVICE is None, reason="no interpreted Triton and no CUDA device")

R, DR, H = 24, 8, 3
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


@pytest.fixture
def gen(request):
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def rand(*shape, gen, dtype=torch.float32):
    return torch.randn(*shape, generator=gen).to(DEVICE, dtype)


def inputs(T, gen, dtype, half_width=False, cos_rows=True):
    """Model-shaped, strided inputs: latent and k_pe are the two windows of one
    compressed_kv [T, R + DR]; q_pe the rope window of q [T, H, 16 + DR], seen as
    [H, T, DR] so that cos/sin [T, w] broadcast to it and to k_pe [T, DR] alike."""
    ckv = rand(T, R + DR, gen=gen, dtype=dtype)
    q = rand(T, H, 16 + DR, gen=gen, dtype=dtype)
    w = DR // 2 if half_width else DR
    ang = rand(T if cos_rows else 1, w, gen=gen)
    return dict(latent=ckv[:, :R], k_pe=ckv[:, R:], q_pe=q[..., 16:].transpose(0, 1),
                cos=ang.cos().to(dtype), sin=ang.sin().to(dtype))


def both(cache, args, slots, ii, io):
    """(triton cache, reference cache, triton q, reference q), from one starting cache."""
    data_ref = cache.data.clone()
    q_tri = torch.empty_like(args["q_pe"])
    q_ref = torch.empty_like(args["q_pe"])
    common = (args["q_pe"], args["k_pe"], args["latent"], args["cos"], args["sin"], slots)
    TritonBackend.rope_cache_write(*common, cache.data, cache.block_size, *cache.params, ii, io, q_tri)
    ReferenceBackend.rope_cache_write(*common, data_ref, cache.block_size, *cache.params, ii, io, q_ref)
    return cache.data, data_ref, q_tri, q_ref


def poisoned_cache(num_blocks, block_size, layout, dtype, gen):
    cache = PagedLatentCache.allocate(num_blocks, block_size, R, DR, dtype, DEVICE, layout=layout)
    cache.data.copy_(rand(*cache.data.shape, gen=gen, dtype=dtype))  # untouched tokens must stay
    return cache


LAYOUTS = [(1, CacheLayout.NORMAL), (2, CacheLayout.NORMAL), (16, CacheLayout.NORMAL), (64, CacheLayout.NORMAL),
           (16, CacheLayout.SHUFFLE), (64, CacheLayout.SHUFFLE)]


@pytest.mark.parametrize("block_size, layout", LAYOUTS, ids=lambda v: getattr(v, "value", v))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_matches_reference_every_layout(block_size, layout, dtype, gen):
    cache = poisoned_cache(-(-40 // block_size) + 1, block_size, layout, dtype, gen)
    T = 7
    args = inputs(T, gen, dtype)
    n = cache.data.shape[0] * block_size
    slots = torch.randperm(n, generator=gen)[:T].to(DEVICE)  # any order, any pages
    q_before = args["q_pe"].clone()
    data, data_ref, q_tri, q_ref = both(cache, args, slots, False, False)
    tol = TOL[dtype]
    torch.testing.assert_close(data, data_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(q_tri, q_ref, rtol=tol, atol=tol)
    assert torch.equal(args["q_pe"], q_before)
    # the latent is a copy: bit-exact, read back through the cache's own reader
    table = torch.arange(cache.data.shape[0], device=DEVICE, dtype=torch.int32)[None]
    c, kr, _ = cache.read(table, torch.tensor([n], device=DEVICE))
    assert torch.equal(c[0, slots], args["latent"])
    torch.testing.assert_close(kr[0, slots], rope_reference(args["k_pe"], args["cos"], args["sin"], False, False),
                               rtol=tol, atol=tol)


@pytest.mark.parametrize("ii, io", [(False, True), (True, False), (True, True)])
@pytest.mark.parametrize("half_width", [False, True])
@pytest.mark.parametrize("layout", [CacheLayout.NORMAL, CacheLayout.SHUFFLE], ids=lambda v: v.value)
def test_flags_and_cos_width(ii, io, half_width, layout, gen):
    cache = poisoned_cache(3, 16, layout, torch.float32, gen)
    args = inputs(5, gen, torch.float32, half_width=half_width, cos_rows=False)  # cos [1, w]: broadcast
    slots = torch.tensor([0, 17, 5, 47, 30], device=DEVICE)
    data, data_ref, q_tri, q_ref = both(cache, args, slots, ii, io)
    torch.testing.assert_close(data, data_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q_tri, q_ref, rtol=1e-5, atol=1e-5)


def test_one_launch_through_the_op(monkeypatch, gen):
    """The op's whole work (q RoPE, k RoPE, cache write) is one kernel launch."""
    launches = []

    def counting(module):
        real = module.launch

        def wrapped(kernel, *a, **k):
            launches.append(getattr(kernel, "__name__", str(kernel)))
            return real(kernel, *a, **k)
        monkeypatch.setattr(module, "launch", wrapped)

    counting(triton_rope)
    counting(triton_rope_cache)
    cache = poisoned_cache(2, 16, None, torch.float32, gen)
    args = inputs(4, gen, torch.float32)
    slots = torch.tensor([3, 4, 20, 31], device=DEVICE)
    q_rot = cache.write_with_rope(args["latent"], args["k_pe"], args["q_pe"], args["cos"], args["sin"], slots,
                                  kernel="triton")
    assert len(launches) == 1, launches
    torch.testing.assert_close(q_rot, rope_reference(args["q_pe"], args["cos"], args["sin"], False, False),
                               rtol=1e-5, atol=1e-5)


def test_slot_outside_the_cache_is_skipped(gen):
    """The eager op rejects such a slot before the launch; the kernel itself (no host
    check under CUDA graph capture) must not write out of bounds: it skips the token."""
    cache = poisoned_cache(2, 16, None, torch.float32, gen)
    args = inputs(3, gen, torch.float32)
    before = cache.data.clone()
    slots = torch.tensor([4, 32, -1], device=DEVICE)  # 32 = num_blocks * block_size: one past the end
    q_out = torch.empty_like(args["q_pe"])
    TritonBackend.rope_cache_write(args["q_pe"], args["k_pe"], args["latent"], args["cos"], args["sin"], slots,
                                   cache.data, 16, *cache.params, False, False, q_out)
    changed = (cache.data != before).view(2, 16, R + DR).any(-1).nonzero().tolist()
    assert changed == [[0, 4]], changed  # only token 4 of page 0
    with pytest.raises(ValueError, match="slots"):
        cache.write_with_rope(args["latent"], args["k_pe"], args["q_pe"], args["cos"], args["sin"], slots,
                              kernel="triton")


def test_stays_an_op_call_where_inductor_launches_kernels(monkeypatch, gen):
    """Where lowering traces ops into Inductor launches (CUDA; forced here), this op's
    cache mutation keeps it an op call (the graph holds it as auto_functionalized,
    which inline_launches leaves alone; Inductor writes the caller's cache in place):
    the one launch happens inside it, the cache is written, q_pe is not."""
    import importlib

    from torch._inductor.utils import run_and_get_code

    inline_launches = importlib.import_module("mla_compile.passes.inline_launches")
    monkeypatch.setattr(inline_launches, "inductor_launches", lambda device, kernel: True)
    cache = poisoned_cache(2, 16, None, torch.float32, gen)
    args = inputs(3, gen, torch.float32)
    slots = torch.tensor([1, 5, 20], device=DEVICE)
    before, q_before = cache.data.clone(), args["q_pe"].clone()

    def step(data, latent, k_pe, q_pe, cos, sin, slots):
        q_rot = torch.ops.mla.rope_cache_write(data, latent, k_pe, q_pe, cos, sin, slots, 16, *cache.params,
                                               False, False, "triton")
        return q_rot * 2 + q_pe  # q_pe read again: it must still hold its pre-RoPE value

    reports = []
    torch._dynamo.reset()
    compiled = torch.compile(step, backend="mla", fullgraph=True, options={"report": reports.append})
    out, code = run_and_get_code(compiled, cache.data, args["latent"], args["k_pe"], args["q_pe"], args["cos"],
                                 args["sin"], slots)
    assert "torch.ops.mla.rope_cache_write" in "\n".join(code)
    assert not any(k.startswith("launch.") for k in reports[0].counts()), reports[0].format()
    want, q_ref = before.clone(), torch.empty_like(q_before)  # the reference, on a copy of the starting cache
    ReferenceBackend.rope_cache_write(q_before, args["k_pe"], args["latent"], args["cos"], args["sin"], slots,
                                      want, 16, *cache.params, False, False, q_ref)
    torch.testing.assert_close(cache.data, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, q_ref * 2 + q_before, rtol=1e-5, atol=1e-5)
    assert torch.equal(args["q_pe"], q_before)


@pytest.mark.parametrize("kernel", ["triton", "reference"])
def test_opcheck(kernel, gen):
    """The schema is honest (only the cache is written: q_pe is not), the fake agrees
    with the real op, and it traces."""
    cache = poisoned_cache(2, 16, None, torch.float32, gen)
    a = inputs(3, gen, torch.float32)
    args = (cache.data, a["latent"], a["k_pe"], a["q_pe"], a["cos"], a["sin"], torch.tensor([0, 9, 31], device=DEVICE),
            16, *cache.params, False, False, kernel)
    torch.library.opcheck(torch.ops.mla.rope_cache_write.default, args)


@pytest.mark.parametrize("rope_first", [False, True], ids=["latent", "indexer"])
def test_int64_offsets(monkeypatch, rope_first, gen):
    """Tensors of 2**31 elements are too big for CI: the int32 limit is lowered instead,
    so that the kernel's int64 path (row, slot and page offsets) runs."""
    monkeypatch.setattr(triton_rope, "_INT32_MAX", 8)
    plans = []
    plan = triton_rope_cache._make_plan.__wrapped__  # unmemoised: no plan outlives the lowered limit
    monkeypatch.setattr(triton_rope_cache, "_make_plan", lambda key: plans.append(plan(key)) or plans[-1])
    cache = poisoned_cache(3, 16, CacheLayout.SHUFFLE, torch.float32, gen)
    args = inputs(5, gen, torch.float32)
    slots = torch.tensor([0, 17, 5, 47, 30], device=DEVICE)
    common = (args["q_pe"], args["k_pe"], args["latent"], args["cos"], args["sin"], slots)
    ref, q_tri, q_ref = cache.data.clone(), torch.empty_like(args["q_pe"]), torch.empty_like(args["q_pe"])
    TritonBackend.rope_cache_write(*common, cache.data, 16, *cache.params, True, False, q_tri, rope_first)
    ReferenceBackend.rope_cache_write(*common, ref, 16, *cache.params, True, False, q_ref, rope_first)
    assert len(plans) == 1 and plans[0][-1]["INT64"]
    torch.testing.assert_close(cache.data, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q_tri, q_ref, rtol=1e-5, atol=1e-5)
