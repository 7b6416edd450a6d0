"""Tile sweep of the absorbed-form decode kernel (custom_ops/triton_decode.py): the
numbers behind `TritonBackend.decode_rows_per_program`, `choose_splits` and the
kernel's default key block, warps and stages.

Run on a CUDA machine: `python benchmarks/sweep_decode.py` (mla_compile installed).
For each case (B, L, H; bf16, latent 512 + rope 64, contiguous cache) every config is
checked against an fp32 statement of the math (a config that is wrong is reported, not
timed) and timed under CUDA graphs; the best few per case are printed, and the default
config's time for comparison. SWEEP_BUDGET_S (default 480) stops it early.
"""
from __future__ import annotations

import itertools
import os
import time

import torch
import triton.testing

from mla_compile.custom_ops.triton_decode import mla_decode_attention

R, DR, SCALE = 512, 64, 0.1352
BUDGET = float(os.environ.get("SWEEP_BUDGET_S", "480"))
TILES_128 = [32, 64]  # rows per program
CASES = {
    (32, 8192, 128): dict(tile=TILES_128, block_n=[32, 64], stages=[2, 3], warps=[4, 8], splits=[None]),
    (1, 32768, 128): dict(tile=TILES_128, block_n=[32, 64], stages=[2, 3], warps=[4, 8], splits=[None]),
    (1, 32768, 16): dict(tile=[16], block_n=[32, 64], stages=[2, 3, 4], warps=[4, 8],
                         splits=[64, 128, 256, 512]),
    (32, 4096, 16): dict(tile=[16, 32], block_n=[32, 64], stages=[2, 3], warps=[4, 8],
                         splits=[None, 2, 4, 8]),
}


def fp32_reference(q_lat, q_pe, c, kr):
    s = (q_lat.float() @ c.float()[:, None].transpose(-1, -2)
         + q_pe.float() @ kr.float()[:, None].transpose(-1, -2)) * SCALE
    return s.softmax(-1) @ c.float()[:, None]


def main() -> None:
    start = time.time()
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; triton {triton.__version__}")
    for (B, L, H), space in CASES.items():
        g = torch.Generator(device="cuda").manual_seed(B + L + H)
        cache = torch.randn(B, L, R + DR, device="cuda", generator=g).to(torch.bfloat16)
        c, kr = cache[..., :R], cache[..., R:]
        q = torch.randn(B, H, 1, R + DR, device="cuda", generator=g).to(torch.bfloat16) * 0.1
        q_lat, q_pe = q[..., :R], q[..., R:]
        ref = fp32_reference(q_lat, q_pe, c, kr)
        default = triton.testing.do_bench_cudagraph(
            lambda: mla_decode_attention(q_lat, q_pe, c, kr, SCALE, False), rep=30) * 1e3
        results = []
        for bh, bn, st, nw, sp in itertools.product(space["tile"], space["block_n"], space["stages"],
                                                          space["warps"], space["splits"]):
            if time.time() - start > BUDGET:
                print("budget spent; stopping")
                break
            kw = dict(block_h=bh, block_n=bn, num_stages=st, num_warps=nw, splits=sp)
            try:
                out = mla_decode_attention(q_lat, q_pe, c, kr, SCALE, False, **kw)
                err = ((out.float() - ref).norm() / ref.norm()).item()
                if not err < 2e-2:
                    print(f"  WRONG {kw}: rel. error {err:.2e}")
                    continue
                us = triton.testing.do_bench_cudagraph(
                    lambda: mla_decode_attention(q_lat, q_pe, c, kr, SCALE, False, **kw), rep=30) * 1e3
            except Exception as e:  # noqa: BLE001 - out of resources etc.: report, go on
                print(f"  failed {kw}: {type(e).__name__}: {str(e)[:120]}")
                continue
            results.append((us, kw))
        results.sort(key=lambda r: r[0])
        floor = B * L * (R + DR) * 2 / 4.2e12 * 1e6
        print(f"B={B} L={L} H={H}: default {default:.1f} us (floor {floor:.1f} us at 4.2 TB/s)")
        for us, kw in results[:6]:
            print(f"  {us:8.1f} us  {kw}")
        del cache, q, ref
        torch.cuda.empty_cache()
    print(f"sweep took {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
