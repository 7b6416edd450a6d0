"""MLA decode attention (absorbed form) over a contiguous latent cache: the split-KV
Triton kernel against the bandwidth floor and against Inductor, in one run.

Run on a CUDA machine: `python benchmarks/bench_decode.py` (mla_compile installed).
One query token per sequence, bf16, DeepSeek dims (latent R = 512, rope Dr = 64): the
cache is one [B, L, 576] buffer whose first 512 columns are the latent and the last 64
the rotated k_pe, q_lat = q_nope @ w_uk is given ([B, H, 1, 512]). Timed:
  mla       mla_decode_attention (split kernel + combine)
  inductor  the same absorbed math (two matmuls for the scores, fp32 softmax, matmul with
            the latent) through torch.compile (dynamic shapes, one compile)
  max-autotune  the same through torch.compile(mode="max-autotune-no-cudagraphs",
            dynamic=False): one (slow) compile per shape, so only on some cases
floor = cache bytes (B * L * 576 * 2) / measured device-to-device copy bandwidth;
compute floor = FLOPs (B * H * L * (2 * 576 + 2 * 512): scores, then P @ latent) /
measured bf16 matmul throughput (8192^3 torch.matmul); "of max(floor)" = the larger
floor / mla time. Times are GPU times under CUDA graphs (decode runs captured:
mode="reduce-overhead"). `paged-64`: the same keys in a `PagedLatentCache` of 64-token
pages (the layout lowering chooses: NORMAL for Triton; pages in shuffled order), checked
against the dense result; `paged-64 (SHUFFLE)`: the same with SHUFFLE pages (16-token
tiles of 16-byte vectors), the layout the Triton backend does not choose, timed for
the comparison.
Prints correctness (vs an fp32 PyTorch statement), then a markdown table.

Environment:
  OUT                   write $OUT/decode_bench.md (the table) and $OUT/decode_roofline.png
                        (every case's mla, inductor and max-autotune point on the roofline
                        of the measured bandwidth and matmul throughput; plots.py, matplotlib)
  BENCH_CASES           "BxLxH,..." cases to run, e.g. "1x32768x16,32x4096x128" (default:
                        B in 1, 32, 64, 128 x L in 4096, 8192, 32768 x H in 8, 16, 128)
  BENCH_AUTOTUNE_CASES  "BxLxH,...", "all" or "none": the cases (among those run) also
                        timed with max-autotune, "-" elsewhere (default: B in 1, 32, 128,
                        L = 8192, H in 16, 128)
"""
from __future__ import annotations

import os
import time

import torch
import torch._dynamo
import triton.testing
import plots  # benchmarks/ is on sys.path when run as a script

from mla_compile.custom_ops import PagedLatentCache
from mla_compile.custom_ops.triton_decode import mla_decode_attention
from mla_compile.lowering.cache_layout import CacheLayout

R, DR = 512, 64
SCALE = 0.1352
CASES = [(B, L, H) for H in (8, 16, 128) for L in (4096, 8192, 32768) for B in (1, 32, 64, 128)]
AUTOTUNE_CASES = [(B, 8192, H) for H in (16, 128) for B in (1, 32, 128)]


def parse_cases(spec: str) -> list[tuple[int, int, int]]:
    """"1x32768x16,32x4096x128" -> [(1, 32768, 16), (32, 4096, 128)], as (B, L, H)."""
    cases = []
    for item in filter(None, spec.replace(" ", "").lower().split(",")):
        parts = item.split("x")
        if len(parts) != 3:
            raise ValueError(f"case {item!r} is not BxLxH")
        cases.append(tuple(int(v) for v in parts))
    return cases


def selected_cases(env=os.environ) -> tuple[list[tuple[int, int, int]], set[tuple[int, int, int]]]:
    """(cases to run, those of them also timed with max-autotune) from the environment."""
    cases = parse_cases(env["BENCH_CASES"]) if env.get("BENCH_CASES") else CASES
    spec = env.get("BENCH_AUTOTUNE_CASES", "default").strip().lower()
    named = {"default": AUTOTUNE_CASES, "all": cases, "none": [], "": []}
    autotune = set(named[spec] if spec in named else parse_cases(spec))
    return cases, autotune & set(cases)


def decode_flops(B: int, L: int, H: int) -> int:
    """Absorbed decode, per (b, h, key): q . [latent | k_pe] is 2 (R + DR), p * latent 2 R."""
    return B * H * L * (2 * (R + DR) + 2 * R)


def cache_bytes(B: int, L: int) -> int:
    return B * L * (R + DR) * 2


def absorbed(q_lat, q_pe, c, kr):
    s = (torch.einsum("bhqr,blr->bhql", q_lat, c) + torch.einsum("bhqd,bld->bhql", q_pe, kr)) * SCALE
    p = torch.softmax(s.float(), dim=-1).to(q_lat.dtype)
    return torch.einsum("bhql,blr->bhqr", p, c)


def paged_time(c, kr, q_lat, q_pe, dense_out, page=64, layout=None) -> float:
    """The same keys in a 64-token-page cache (`layout`; None: lowering's, NORMAL), pages in a shuffled order."""
    B, L, _ = c.shape
    cache = PagedLatentCache.allocate(B * L // page, page, R, DR, c.dtype, c.device, layout=layout)
    table = torch.randperm(B * L // page, device=c.device).view(B, L // page).int()
    t = torch.arange(L, device=c.device)
    for b in range(B):
        cache.write(c[b], kr[b], table[b, t // page].long() * page + t % page)
    seq_lens = torch.full((B,), L, device=c.device, dtype=torch.int32)
    tt_vec = cache.params
    run = lambda: mla_decode_attention(q_lat, q_pe, None, None, SCALE, False,  # noqa: E731
                                       paged=(cache.data, table, seq_lens, page, tt_vec))
    err = ((run().float() - dense_out.float()).norm() / dense_out.float().norm()).item()
    assert err < 1e-2, f"paged vs dense rel. error {err:.2e}"
    return triton.testing.do_bench_cudagraph(run, rep=50) * 1e3


def copy_bandwidth() -> float:
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = triton.testing.do_bench(lambda: y.copy_(x), warmup=10, rep=50)
    return 2 * x.numel() / (ms * 1e-3)


def matmul_peak(n: int = 8192) -> float:
    """Dense bf16 torch.matmul FLOP/s at n x n x n: the compute roof."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn_like(a)
    ms = triton.testing.do_bench(lambda: torch.matmul(a, b), warmup=25, rep=100)
    return 2 * n**3 / (ms * 1e-3)


def main() -> None:
    cases, autotune_cases = selected_cases()
    device = torch.cuda.get_device_name()
    bw, peak = copy_bandwidth(), matmul_peak()
    roofs = f"copy bandwidth {bw / 1e9:.0f} GB/s, bf16 matmul {peak / 1e12:.0f} TFLOP/s"
    print(f"device: {device}; torch {torch.__version__}; {roofs}")
    print(f"max-autotune on: {sorted(autotune_cases) or 'none'}")
    inductor = torch.compile(absorbed, dynamic=True)
    # dynamic=False compiles once per shape; those entries sit on absorbed's code object
    # beside the dynamic compile's few, so raise the limit (default 8), and fail rather
    # than silently fall back to eager when it is hit anyway.
    cfg = torch._dynamo.config
    limit = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, limit, max(getattr(cfg, limit), 2 * len(autotune_cases) + 8))
    if hasattr(cfg, "fail_on_recompile_limit_hit"):
        cfg.fail_on_recompile_limit_hit = True
    autotuned = torch.compile(absorbed, mode="max-autotune-no-cudagraphs", dynamic=False)
    rows = ["| B | L | H | mla us | floor us | compute floor us | of floor | of max(floor) "
            "| inductor us | inductor/mla | max-autotune us | autotune/mla | rel. error "
            "| paged-64 (NORMAL) us | of floor | paged-64 (SHUFFLE) us | of floor |",
            "|---" * 17 + "|"]
    points = []  # (label, FLOP/byte, FLOP/s, series) for the roofline plot
    for B, L, H in cases:
        g = torch.Generator(device="cuda").manual_seed(B * L + H)
        cache = torch.randn(B, L, R + DR, device="cuda", generator=g).to(torch.bfloat16)
        c, kr = cache[..., :R], cache[..., R:]
        q = torch.randn(B, H, 1, R + DR, device="cuda", generator=g).to(torch.bfloat16) * 0.1
        q_lat, q_pe = q[..., :R], q[..., R:]
        out = mla_decode_attention(q_lat, q_pe, c, kr, SCALE, False)
        ref = absorbed(q_lat.float(), q_pe.float(), c.float(), kr.float())
        rel_err = lambda x: ((x.float() - ref).norm() / ref.norm()).item()  # noqa: E731
        err = rel_err(out)
        assert err < 2e-2, f"B={B} L={L} H={H}: rel. error {err:.2e}"
        inductor(q_lat, q_pe, c, kr)  # compile outside the graph capture
        t_mla = triton.testing.do_bench_cudagraph(
            lambda: mla_decode_attention(q_lat, q_pe, c, kr, SCALE, False), rep=50) * 1e3
        t_ind = triton.testing.do_bench_cudagraph(lambda: inductor(q_lat, q_pe, c, kr), rep=50) * 1e3
        t_at = None
        if (B, L, H) in autotune_cases:
            t0 = time.perf_counter()
            err_at = rel_err(autotuned(q_lat, q_pe, c, kr))  # compiles this shape, once
            print(f"max-autotune compile B={B} L={L} H={H}: {time.perf_counter() - t0:.0f} s", flush=True)
            assert err_at < 2e-2, f"B={B} L={L} H={H}: max-autotune rel. error {err_at:.2e}"
            t_at = triton.testing.do_bench_cudagraph(lambda: autotuned(q_lat, q_pe, c, kr), rep=50) * 1e3
        floor = cache_bytes(B, L) / bw * 1e6
        floor_c = decode_flops(B, L, H) / peak * 1e6
        t_paged = paged_time(c, kr, q_lat, q_pe, out)
        t_shuffle = paged_time(c, kr, q_lat, q_pe, out, layout=CacheLayout.SHUFFLE)
        at = f"{t_at:.1f} | {t_at / t_mla:.2f}" if t_at else "- | -"
        rows.append(f"| {B} | {L} | {H} | {t_mla:.1f} | {floor:.1f} | {floor_c:.1f} | {floor / t_mla:.2f} | "
                    f"{max(floor, floor_c) / t_mla:.2f} | {t_ind:.1f} | {t_ind / t_mla:.2f} | {at} | "
                    f"{err:.1e} | {t_paged:.1f} | {floor / t_paged:.2f} | {t_shuffle:.1f} | {floor / t_shuffle:.2f} |")
        print(rows[-1], flush=True)
        for series, t in (("mla", t_mla), ("inductor", t_ind), ("inductor max-autotune", t_at)):
            if t:
                points.append((f"B={B} L={L} H={H}", decode_flops(B, L, H) / cache_bytes(B, L),
                               decode_flops(B, L, H) / (t * 1e-6), series))
        del cache, q
        torch.cuda.empty_cache()
    table = "\n".join(rows)
    print(f"\n{device}, {roofs}\n{table}")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "decode_bench.md"), "w") as f:
            f.write(f"{device}, torch {torch.__version__}, {roofs}\n\n{table}\n")
        png = os.path.join(os.environ["OUT"], "decode_roofline.png")
        if plots.roofline(png, plots.by_series(points), peak, bw, f"MLA decode (bf16), {device}"):
            print(f"roofline plot: {png}")


if __name__ == "__main__":
    main()
