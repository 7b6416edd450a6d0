"""MLA decode attention (absorbed form) over a contiguous latent cache: the split-KV
Triton kernel against the bandwidth floor and against Inductor, in one run.

Run on a CUDA machine: `python benchmarks/bench_decode.py` (mla_compile installed).
One query token per sequence, bf16, DeepSeek dims (latent R = 512, rope Dr = 64): the
cache is one [B, L, 576] buffer whose first 512 columns are the latent and the last 64
the rotated k_pe, q_lat = q_nope @ w_uk is given ([B, H, 1, 512]). Timed:
  mla       mla_decode_attention (split kernel + combine)
  inductor  the same absorbed math (two matmuls for the scores, fp32 softmax, matmul with
            the latent) through torch.compile (dynamic shapes, one compile)
floor = cache bytes (B * L * 576 * 2) / measured device-to-device copy bandwidth. Times
are GPU times under CUDA graphs (decode runs captured: mode="reduce-overhead").
`paged-64`: the same keys in a `PagedLatentCache` of 64-token pages (SHUFFLE layout,
pages in shuffled order), checked against the dense result.
Prints correctness (vs an fp32 PyTorch statement), then a markdown table (also
$OUT/decode_bench.md when OUT is set).
"""
from __future__ import annotations

import os

import torch
import triton.testing

from mla_compile.custom_ops import PagedLatentCache
from mla_compile.custom_ops.triton_decode import mla_decode_attention

R, DR = 512, 64
SCALE = 0.1352
CASES = [(B, L, H) for H in (8, 16, 128) for L in (4096, 8192, 32768) for B in (1, 32, 64, 128)]


def absorbed(q_lat, q_pe, c, kr):
    s = (torch.einsum("bhqr,blr->bhql", q_lat, c) + torch.einsum("bhqd,bld->bhql", q_pe, kr)) * SCALE
    p = torch.softmax(s.float(), dim=-1).to(q_lat.dtype)
    return torch.einsum("bhql,blr->bhqr", p, c)


def paged_time(c, kr, q_lat, q_pe, dense_out, page=64) -> float:
    """The same keys in a 64-token-page cache (SHUFFLE layout), pages in a shuffled order."""
    B, L, _ = c.shape
    cache = PagedLatentCache.allocate(B * L // page, page, R, DR, c.dtype, c.device)
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


def main() -> None:
    device = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    print(f"device: {device}; torch {torch.__version__}; copy bandwidth {bw / 1e9:.0f} GB/s")
    inductor = torch.compile(absorbed, dynamic=True)
    rows = ["| B | L | H | mla us | floor us | of floor | inductor us | inductor/mla | rel. error "
            "| paged-64 (SHUFFLE) us | of floor |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for B, L, H in CASES:
        g = torch.Generator(device="cuda").manual_seed(B * L + H)
        cache = torch.randn(B, L, R + DR, device="cuda", generator=g).to(torch.bfloat16)
        c, kr = cache[..., :R], cache[..., R:]
        q = torch.randn(B, H, 1, R + DR, device="cuda", generator=g).to(torch.bfloat16) * 0.1
        q_lat, q_pe = q[..., :R], q[..., R:]
        out = mla_decode_attention(q_lat, q_pe, c, kr, SCALE, False)
        ref = absorbed(q_lat.float(), q_pe.float(), c.float(), kr.float())
        err = ((out.float() - ref).norm() / ref.norm()).item()
        assert err < 2e-2, f"B={B} L={L} H={H}: rel. error {err:.2e}"
        inductor(q_lat, q_pe, c, kr)  # compile outside the graph capture
        t_mla = triton.testing.do_bench_cudagraph(
            lambda: mla_decode_attention(q_lat, q_pe, c, kr, SCALE, False), rep=50) * 1e3
        t_ind = triton.testing.do_bench_cudagraph(lambda: inductor(q_lat, q_pe, c, kr), rep=50) * 1e3
        floor = B * L * (R + DR) * 2 / bw * 1e6
        t_paged = paged_time(c, kr, q_lat, q_pe, out)
        rows.append(f"| {B} | {L} | {H} | {t_mla:.1f} | {floor:.1f} | {floor / t_mla:.2f} | "
                    f"{t_ind:.1f} | {t_ind / t_mla:.2f} | {err:.1e} | {t_paged:.1f} | {floor / t_paged:.2f} |")
        print(rows[-1], flush=True)
        del cache, q
        torch.cuda.empty_cache()
    table = "\n".join(rows)
    print(f"\n{device}, copy {bw / 1e9:.0f} GB/s\n{table}")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "decode_bench.md"), "w") as f:
            f.write(f"{device}, torch {torch.__version__}, copy {bw / 1e9:.0f} GB/s\n\n{table}\n")


if __name__ == "__main__":
    main()
