"""DSA sparse decode over the paged latent cache (issue 14 item 1): the gather kernel
reading K chosen rows through a block table (`mla_sparse_attention(paged=...)`, what
`PagedLatentCache.attend_sparse` runs) against the same kernel over one contiguous
[B, L, 576] buffer holding the same rows, and against dense paged decode over all L.

Run on a CUDA machine: `python benchmarks/bench_paged_sparse.py` (mla_compile
installed).

bf16, DeepSeek dims (R = 512, Dr = 64), top-k K = 2048, one query per sequence,
q_lat given. Pages: 64 tokens NORMAL (the Triton backend's choice), 64 SHUFFLE (on
request) and 1 token (vLLM's DSA block size), each sequence's pages shuffled. The
indices are top-k's, so the sparse kernels run with `distinct=True` (no sort) but for
one column. Timed (GPU time under CUDA graphs):
  contiguous  mla_sparse_attention over [B, L, R] / [B, L, Dr] views
  paged-*     mla_sparse_attention(paged=...) over the cache in that layout
  sorted      paged-64 without `distinct`: the sort that merges duplicates first
  dense       mla_decode_attention over the 64-token NORMAL pages, all L keys
floor = bytes the sparse op must read (B * K * (576 * 2 + 8)) / copy bandwidth.
Each paged result is checked against the contiguous one before timing.

Environment: BENCH_CASES "BxLxH,..." (default B in 1, 32 x L in 8192, 32768 x H in
16, 128); OUT writes $OUT/paged_sparse_bench.md.
"""
from __future__ import annotations

import os

import torch

from bench_sparse import bench, copy_bandwidth  # same timing and bandwidth as the contiguous benchmark
from mla_compile.custom_ops import PagedLatentCache
from mla_compile.custom_ops.triton_decode import mla_decode_attention
from mla_compile.custom_ops.triton_sparse import mla_sparse_attention
from mla_compile.lowering.cache_layout import CacheLayout

R, DR, K, SCALE = 512, 64, 2048, 0.1352
CASES = [(B, L, H) for H in (16, 128) for L in (8192, 32768) for B in (1, 32)]
PAGES = [("paged-64", 64, CacheLayout.NORMAL), ("paged-64 SHUFFLE", 64, CacheLayout.SHUFFLE),
         ("paged-1", 1, CacheLayout.NORMAL)]


def paged(c, kr, page, layout, g):
    """The rows of c / kr in a fresh cache on shuffled pages: (args for paged=, cache)."""
    B, L, _ = c.shape
    n = B * L // page
    cache = PagedLatentCache.allocate(n, page, R, DR, torch.bfloat16, "cuda", layout=layout)
    table = torch.randperm(n, device="cuda", generator=g).view(B, L // page).to(torch.int32)
    t = torch.arange(L, device="cuda")
    for b in range(B):
        cache.write(c[b], kr[b], table[b, t // page].long() * page + t % page)
    lens = torch.full((B,), L, device="cuda", dtype=torch.int32)
    return (cache.data, table, lens, page, cache.params)


def row(B, L, H, bw) -> str:
    g = torch.Generator(device="cuda").manual_seed(B * L + H)
    buf = torch.randn(B, L, R + DR, device="cuda", generator=g).to(torch.bfloat16)
    c, kr = buf[..., :R], buf[..., R:]
    q = (torch.randn(B, H, 1, R + DR, device="cuda", generator=g) * 0.1).to(torch.bfloat16)
    q_lat, q_pe = q[..., :R], q[..., R:]
    idx = torch.rand(B, 1, L, device="cuda", generator=g).topk(K, -1).indices
    want = mla_sparse_attention(q_lat, q_pe, c, kr, idx, SCALE)
    times = [bench(lambda: mla_sparse_attention(q_lat, q_pe, c, kr, idx, SCALE, distinct=True))]
    dense_pages = None
    for _, page, layout in PAGES:
        pg = paged(c, kr, page, layout, g)
        for distinct in (True, False) if dense_pages is None else (True,):
            got = mla_sparse_attention(q_lat, q_pe, None, None, idx, SCALE, paged=pg, distinct=distinct)
            err = ((got.float() - want.float()).norm() / want.float().norm()).item()
            assert err < 1e-2, f"B={B} L={L} H={H} page {page} {layout}: rel. error {err:.2e}"
        times.append(bench(lambda: mla_sparse_attention(q_lat, q_pe, None, None, idx, SCALE, paged=pg,
                                                        distinct=True)))
        dense_pages = dense_pages or pg
    times.append(bench(lambda: mla_sparse_attention(q_lat, q_pe, None, None, idx, SCALE, paged=dense_pages)))
    times.append(bench(lambda: mla_decode_attention(q_lat, q_pe, None, None, SCALE, False, paged=dense_pages)))
    floor = B * K * ((R + DR) * 2 + 8) / bw * 1e6
    return (f"| {B} | {L} | {H} | {floor:.1f} | " + " | ".join(f"{t:.1f}" for t in times)
            + f" | {floor / times[1]:.2f} |")


def main() -> None:
    spec = os.environ.get("BENCH_CASES")
    cases = [tuple(int(v) for v in s.split("x")) for s in spec.split(",")] if spec else CASES
    bw = copy_bandwidth()
    head = f"{torch.cuda.get_device_name()}; torch {torch.__version__}; copy {bw / 1e9:.0f} GB/s; K = {K}; bf16"
    print(head, flush=True)
    names = ["contiguous us", *(f"{n} us" for n, _, _ in PAGES), "paged-64 sorted us", "dense paged-64 us"]
    rows = ["| B | L | H | floor us | " + " | ".join(names) + " | paged-64 of floor |",
            "|---" * (len(names) + 5) + "|"]
    for B, L, H in cases:
        rows.append(row(B, L, H, bw))
        print(rows[-1], flush=True)
        torch.cuda.empty_cache()
    table = "\n".join(rows)
    print(f"\n{head}\n{table}")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "paged_sparse_bench.md"), "w") as f:
            f.write(f"{head}\n\n{table}\n")


if __name__ == "__main__":
    main()
