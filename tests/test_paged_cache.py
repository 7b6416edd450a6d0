"""The paged latent cache: layout chosen in one place, writer and readers agree for
every block size (seed 003a), decode over pages (Triton under the interpreter on CPU,
or compiled on a GPU) equals the PyTorch reference and the dense absorbed math,
and the write survives torch.compile."""
import os
import zlib

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from mla_compile.custom_ops import PagedLatentCache  # noqa: E402
from mla_compile.custom_ops.reference import ReferenceBackend  # noqa: E402
from mla_compile.custom_ops.triton_backend import TritonBackend  # noqa: E402
from mla_compile.lowering.cache_layout import CacheLayout, choose_cache_layout, element_offset  # noqa: E402

DEVICE = torch.device("cuda" if os.environ.get("TRITON_INTERPRET") != "1" and torch.cuda.is_available() else "cpu")
R, DR, DN, DV = 32, 16, 16, 24


@pytest.fixture
def gen(request):
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def rand(*shape, gen, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).to(DEVICE, dtype)


def test_layout_choice_is_by_block_size_and_backend():
    for backend in (TritonBackend, ReferenceBackend):
        for block_size in (1, 2, 16, 64):  # both prefer NORMAL (measured: see cache_layout)
            assert choose_cache_layout(block_size, backend) is CacheLayout.NORMAL
        assert choose_cache_layout(64, backend, CacheLayout.SHUFFLE) is CacheLayout.SHUFFLE
        with pytest.raises(ValueError, match="SHUFFLE needs a multiple of 16"):
            choose_cache_layout(1, backend, CacheLayout.SHUFFLE)


class _NormalOnly:
    name, cache_layouts = "normal-only", ("normal",)


def test_layout_a_backend_cannot_read_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        choose_cache_layout(64, _NormalOnly, CacheLayout.SHUFFLE)


def test_shuffle_offsets_are_a_permutation_of_the_page():
    """Every (token, dim) of a page has its own element, and a 16-byte vector is 8
    consecutive bf16 dims of one token."""
    width, tt, vec, block = 48, 16, 8, 32
    tok = torch.arange(block)[:, None]
    d = torch.arange(width)[None, :]
    off = element_offset(tok, d, width, tt, vec)
    assert sorted(off.reshape(-1).tolist()) == list(range(block * width))
    assert (off[:, 1:8] - off[:, :1] == torch.arange(1, 8)).all()


def _fill(cache, B, lens, gen, dtype):
    """Give sequence b the pages of a shuffled block list; write its tokens."""
    bs = cache.block_size
    max_blocks = max(-(-n // bs) for n in lens)
    perm = torch.randperm(cache.data.shape[0], generator=gen)[:B * max_blocks]
    table = perm.view(B, max_blocks).to(DEVICE, torch.int32)  # non-contiguous, any order
    latents, pes = [], []
    for b, n in enumerate(lens):
        lat, pe = rand(n, R, gen=gen, dtype=dtype), rand(n, DR, gen=gen, dtype=dtype)
        t = torch.arange(n, device=DEVICE)
        cache.write(lat, pe, table[b, t // bs].long() * bs + t % bs)
        latents.append(lat)
        pes.append(pe)
    return table, torch.tensor(lens, device=DEVICE, dtype=torch.int32), latents, pes


LAYOUTS = [(1, None), (2, None), (16, None), (64, None), (16, CacheLayout.SHUFFLE), (64, CacheLayout.SHUFFLE)]


@pytest.mark.parametrize("block_size, layout", LAYOUTS)
def test_round_trip_every_block_size(block_size, layout, gen):
    cache = PagedLatentCache.allocate(3 * -(-70 // block_size) + 5, block_size, R, DR, torch.bfloat16, DEVICE,
                                      layout=layout)
    assert cache.layout is (layout or CacheLayout.NORMAL)
    lens = [37, 1, 70]
    table, seq_lens, latents, pes = _fill(cache, 3, lens, gen, torch.bfloat16)
    c, kr, valid = cache.read(table, seq_lens)
    for b, n in enumerate(lens):
        assert valid[b].sum() == n
        assert torch.equal(c[b, :n], latents[b]) and torch.equal(kr[b, :n], pes[b])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("block_size, layout", [(1, None), (16, None), (16, CacheLayout.SHUFFLE)])
@pytest.mark.parametrize("kernel", ["triton", "reference"])
def test_decode_matches_dense_absorbed_math(kernel, block_size, layout, dtype, gen):
    B, H, Sq = 3, 5, 1
    cache = PagedLatentCache.allocate(3 * -(-33 // block_size) + 5, block_size, R, DR, dtype, DEVICE,
                                      layout=layout)
    lens = [33, 1, 18]
    table, seq_lens, latents, pes = _fill(cache, B, lens, gen, dtype)
    q_nope, q_pe = rand(B, H, Sq, DN, gen=gen, dtype=dtype), rand(B, H, Sq, DR, gen=gen, dtype=dtype)
    w = rand(H * (DN + DV), R, gen=gen, dtype=dtype, scale=R ** -0.5)
    w_uk, w_uv = w.view(H, DN + DV, R).split([DN, DV], dim=1)
    out = cache.attend(q_nope, q_pe, w_uk, w_uv, 0.1352, table, seq_lens, kernel=kernel)
    for b, n in enumerate(lens):  # each sequence on its own, dense
        want = torch.ops.mla.prefill_attention(
            q_nope[b:b + 1], q_pe[b:b + 1], latents[b][None], pes[b][None], w_uk, w_uv, 0.1352,
            False, "absorbed", "reference")
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(out[b:b + 1].float(), want.float(), rtol=tol, atol=tol)


def test_write_is_kept_under_compile(gen):
    """The write is a declared mutation: compiled, nothing drops it, even unread."""
    cache = PagedLatentCache.allocate(4, 16, R, DR, torch.float32, DEVICE)
    lat, pe = rand(5, R, gen=gen), rand(5, DR, gen=gen)
    slots = torch.tensor([3, 17, 18, 40, 63], device=DEVICE)

    def step(data, lat, pe, slots):
        torch.ops.mla.cache_write(data, lat, pe, slots, cache.block_size, *cache.params)
        return lat.sum()

    torch.compile(step, backend="mla", fullgraph=True)(cache.data, lat, pe, slots)
    table = torch.arange(4, device=DEVICE, dtype=torch.int32)[None]
    c, kr, _ = cache.read(table, torch.tensor([64], device=DEVICE))
    assert torch.equal(c[0, slots], lat) and torch.equal(kr[0, slots], pe)


@pytest.mark.parametrize("bad, message", [
    (dict(num_blocks=0), "num_blocks must be a positive int"),
    (dict(block_size=2.0), "block_size must be a positive int"),
    (dict(rope_dim=3, dtype=torch.bfloat16, block_size=16, layout=CacheLayout.SHUFFLE), "multiple of 8"),
])
def test_allocate_validates(bad, message):
    args = dict(num_blocks=4, block_size=16, latent_dim=R, rope_dim=DR, dtype=torch.bfloat16, device=DEVICE)
    with pytest.raises(ValueError, match=message):
        PagedLatentCache.allocate(**{**args, **bad})


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_rope_and_cache_write(compiled, gen):
    """mla.rope_cache_write rotates q_pe and k_pe like mla.rope, caches the rotated
    k_pe with the latent, returns a new q (its input unchanged), and under
    torch.compile the write happens although nothing reads the cache in the graph."""
    from mla_compile.custom_ops.reference import rope_reference

    cache = PagedLatentCache.allocate(4, 16, R, DR, torch.float32, DEVICE)
    T = 6
    lat, k_pe, q_pe = rand(T, R, gen=gen), rand(T, DR, gen=gen), rand(T, 1, DR, gen=gen)
    ang = rand(T, DR // 2, gen=gen)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    slots = torch.tensor([5, 6, 7, 30, 31, 50], device=DEVICE)
    q_before, data_before = q_pe.clone(), cache.data.clone()
    k_rot = rope_reference(k_pe, cos, sin, False, False)

    def step(data, lat, k_pe, q_pe, cos, sin, slots):
        q_rot = torch.ops.mla.rope_cache_write(data, lat, k_pe, q_pe, cos, sin, slots, 16,
                                               *cache.params, False, False)
        return q_rot * 2

    fn = torch.compile(step, backend="mla", fullgraph=True) if compiled else step
    q_out = fn(cache.data, lat, k_pe, q_pe[:, 0], cos, sin, slots)
    assert not torch.equal(cache.data, data_before)
    table = torch.arange(4, device=DEVICE, dtype=torch.int32)[None]
    c, kr, _ = cache.read(table, torch.tensor([64], device=DEVICE))
    torch.testing.assert_close(c[0, slots], lat)
    torch.testing.assert_close(kr[0, slots], k_rot, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q_out, 2 * rope_reference(q_pe[:, 0], cos, sin, False, False), rtol=1e-5, atol=1e-5)
    assert torch.equal(q_pe, q_before)
