"""Benchmark `torch.ops.mla.rope` (Triton) against Inductor's fused RoPE and eager.

Run on a CUDA machine: `python benchmarks/bench_rope.py` (with mla_compile installed).
Realistic MLA layout: q_pe [T, H, 64] is a strided slice of a [T, H, 192]
projection (q_nope 128 + q_pe 64), k_pe [T, 1, 64] a slice of a [T, 576] kv
projection (latent 512 + rope 64), cos/sin [T, 1, 64] gathered by position ids
from a [max_pos, 64] cache. Every implementation gets the same gathered cos/sin.

Implementations: the op called directly ("mla"), the eager RoPE compiled with
backend="mla" ("mla-backend", what a user runs), the same compiled with
backend="inductor", and eager. Prints correctness first, then a markdown table (also written to $OUT/rope_bench.md
when OUT is set). Needs torch >= 2.11 and triton >= 3.6.
"""
from __future__ import annotations

import os
import sys

import torch
import triton
import triton.testing

import mla_compile.custom_ops  # noqa: F401  (registers torch.ops.mla.rope)
from mla_compile.custom_ops.reference import rope_reference

CASES = [(64, 16), (64, 128), (16384, 16), (16384, 128)]  # (T tokens, H heads)
D, D_NOPE, D_LATENT, MAX_POS = 64, 128, 512, 32768
DTYPE = torch.bfloat16


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def neox_rope(q, k, cos, sin):
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def mla_rope(q, k, cos, sin):
    return torch.ops.mla.rope([q, k], cos, sin, False, False)


def make_inputs(T, H, device, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    q_proj = torch.randn(T, H, D_NOPE + D, device=device, dtype=DTYPE, generator=g)
    kv = torch.randn(T, D_LATENT + D, device=device, dtype=DTYPE, generator=g)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2, device=device, dtype=torch.float32) / D))
    ang = torch.outer(torch.arange(MAX_POS, device=device, dtype=torch.float32), inv_freq)
    ang = torch.cat((ang, ang), dim=-1)  # neox: [max_pos, 64]
    cos_cache, sin_cache = ang.cos().to(DTYPE), ang.sin().to(DTYPE)
    pos = torch.randint(0, MAX_POS, (T,), device=device, generator=g)
    q_pe = q_proj[..., D_NOPE:]  # [T, H, 64], strides (H*192, 192, 1)
    k_pe = kv[:, D_LATENT:].unsqueeze(1)  # [T, 1, 64], strides (576, *, 1)
    cos = cos_cache[pos].unsqueeze(1)  # [T, 1, 64]
    sin = sin_cache[pos].unsqueeze(1)
    return q_pe, k_pe, cos, sin


def nbytes(*ts):
    return sum(t.numel() * t.element_size() for t in ts)


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def copy_bandwidth(device):
    n = 1 << 30  # 1 GiB
    src = torch.empty(n, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    del src, dst
    return 2 * n / (ms * 1e-3)


def bench(fn, cudagraph):
    if cudagraph:
        return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median") * 1e3
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3


def main():
    if not torch.cuda.is_available():
        sys.exit("bench_rope.py needs a CUDA device")
    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(device)}")
    print(f"torch {torch.__version__}, triton {triton.__version__}")

    copy_bw = copy_bandwidth(device)
    print(f"copy bandwidth (read+write): {copy_bw / 1e9:.0f} GB/s")

    compiled = torch.compile(neox_rope, backend="inductor", dynamic=False)
    # the user's path: the same eager RoPE compiled with backend="mla" calls the op
    through_backend = torch.compile(neox_rope, backend="mla", dynamic=False)
    impls = {"mla": mla_rope, "mla-backend": through_backend, "inductor": compiled, "eager": neox_rope}

    # correctness first, on fresh random inputs (fresh seed per case)
    print("\ncorrectness (rel. L2 error vs fp32 reference; bf16 tolerance 1e-2):")
    ok = True
    for i, (T, H) in enumerate(CASES):
        q_pe, k_pe, cos, sin = make_inputs(T, H, device, seed=1000 + i)
        refs = [rope_reference(t, cos, sin, False, False) for t in (q_pe, k_pe)]
        outs = {name: fn(q_pe, k_pe, cos, sin) for name, fn in impls.items()}
        line = [f"T={T} H={H}:"]
        for name, (oq, ok_) in outs.items():
            e = max(rel_err(oq, refs[0]), rel_err(ok_, refs[1]))
            line.append(f"{name} vs ref {e:.2e}")
            ok &= e < 1e-2 and bool(torch.isfinite(oq).all() and torch.isfinite(ok_).all())
        e = max(rel_err(outs["mla"][0], outs["eager"][0]), rel_err(outs["mla"][1], outs["eager"][1]))
        ok &= e < 1e-2
        line.append(f"| mla vs eager {e:.2e}")
        print("  " + ", ".join(line))
    print(f"correctness: {'PASS' if ok else 'FAIL'}")

    rows = []
    for T, H in CASES:
        q_pe, k_pe, cos, sin = make_inputs(T, H, device, seed=T * 1000 + H)
        moved = 2 * nbytes(q_pe, k_pe) + nbytes(cos, sin)  # read x, cos, sin once; write outputs
        times = {}
        for name, fn in impls.items():
            f = lambda fn=fn: fn(q_pe, k_pe, cos, sin)  # noqa: E731
            f()
            torch.cuda.synchronize()
            times[name] = (bench(f, cudagraph=False), bench(f, cudagraph=True))
        for name in impls:
            t_ev, t_cg = times[name]
            gbs = moved / (t_cg * 1e-6) / 1e9
            rows.append((
                f"T={T} H={H}", name, f"{t_ev:.1f}", f"{t_cg:.1f}", f"{moved / 1e6:.2f}",
                f"{gbs:.0f}", f"{gbs * 1e9 / copy_bw:.2f}",
                f"{times['inductor'][0] / t_ev:.2f}", f"{times['inductor'][1] / t_cg:.2f}",
            ))
        print(f"  T={T} H={H}: " + ", ".join(
            f"{n} {t[0]:.1f}/{t[1]:.1f} us" for n, t in times.items()))

    head = ("case", "impl", "do_bench us", "cudagraph us", "MB moved", "GB/s (graph)",
            "frac copy bw", "inductor/impl (do_bench)", "inductor/impl (graph)")
    lines = [
        f"device: {torch.cuda.get_device_name(device)}; torch {torch.__version__}; "
        f"triton {triton.__version__}; copy bandwidth {copy_bw / 1e9:.0f} GB/s; "
        f"correctness {'PASS' if ok else 'FAIL'}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    table = "\n".join(lines)
    print()
    print(table)
    out_dir = os.environ.get("OUT")
    if out_dir:
        with open(os.path.join(out_dir, "rope_bench.md"), "w") as fh:
            fh.write(table + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
