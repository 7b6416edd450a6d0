"""`torch.ops.mla.paged_sparse_decode` / `PagedLatentCache.attend_sparse`: DSA sparse
attention over the paged latent cache equals `mla.sparse_attention` over the rows
`PagedLatentCache.read` returns, for every block size (NORMAL and SHUFFLE pages),
ragged lengths, shuffled block tables and index patterns (duplicates, -1 padding,
top-k past the length, an all-padding row); the Triton kernel (interpreted on CPU)
against the reference; the range checks; opcheck."""
import os
import zlib

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from kernel_device import kernel_test_device  # noqa: E402
from mla_compile.custom_ops import PagedLatentCache  # noqa: E402
from mla_compile.custom_ops.triton_sparse import _sparse_split, mla_sparse_attention  # noqa: E402
from mla_compile.lowering.cache_layout import CacheLayout  # noqa: E402

DEVICE = kernel_test_device(_sparse_split)
needs_kernel = pytest.mark.skipif(DEVICE is None, reason="no Triton device (GPU or TRITON_INTERPRET=1)")
ON = DEVICE or torch.device("cpu")
R, DR, DN, DV, H, SQ, K = 32, 16, 16, 24, 4, 2, 8
LENS = [37, 1, 20]  # ragged; sequence 1 is shorter than top-k
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}
op = torch.ops.mla.paged_sparse_decode


@pytest.fixture
def gen(request):
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def rand(*shape, gen, dtype, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).to(ON, dtype)


def setup(block_size, layout, dtype, gen, lens=LENS):
    """A cache holding `lens` tokens per sequence on shuffled pages (the table a
    transposed view: rows not contiguous), queries, weights and indices: random
    positions, a duplicate, padding, and row (1, 1) all padding."""
    B = len(lens)
    max_blocks = max(-(-n // block_size) for n in lens) + 1  # one unused entry past the end
    cache = PagedLatentCache.allocate(B * max_blocks + 3, block_size, R, DR, dtype, ON, layout=layout)
    perm = torch.randperm(cache.data.shape[0], generator=gen)[:B * max_blocks]
    table = perm.view(max_blocks, B).t().to(ON, torch.int32)
    for b, n in enumerate(lens):
        t = torch.arange(n, device=ON)
        cache.write(rand(n, R, gen=gen, dtype=dtype), rand(n, DR, gen=gen, dtype=dtype),
                    table[b, t // block_size].long() * block_size + t % block_size)
    idx = torch.stack([torch.randint(0, max(n, 1), (SQ, K), generator=gen) for n in lens])
    idx[torch.tensor(lens) == 0] = -1                               # an empty sequence: padding only
    idx[:, :, 1] = idx[:, :, 0]                                     # a duplicate
    idx[:, :, 2:4] = -1                                             # padding
    idx[1, 1] = -1                                                  # nothing chosen
    w = rand(H * (DN + DV), R, gen=gen, dtype=dtype, scale=R ** -0.5)
    w_uk, w_uv = w.view(H, DN + DV, R).split([DN, DV], dim=1)
    q_nope, q_pe = rand(B, H, SQ, DN, gen=gen, dtype=dtype), rand(B, H, SQ, DR, gen=gen, dtype=dtype)
    return cache, table, torch.tensor(lens, device=ON), q_nope, q_pe, w_uk, w_uv, idx.to(ON)


def contiguous_op(cache, table, lens, q_nope, q_pe, w_uk, w_uv, idx, scale, zero):
    """mla.sparse_attention over the rows cache.read returns, one (sequence, query) at a
    time with its padding dropped (K = 0 for an all-padding row: the op's empty row)."""
    c, kr, _ = cache.read(table, lens)
    out = torch.empty(*q_nope.shape[:3], DV, dtype=q_nope.dtype, device=q_nope.device)
    for b, n in enumerate(lens.tolist()):
        for q in range(q_nope.shape[2]):
            keep = idx[b, q][idx[b, q] >= 0]
            out[b, :, q:q + 1] = torch.ops.mla.sparse_attention(
                q_nope[b:b + 1, :, q:q + 1], q_pe[b:b + 1, :, q:q + 1], c[b:b + 1, :n], kr[b:b + 1, :n],
                w_uk, w_uv, keep.view(1, 1, -1), scale, "reference", None, zero)[0]
    return out


def assert_same(got, want, dtype):
    assert torch.equal(got.isnan(), want.isnan())
    torch.testing.assert_close(got.nan_to_num(7.0), want.nan_to_num(7.0), rtol=TOL[dtype], atol=TOL[dtype])


LAYOUTS = [(1, None), (2, None), (16, None), (64, None), (16, CacheLayout.SHUFFLE), (64, CacheLayout.SHUFFLE)]


@pytest.mark.parametrize("block_size, layout", LAYOUTS)
def test_reference_is_sparse_attention_over_the_read_rows(block_size, layout, gen):
    cache, table, lens, q_nope, q_pe, w_uk, w_uv, idx = setup(block_size, layout, torch.float32, gen)
    assert cache.layout is (layout or CacheLayout.NORMAL)
    for zero in (False, True):
        want = contiguous_op(cache, table, lens, q_nope, q_pe, w_uk, w_uv, idx, 0.17, zero)
        assert bool(want[1, :, 1].isnan().all()) != zero and bool((want[1, :, 1] == 0).all()) == zero
        got = cache.attend_sparse(q_nope, q_pe, w_uk, w_uv, 0.17, table, lens, idx, "reference", zero)
        assert_same(got, want, torch.float32)


@needs_kernel
@pytest.mark.parametrize("block_size, layout, dtype", [*((b, lay, torch.float32) for b, lay in LAYOUTS),
                                                       (1, None, torch.bfloat16),
                                                       (16, CacheLayout.SHUFFLE, torch.bfloat16)],
                         ids=lambda v: str(v).replace("torch.", "").replace("CacheLayout.", ""))
def test_kernel_matches_reference_and_contiguous_op(block_size, layout, dtype, gen):
    """bf16 SHUFFLE pages have 8-element vectors (fp32: 4): another address pattern."""
    cache, table, lens, q_nope, q_pe, w_uk, w_uv, idx = setup(block_size, layout, dtype, gen)
    for zero in (False, True):
        got = cache.attend_sparse(q_nope, q_pe, w_uk, w_uv, 0.17, table, lens, idx, "triton", zero)
        assert got.is_contiguous()
        assert_same(got, cache.attend_sparse(q_nope, q_pe, w_uk, w_uv, 0.17, table, lens, idx, "reference", zero),
                    dtype)
        assert_same(got, contiguous_op(cache, table, lens, q_nope, q_pe, w_uk, w_uv, idx, 0.17, zero), dtype)


@needs_kernel
def test_kernel_splits_duplicates_and_long_topk(gen):
    """Top-k 40 over 20 and 5 tokens (many duplicates and padding, straddling split
    bounds) and over an empty sequence whose table row is all -1 (a batch's padding
    slot: never read), split 1, 3 and 5 ways over 16-token SHUFFLE pages: each merge
    equals the reference, the empty sequence's rows 0 (zero_empty_rows)."""
    cache, table, lens, q_nope, q_pe, w_uk, w_uv, _ = setup(16, CacheLayout.SHUFFLE, torch.float32, gen,
                                                             lens=[20, 5, 0])
    table[2] = -1
    idx = torch.stack([torch.randint(-1, max(n, 0), (SQ, 40), generator=gen) for n in (20, 5, 0)]).to(ON)
    want = cache.attend_sparse(q_nope, q_pe, w_uk, w_uv, 0.3, table, lens, idx, "reference", True)
    assert bool((want[2] == 0).all()) and not bool((want[:2] == 0).any())
    q_lat = torch.einsum("bhqd,hdr->bhqr", q_nope, w_uk)
    paged = (cache.data, table.contiguous(), lens.to(torch.int32), 16, cache.params)
    for splits in (1, 3, 5):
        o_lat = mla_sparse_attention(q_lat, q_pe, None, None, idx, 0.3, paged=paged, splits=splits, block_n=16,
                                     zero_empty_rows=True)
        torch.testing.assert_close(torch.einsum("bhqr,hvr->bhqv", o_lat, w_uv), want, rtol=2e-5, atol=2e-5)


def _distinct_indices(lens, k, gen):
    """Per (sequence, query): distinct positions of the sequence (top-k's), -1 where the
    sequence has fewer than k, shuffled so padding sits anywhere in the row."""
    rows = []
    for n in lens:
        for _ in range(SQ):
            row = torch.cat([torch.randperm(n, generator=gen)[:k], torch.full((max(k - n, 0),), -1)])
            rows.append(row[torch.randperm(k, generator=gen)])
    return torch.stack(rows).view(len(lens), SQ, k).to(ON)


@needs_kernel
def test_distinct_indices_skip_the_sort_and_equal_the_reference(gen):
    """`distinct=True` (top-k's indices, -1 padding repeated): the kernel reads them
    unsorted and equals the reference and the sorting path."""
    cache, table, lens, q_nope, q_pe, w_uk, w_uv, _ = setup(16, CacheLayout.SHUFFLE, torch.float32, gen)
    idx = _distinct_indices(LENS, K, gen)
    want = cache.attend_sparse(q_nope, q_pe, w_uk, w_uv, 0.17, table, lens, idx, "reference")
    got = cache.attend_sparse(q_nope, q_pe, w_uk, w_uv, 0.17, table, lens, idx, "triton", distinct=True)
    assert_same(got, want, torch.float32)
    assert_same(got, cache.attend_sparse(q_nope, q_pe, w_uk, w_uv, 0.17, table, lens, idx, "triton"),
                torch.float32)


def test_distinct_claim_is_checked_and_padding_may_repeat(gen):
    cache, table, lens, q_nope, q_pe, w_uk, w_uv, _ = setup(2, None, torch.float32, gen)
    idx = _distinct_indices(LENS, K, gen)
    assert bool((idx[1] == -1).sum(-1).ge(2).all())  # sequence 1 (one token) pads each row
    cache.attend_sparse(q_nope, q_pe, w_uk, w_uv, 0.3, table, lens, idx, "reference", distinct=True)
    idx[0, 1, 5] = idx[0, 1, 2]
    with pytest.raises(ValueError, match=r"paged_sparse_decode: distinct=True, but indices\[0, 1\] repeats"):
        cache.attend_sparse(q_nope, q_pe, w_uk, w_uv, 0.3, table, lens, idx, "reference", distinct=True)


def _args(gen):
    cache, table, lens, q_nope, q_pe, w_uk, w_uv, idx = setup(2, None, torch.float32, gen)
    return [q_nope, q_pe, cache.data, table, lens, w_uk, w_uv, idx, 0.3, 2, *cache.params]


@pytest.mark.parametrize("bad, message", [
    (lambda a: a[7].__setitem__((2, 0, 5), 20), r"indices\[2, 0, 5\] = 20 is outside \[0, seq_lens\[b\] = 20\)"),
    (lambda a: a[7].__setitem__((1, 1, 0), 1), r"indices\[1, 1, 0\] = 1 is outside \[0, seq_lens\[b\] = 1\)"),
    (lambda a: a[7].__setitem__((0, 1, 7), -2), r"indices\[0, 1, 7\] = -2 is outside .* not -1 \(padding\)"),
    (lambda a: a[3].__setitem__((0, 3), 99), r"block_table\[0, 3\] must be a block of the cache"),
    (lambda a: a[4].__setitem__(2, 100), r"seq_lens\[2\] must be in \[0, block_table.shape\[1\] \* block_size\]"),
    (lambda a: a.__setitem__(7, a[7][:, :1]), r"indices must be \[B, Sq, K\] = \(3, 2, \*\)"),
    (lambda a: a.__setitem__(7, a[7].float()), "indices dtype must be one of"),
    (lambda a: a.__setitem__(12, "cuda"), "kernel must be one of"),
])
def test_argument_checks(bad, message, gen):
    """Eager: an index past its sequence (not just past the capacity), a negative index
    other than -1, a used table entry outside the cache, a length past the capacity."""
    args = _args(gen)
    args.append("reference")
    bad(args)
    with pytest.raises(ValueError, match=message):
        op(*args)


def test_padding_table_entries_are_not_checked(gen):
    """Entries past a sequence's used blocks are never read: -1 there is fine."""
    args = _args(gen)
    args[3][:, -1] = -1
    op(*args, "reference")


def test_cache_method_checks_widths(gen):
    cache, table, lens, q_nope, q_pe, w_uk, w_uv, idx = setup(2, None, torch.float32, gen)
    with pytest.raises(ValueError, match="q_pe last dim must be the cache's rope_dim"):
        cache.attend_sparse(q_nope, q_pe[..., :4], w_uk, w_uv, 0.3, table, lens, idx)


def test_opcheck(gen):
    args = _args(gen)
    torch.library.opcheck(op.default, (*args, "reference", True))
    args[7][1, 1, 0] = 0  # no empty row: opcheck's output comparison takes NaN != NaN
    if DEVICE is not None and DEVICE.type == "cpu":
        torch.library.opcheck(op.default, (*args, "triton", False))


def test_compiled_equals_eager(gen):
    """Under torch.compile the op is opaque (its fake impl traces; aot_eager: the
    graph passes never touch this op, and Inductor's codegen would only cost time)."""
    cache, table, lens, q_nope, q_pe, w_uk, w_uv, idx = setup(16, None, torch.float32, gen)

    def step(q_nope, q_pe, table, lens, idx):
        return cache.attend_sparse(q_nope, q_pe * 2, w_uk, w_uv, 0.2, table, lens, idx, zero_empty_rows=True)

    want = step(q_nope, q_pe, table, lens, idx)
    got = torch.compile(step, backend="aot_eager", fullgraph=True)(q_nope, q_pe, table, lens, idx)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_compiled_call_is_inlined_on_cpu(gen, monkeypatch):
    """User code calling the op under torch.compile(backend="mla"): lowering traces its
    computation into the graph (what runs on CUDA; opened here on CPU with the
    reference kernel), no mla op is left, and the numbers equal the eager op."""
    import importlib

    inline_launches = importlib.import_module("mla_compile.passes.inline_launches")
    monkeypatch.setattr(inline_launches, "inductor_launches", lambda device, kernel: True)
    cache, table, lens, q_nope, q_pe, w_uk, w_uv, idx = setup(16, CacheLayout.SHUFFLE, torch.float32, gen)
    block_size, (tt, vec) = 16, cache.params

    def step(q_nope, q_pe, data, table, lens, idx):
        return op(q_nope, q_pe, data, table, lens, w_uk, w_uv, idx, 0.17, block_size, tt, vec, "reference", True) * 2

    args = (q_nope, q_pe, cache.data, table, lens, idx)
    reports = []
    torch._dynamo.reset()
    compiled = torch.compile(step, backend="mla", options={"report": reports.append, "kernel": "reference"})
    assert_same(compiled(*args), step(*args), torch.float32)
    assert reports[-1].counts().get("launch.inductor") == 1, reports[-1].format()
    assert "mla." not in reports[-1].final_graph, reports[-1].final_graph
