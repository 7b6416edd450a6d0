"""End to end through the compiler: MLA prefill attention written as model code,
compiled with backend="mla" (the pass fuses it into mla.prefill_attention) against
the same code compiled by Inductor, in one run.

Run on a CUDA machine: `python benchmarks/bench_attention.py` (mla_compile installed).
DeepSeek dims 512/64/128/128, bf16, causal, B = 1, YaRN-scaled softmax. Inputs: q_nope
[B,S,H,128] and rotated q_pe [B,S,H,64], the latent c_kv [B,S,512], rotated k_pe [B,S,64],
kv_b_proj's weight [H*256, 512]. The code, as models write it:
  sdpa   kv_b_proj on the latent, split, key = cat(k_nope, k_pe expanded), V zero-padded
         to 192, SDPA(is_causal), output cropped to 128 (flash-attention paths)
  eager  the same key, matmul * scale + additive causal mask, fp32 softmax, matmul
         (transformers' eager attention; skipped where its S x S scores get too big)
Variants: mla(code) = backend="mla", inductor(code) = default torch.compile, eager(sdpa)
= the SDPA code uncompiled (F.scaled_dot_product_attention on the padded math).
Columns: median ms and TFLOP/s over the useful FLOPs (decompression 2*S*512*H*256 plus
causal attention 2*H*S*S*(192+128)/2), and the ratio to Inductor on the SDPA code (its
best: SDPA's flash / cuDNN kernel). The report of each mla compile is checked: one
attention fused. Prints markdown; also writes $OUT/attention_bench.md when OUT is set.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
import triton.testing

DN, DR, DV, R = 128, 64, 128, 512
SCALE = (DN + DR) ** -0.5 * (0.1 * math.log(40) + 1) ** 2
CASES = [(16, 1024), (128, 1024), (16, 4096), (128, 4096), (16, 8192), (128, 8192)]
EAGER_MAX_SCORES = 2**31  # H*S*S fp32 scores above this: eager/Inductor matmul code skipped


def sdpa_code(q_nope, q_pe, c_kv, k_pe, w_kv_b, mask):
    B, S, H, _ = q_nope.shape
    kv = F.linear(c_kv, w_kv_b).view(B, S, H, DN + DV).transpose(1, 2)
    k_nope, v = kv.split([DN, DV], dim=-1)
    q = torch.cat([q_nope, q_pe], dim=-1).transpose(1, 2)
    k = torch.cat([k_nope, k_pe.view(B, 1, S, DR).expand(-1, H, -1, -1)], dim=-1)
    v = F.pad(v, [0, DN + DR - DV])
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=SCALE)[..., :DV]
    return out.transpose(1, 2).reshape(B, S, H * DV)


def eager_code(q_nope, q_pe, c_kv, k_pe, w_kv_b, mask):
    B, S, H, _ = q_nope.shape
    kv = F.linear(c_kv, w_kv_b).view(B, S, H, DN + DV).transpose(1, 2)
    k_nope, v = kv.split([DN, DV], dim=-1)
    q = torch.cat([q_nope, q_pe], dim=-1).transpose(1, 2)
    k = torch.cat([k_nope, k_pe.view(B, 1, S, DR).expand(-1, H, -1, -1)], dim=-1)
    scores = torch.matmul(q, k.transpose(2, 3)) * SCALE + mask
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v).transpose(1, 2).reshape(B, S, H * DV)


def make_inputs(H, S, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, device="cuda", generator=g) * scale).to(torch.bfloat16)
    mask = torch.full((S, S), torch.finfo(torch.bfloat16).min, device="cuda").triu(1)
    return (rand(1, S, H, DN), rand(1, S, H, DR), rand(1, S, R), rand(1, S, DR),
            rand(H * (DN + DV), R, scale=R ** -0.5), mask[None, None].to(torch.bfloat16))


def compiled(fn, backend):
    torch._dynamo.reset()
    reports = []
    options = {"report": reports.append} if backend == "mla" else None
    return torch.compile(fn, backend=backend, options=options, dynamic=False), reports


def main() -> None:
    device = torch.cuda.get_device_name()
    print(f"device: {device}; torch {torch.__version__}")
    rows = ["| H | S | variant | ms | TFLOP/s | vs inductor(sdpa) | rel. error vs eager |",
            "|---|---|---|---|---|---|---|"]
    for H, S in CASES:
        inputs = make_inputs(H, S)
        flops = 2 * S * R * H * (DN + DV) + 2 * H * S * S * (DN + DR + DV) / 2
        small = H * S * S <= EAGER_MAX_SCORES
        with torch.no_grad():
            ref = sdpa_code(*inputs).float()
            variants = [("inductor(sdpa)", sdpa_code, "inductor"), ("mla(sdpa)", sdpa_code, "mla"),
                        ("eager(sdpa)", sdpa_code, None)]
            if small:
                variants += [("inductor(eager)", eager_code, "inductor"), ("mla(eager)", eager_code, "mla")]
            base = None
            for name, fn, backend in variants:
                fn_c, reports = compiled(fn, backend) if backend else (fn, [])
                out = fn_c(*inputs).float()
                err = ((out - ref).norm() / ref.norm()).item()
                if backend == "mla":
                    counts = reports[0].counts() if reports else {}
                    assert counts.get("attention.mla") == 1, f"{name}: not fused: {counts}"
                assert err < 2e-2, f"{name} H={H} S={S}: rel. error {err:.2e}"
                ms = triton.testing.do_bench(lambda: fn_c(*inputs), warmup=25, rep=100)
                base = base or ms
                rows.append(f"| {H} | {S} | {name} | {ms:.3f} | {flops / ms / 1e9:.0f} | "
                            f"{base / ms:.2f} | {err:.1e} |")
                print(rows[-1], flush=True)
                del fn_c
                torch.cuda.empty_cache()
    table = "\n".join(rows)
    print(f"\n{device}\n{table}")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "attention_bench.md"), "w") as f:
            f.write(f"{device}, torch {torch.__version__}\n\n{table}\n")


if __name__ == "__main__":
    main()
