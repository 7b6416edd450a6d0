"""The DSA indexer's paged key cache (issue 14 item 5, seed 003a): its layout comes
from `lowering.cache_layout` exactly like the latent cache's (block_size 1 -> NORMAL),
the writer and the reader agree for block sizes 1/2/16/64 in both layouts, the pages
hold what the layout's name says (checked against an independent construction, not
only writer against reader), the keys transformers' DSA code caches round-trip, and
the write survives torch.compile."""
import os
import zlib

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from mla_compile.custom_ops import PagedIndexerKeyCache, PagedLatentCache  # noqa: E402
from mla_compile.custom_ops.reference import ReferenceBackend  # noqa: E402
from mla_compile.custom_ops.triton_backend import TritonBackend  # noqa: E402
from mla_compile.lowering.cache_layout import SHUFFLE_TOKENS, CacheLayout, choose_cache_layout  # noqa: E402

DEVICE = torch.device("cuda" if os.environ.get("TRITON_INTERPRET") != "1" and torch.cuda.is_available() else "cpu")
D = 128  # index_head_dim of the released DSA models


@pytest.fixture
def gen(request):
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


class _ShufflePreferred:  # an aiter-like backend: SHUFFLE where a page allows it
    name, cache_layouts = "shuffle-first", ("shuffle", "normal")


@pytest.mark.parametrize("block_size", [1, 2, 16, 64])
def test_layout_is_the_latent_caches_choice(block_size):
    """One function decides both caches' layouts: the indexer's equals the latent's for
    every block size and backend, and block_size 1 is NORMAL even for a backend that
    prefers SHUFFLE (seed 003a)."""
    for backend in (TritonBackend, ReferenceBackend, _ShufflePreferred):
        want = choose_cache_layout(block_size, backend)
        if block_size % SHUFFLE_TOKENS:
            assert want is CacheLayout.NORMAL
    assert choose_cache_layout(block_size, _ShufflePreferred) is (
        CacheLayout.SHUFFLE if block_size % SHUFFLE_TOKENS == 0 else CacheLayout.NORMAL)
    for kernel in ("reference", "auto"):
        idx = PagedIndexerKeyCache.allocate(2, block_size, D, torch.bfloat16, DEVICE, kernel=kernel)
        lat = PagedLatentCache.allocate(2, block_size, 32, 16, torch.bfloat16, DEVICE, kernel=kernel)
        assert idx.layout is lat.layout
    with pytest.raises(ValueError, match="SHUFFLE needs a multiple of 16"):
        PagedIndexerKeyCache.allocate(2, 1, D, torch.bfloat16, DEVICE, layout=CacheLayout.SHUFFLE)


def _expected_page(keys: torch.Tensor, layout: CacheLayout) -> torch.Tensor:
    """A page's contents built from the layout's definition, independently of the
    writer: NORMAL token-major; SHUFFLE [block/16, D*bytes/16, 16 tokens, 16 bytes]."""
    if layout is CacheLayout.NORMAL:
        return keys.reshape(-1)
    block, width = keys.shape
    vec = 16 // keys.element_size()
    return keys.view(block // 16, 16, width // vec, vec).permute(0, 2, 1, 3).reshape(-1)


LAYOUTS = [(1, CacheLayout.NORMAL), (2, CacheLayout.NORMAL), (16, CacheLayout.NORMAL), (64, CacheLayout.NORMAL),
           (16, CacheLayout.SHUFFLE), (64, CacheLayout.SHUFFLE)]


@pytest.mark.parametrize("block_size, layout", LAYOUTS, ids=lambda v: getattr(v, "value", v))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_round_trip_every_block_size(block_size, layout, dtype, gen):
    lens = [37, 1, 70]
    max_blocks = -(-max(lens) // block_size)
    cache = PagedIndexerKeyCache.allocate(3 * max_blocks + 2, block_size, D, dtype, DEVICE, layout=layout)
    assert cache.layout is layout
    table = torch.randperm(cache.data.shape[0], generator=gen)[:3 * max_blocks].view(3, max_blocks)
    table = table.to(DEVICE, torch.int32)  # pages in any order
    keys = []
    for b, n in enumerate(lens):
        k = torch.randn(n, D, generator=gen).to(DEVICE, dtype)
        t = torch.arange(n, device=DEVICE)
        cache.write(k, table[b, t // block_size].long() * block_size + t % block_size)
        keys.append(k)
    got, valid = cache.read(table, torch.tensor(lens, device=DEVICE, dtype=torch.int32))
    for b, n in enumerate(lens):
        assert valid[b].sum() == n and torch.equal(got[b, :n], keys[b])
    # the physical page: sequence 2's first page is full (70 >= block_size)
    page = cache.data[table[2, 0].long()]
    assert torch.equal(page, _expected_page(keys[2][:block_size], layout))


def test_transformers_dsa_keys_round_trip(gen):
    """What transformers 5.23's deepseek_v32 caches for its indexer (one key per token,
    [B, T, index_head_dim], rotated, in the model's dtype) fits this cache as is."""
    transformers = pytest.importorskip("transformers")
    config = transformers.DeepseekV32Config(
        vocab_size=64, hidden_size=32, intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, kv_lora_rank=16, q_lora_rank=16, qk_nope_head_dim=8,
        qk_rope_head_dim=8, v_head_dim=8, n_routed_experts=2, num_experts_per_tok=1, n_group=1, topk_group=1,
        max_position_embeddings=32, index_topk=4, index_head_dim=16, index_n_heads=2)
    torch.manual_seed(0)
    model = transformers.DeepseekV32ForCausalLM(config).eval()
    ids = torch.randint(0, 64, (2, 5), generator=gen)
    with torch.no_grad():
        stored = model(ids, use_cache=True).past_key_values.layers[0].indexer_keys  # [B, T, D]
    B, T, Di = stored.shape
    assert (B, T, Di) == (2, 5, config.index_head_dim)
    cache = PagedIndexerKeyCache.allocate(B * 2, 4, Di, stored.dtype, "cpu")
    table = torch.tensor([[3, 0], [1, 2]], dtype=torch.int32)
    t = torch.arange(T)
    for b in range(B):
        cache.write(stored[b], table[b, t // 4].long() * 4 + t % 4)
    got, valid = cache.read(table, torch.tensor([T, T]))
    assert torch.equal(got[:, :T], stored) and valid[:, :T].all()


def test_write_is_kept_under_compile(gen):
    cache = PagedIndexerKeyCache.allocate(2, 16, D, torch.float32, DEVICE)
    k = torch.randn(3, D, generator=gen).to(DEVICE)
    slots = torch.tensor([2, 17, 31], device=DEVICE)

    def step(data, k, slots):
        torch.ops.mla.indexer_cache_write(data, k, slots, cache.block_size, *cache.params)
        return k.sum()

    torch.compile(step, backend="mla", fullgraph=True)(cache.data, k, slots)
    got, _ = cache.read(torch.tensor([[0, 1]], device=DEVICE, dtype=torch.int32), torch.tensor([32], device=DEVICE))
    assert torch.equal(got[0, slots], k)


@pytest.mark.parametrize("bad, message", [
    (dict(k=lambda k: k[:, :64]), "k last dim must be the cache's head_dim = 128"),
    (dict(k=lambda k: k.double()), "k dtype torch.float64 differs from the cache's"),
    (dict(slots=lambda s: s + 100), r"slots\[.\] must be in \[0, num_blocks \* block_size\) = \[0, 32\)"),
    (dict(slots=lambda s: s[:2]), "slots must be"),
])
def test_write_validates(bad, message, gen):
    cache = PagedIndexerKeyCache.allocate(2, 16, D, torch.float32, DEVICE)
    args = dict(k=torch.randn(3, D, generator=gen).to(DEVICE), slots=torch.tensor([0, 5, 9], device=DEVICE))
    args = {name: bad.get(name, lambda v: v)(v) for name, v in args.items()}
    with pytest.raises(ValueError, match=message):
        cache.write(**args)


def test_allocate_validates():
    with pytest.raises(ValueError, match="head_dim must be a positive int"):
        PagedIndexerKeyCache.allocate(2, 16, 0, torch.bfloat16, DEVICE)
    with pytest.raises(ValueError, match="multiple of 8"):
        PagedIndexerKeyCache.allocate(2, 16, 12, torch.bfloat16, DEVICE, layout=CacheLayout.SHUFFLE)
