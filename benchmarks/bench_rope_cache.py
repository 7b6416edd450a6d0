"""Benchmark `mla.rope_cache_write` as one launch (issue 11 item 4) against the two-op
path it replaces (mla.rope on q_pe and k_pe, then mla.cache_write) and against
Inductor on the same math (RoPE + index_copy_ into the pages).

Run on a CUDA machine: `python benchmarks/bench_rope_cache.py` (mla_compile installed).
Not run by its author (no GPU in that session): the first run's numbers go to
benchmarks/RESULTS.md with device and date.

Shapes: DeepSeek-V3 dims (latent 512, rope 64, bf16), 64-token pages, NORMAL and
SHUFFLE; q_pe the rope window of a [T, H, 192] projection seen as [H, T, 64] (so that
per-token cos/sin [T, 64] broadcast to q and to k_pe [T, 64] alike), latent and k_pe
the two windows of one [T, 576] projection, slots scattered over the pages.
Implementations: "fused" (the op), "fused-direct" (the backend's launch, no op
dispatch: the floor the compiled-graph path can reach), "two-op", "inductor". The DSA
indexer's key write (`mla.indexer_rope_cache_write`: head dim 128, 64 heads, rope dims
first) is timed the same way against mla.rope + mla.indexer_cache_write and Inductor.
Correctness first (every impl's cache and q against the fused op's); then a markdown
table with do_bench and CUDA-graph times, the fraction of the copy-bandwidth floor for
the bytes moved, and ratios to two-op and inductor (also $OUT/rope_cache_bench.md).
`--check` runs the correctness part only, at small sizes, on any device (on CPU under
TRITON_INTERPRET=1).
"""
from __future__ import annotations

import os
import sys

import torch

import mla_compile.custom_ops  # noqa: F401  (registers the ops)
from mla_compile.custom_ops import PagedIndexerKeyCache, PagedLatentCache
from mla_compile.custom_ops.triton_backend import TritonBackend
from mla_compile.lowering.cache_layout import CacheLayout, slot_offsets

R, DR, D_NOPE, PAGE, DTYPE = 512, 64, 128, 64, torch.bfloat16
CASES = [(1, 16), (32, 16), (32, 128), (128, 128), (4096, 16)]  # (T tokens, H heads)
# the DSA indexer (DeepSeek-V3.2: 64 heads, head dim 128, rope dims 64 FIRST)
INDEXER_CASES = [(1, 64), (32, 64), (4096, 64)]
D_INDEX = 128


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def make(T, H, layout, device, seed, r=R, dr=DR, page=PAGE):
    g = torch.Generator(device="cpu").manual_seed(seed)
    q_proj = torch.randn(T, H, D_NOPE + dr, generator=g).to(device, DTYPE)
    kv = torch.randn(T, r + dr, generator=g).to(device, DTYPE)
    ang = torch.randn(T, dr // 2, generator=g).to(device)
    cos, sin = torch.cat([ang.cos()] * 2, -1).to(DTYPE), torch.cat([ang.sin()] * 2, -1).to(DTYPE)
    cache = PagedLatentCache.allocate(2 * -(-T // page) + 1, page, r, dr, DTYPE, device, layout=layout)
    slots = torch.randperm(cache.data.shape[0] * page, generator=g)[:T].to(device)
    return dict(cache=cache, latent=kv[:, :r], k_pe=kv[:, r:], q_pe=q_proj[..., D_NOPE:].transpose(0, 1),
                cos=cos, sin=sin, slots=slots)


def impls(c):
    cache = c["cache"]
    bs, (tt, vec) = cache.block_size, cache.params
    width = cache.latent_dim + cache.rope_dim
    offsets = slot_offsets(c["slots"], torch.arange(width, device=c["slots"].device), width, bs, tt, vec).reshape(-1)
    q_direct = torch.empty_like(c["q_pe"], memory_format=torch.preserve_format)

    def fused():
        return torch.ops.mla.rope_cache_write(cache.data, c["latent"], c["k_pe"], c["q_pe"], c["cos"], c["sin"],
                                              c["slots"], bs, tt, vec, False, False)

    def fused_direct():
        TritonBackend.rope_cache_write(c["q_pe"], c["k_pe"], c["latent"], c["cos"], c["sin"], c["slots"],
                                       cache.data, bs, tt, vec, False, False, q_direct)
        return q_direct

    def two_op():
        q_rot, k_rot = torch.ops.mla.rope([c["q_pe"], c["k_pe"]], c["cos"], c["sin"], False, False)
        torch.ops.mla.cache_write(cache.data, c["latent"], k_rot, c["slots"], bs, tt, vec)
        return q_rot

    def eager_math(data, latent, k_pe, q_pe, cos, sin, offsets):
        k_rot = k_pe * cos + rotate_half(k_pe) * sin
        data.view(-1).index_copy_(0, offsets, torch.cat([latent, k_rot], -1).reshape(-1))
        return q_pe * cos + rotate_half(q_pe) * sin

    compiled = torch.compile(eager_math, backend="inductor", dynamic=False)

    def inductor():
        return compiled(cache.data, c["latent"], c["k_pe"], c["q_pe"], c["cos"], c["sin"], offsets)

    out = {"fused": fused, "two-op": two_op, "inductor": inductor}
    if c["q_pe"].is_cuda:
        out["fused-direct"] = fused_direct
    return out


def make_indexer(T, H, layout, device, seed, d=D_INDEX, dr=DR, page=PAGE):
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(T, H, d, generator=g).to(device, DTYPE)
    k = torch.randn(T, d, generator=g).to(device, DTYPE)
    ang = torch.randn(T, dr // 2, generator=g).to(device)
    cos, sin = torch.cat([ang.cos()] * 2, -1).to(DTYPE), torch.cat([ang.sin()] * 2, -1).to(DTYPE)
    cache = PagedIndexerKeyCache.allocate(2 * -(-T // page) + 1, page, d, DTYPE, device, layout=layout)
    slots = torch.randperm(cache.data.shape[0] * page, generator=g)[:T].to(device)
    return dict(cache=cache, k=k, q_pe=q[..., :dr].transpose(0, 1), cos=cos, sin=sin, slots=slots, dr=dr)


def indexer_impls(c):
    cache, dr = c["cache"], c["dr"]
    bs, (tt, vec) = cache.block_size, cache.params
    width = cache.head_dim
    offsets = slot_offsets(c["slots"], torch.arange(width, device=c["slots"].device), width, bs, tt, vec).reshape(-1)

    def fused():
        return torch.ops.mla.indexer_rope_cache_write(cache.data, c["k"], c["q_pe"], c["cos"], c["sin"], c["slots"],
                                                      dr, bs, tt, vec, False, False)

    def two_op():
        q_rot, k_rot = torch.ops.mla.rope([c["q_pe"], c["k"][:, :dr]], c["cos"], c["sin"], False, False)
        torch.ops.mla.indexer_cache_write(cache.data, torch.cat([k_rot, c["k"][:, dr:]], -1), c["slots"], bs, tt, vec)
        return q_rot

    def eager_math(data, k, q_pe, cos, sin, offsets):
        k_rot, k_pass = k[:, :dr], k[:, dr:]
        k_rot = k_rot * cos + rotate_half(k_rot) * sin
        data.view(-1).index_copy_(0, offsets, torch.cat([k_rot, k_pass], -1).reshape(-1))
        return q_pe * cos + rotate_half(q_pe) * sin

    compiled = torch.compile(eager_math, backend="inductor", dynamic=False)

    def inductor():
        return compiled(cache.data, c["k"], c["q_pe"], c["cos"], c["sin"], offsets)

    return {"fused": fused, "two-op": two_op, "inductor": inductor}


def check(device, sizes) -> bool:
    ok = True
    for i, (T, H) in enumerate(sizes):
        for layout in (CacheLayout.NORMAL, CacheLayout.SHUFFLE):
            small = device.type == "cpu"
            c = make(T, H, layout, device, seed=100 + i, **(dict(r=32, dr=16, page=16) if small else {}))
            ci = make_indexer(T, H, layout, device, seed=200 + i, **(dict(d=32, dr=16, page=16) if small else {}))
            ok &= compare(f"T={T} H={H} {layout.value:7s}", impls(c), c)
            ok &= compare(f"T={T} H={H} {layout.value:7s} indexer", indexer_impls(ci), ci)
    print(f"correctness: {'PASS' if ok else 'FAIL'}")
    return ok


def compare(case, fns, c) -> bool:
    """Every impl's q and cache against the fused op's, each from a zeroed cache."""
    results = {}
    for name, fn in fns.items():
        c["cache"].data.zero_()
        q = fn().clone()
        results[name] = (q, c["cache"].data.clone())
    q0, d0 = results["fused"]
    ok = True
    for name, (q, d) in results.items():
        # relative to the largest value: the eager math rounds to bf16 between steps
        eq = [(a.float() - b.float()).abs().max().item() / b.float().abs().max().item() for a, b in ((q, q0), (d, d0))]
        good = max(eq) <= 1e-2 and bool(torch.isfinite(q).all())
        ok &= good
        print(f"  {case} {name:12s} rel dq {eq[0]:.1e} rel dcache {eq[1]:.1e} {'ok' if good else 'FAIL'}")
    return ok


def main():
    if "--check" in sys.argv:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        sys.exit(0 if check(device, [(3, 2), (17, 4)]) else 1)
    if not torch.cuda.is_available():
        sys.exit("bench_rope_cache.py needs a CUDA device (or --check)")
    import triton.testing

    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    if not check(device, CASES[:2]):
        sys.exit("correctness failed: no timings")
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    copy_bw = 2 * n / (triton.testing.do_bench(lambda: dst.copy_(src), rep=300, return_mode="median") * 1e-3)
    del src, dst
    print(f"copy bandwidth (read+write): {copy_bw / 1e9:.0f} GB/s")
    rows = []
    work = [("latent", T, H, layout) for T, H in CASES for layout in CacheLayout]
    work += [("indexer", T, H, layout) for T, H in INDEXER_CASES for layout in CacheLayout]
    for kind, T, H, layout in work:
        if kind == "latent":
            c = make(T, H, layout, device, seed=T * 1000 + H)
            fns = impls(c)
            # q r+w, latent and k_pe read, the page row written, cos/sin read
            moved = 2 * (2 * T * H * DR + T * (R + DR) * 2 + 2 * T * DR)
        else:
            c = make_indexer(T, H, layout, device, seed=T * 1000 + H)
            fns = indexer_impls(c)
            moved = 2 * (2 * T * H * DR + T * D_INDEX * 2 + 2 * T * DR)  # bf16: 2 bytes each
        times = {}
        for name, fn in fns.items():
            fn()
            torch.cuda.synchronize()
            times[name] = (triton.testing.do_bench(fn, rep=100, return_mode="median") * 1e3,
                           triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median") * 1e3)
        for name, (t_ev, t_cg) in times.items():
            rows.append((f"{kind} T={T} H={H} {layout.value}", name, f"{t_ev:.1f}", f"{t_cg:.1f}",
                         f"{moved / (t_cg * 1e-6) / copy_bw:.2f}",
                         f"{times['two-op'][1] / t_cg:.2f}", f"{times['inductor'][1] / t_cg:.2f}"))
    head = ("case", "impl", "do_bench us", "cudagraph us", "frac copy bw (graph)", "two-op/impl (graph)",
            "inductor/impl (graph)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    print("\n".join(lines))
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "rope_cache_bench.md"), "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
