"""Benchmark the MLA prefill attention kernel against SDPA and Inductor.

Run on a CUDA machine: `python benchmarks/bench_prefill.py` (mla_compile installed).
DeepSeek shapes, bf16, causal: q = [q_nope 128 | q_pe 64], k = [k_nope 128 | k_pe 64]
with k_pe shared by all heads, v 128. Inputs are the realistic strided views: q_nope /
q_pe slices of a [B, S, H, 192] projection, k_nope / v of a [B, S, H, 256] kv_b
projection, k_pe a slice of a [B, S, 576] kv_a projection, all transposed to [B, H, S, D].

Compared (the same useful FLOPs for all, 2*B*H*S*S*(192 + 128) / 2):
  mla        the kernel on the pieces
  gluon      the warp-specialised Gluon program (custom_ops/gluon_prefill.py, sm_90 only;
             a dash where it does not apply), on the same pieces
  sdpa+prep  cat q and k (k_pe expanded), zero-pad v to 192, SDPA, crop to 128
  sdpa       SDPA alone on tensors prepared outside the timed region
  flex       FlexAttention (torch.compile'd, causal block mask) on the same prepared
             q, k and unpadded v (checked against mla before it is timed)
  inductor   matmul / scale / mask / fp32 softmax / matmul through torch.compile
             (skipped where its S x S scores would not fit comfortably)

Prints correctness first (mla vs sdpa+prep on fresh random inputs, rel. L2 error,
bf16 tolerance 2e-2), then a markdown table (also written to $OUT/prefill_bench.md when
OUT is set). `--sweep` instead times a few kernel configs (tiles, warps, stages, TMA
or pointer loads) on two shapes; `--gluon-sweep` times the Gluon program's tile / stage
variants against the Triton kernel and SDPA; `--masks` times additive masks against causal=True
(mask block tables: skipped -inf blocks, no mask load for zero blocks). Needs
torch >= 2.11 and triton >= 3.6.
"""
from __future__ import annotations

import gc
import math
import os
import sys

import torch
import torch.nn.functional as F
import triton
import triton.testing

from mla_compile.custom_ops import gluon_prefill
from mla_compile.custom_ops.triton_prefill import (
    _use_tma,
    mla_prefill_attention,
    mla_prefill_reference,
)

DN, DR, DV, D_LATENT = 128, 64, 128, 512
DTYPE = torch.bfloat16
MSCALE = 0.1 * math.log(40) + 1  # yarn, factor 40
SCALE = (DN + DR) ** -0.5 * MSCALE**2
# (B, H, S): B = 1 everywhere, plus a batch of 8 at the shortest length
CASES = [(1, 16, 1024), (8, 16, 1024), (1, 128, 1024), (8, 128, 1024),
         (1, 16, 4096), (1, 128, 4096), (1, 16, 8192), (1, 128, 8192), (1, 16, 32768)]
INDUCTOR_MAX_SCORES = 2**31  # B*H*S*S elements; above this the S x S buffers get too big


def make_inputs(B, H, S, device, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    q_proj = torch.randn(B, S, H, DN + DR, device=device, dtype=DTYPE, generator=g)
    kv_b = torch.randn(B, S, H, DN + DV, device=device, dtype=DTYPE, generator=g)
    kv_a = torch.randn(B, S, D_LATENT + DR, device=device, dtype=DTYPE, generator=g)
    q_nope = q_proj[..., :DN].transpose(1, 2)
    q_pe = q_proj[..., DN:].transpose(1, 2)
    k_nope = kv_b[..., :DN].transpose(1, 2)
    v = kv_b[..., DN:].transpose(1, 2)
    k_pe = kv_a[..., D_LATENT:]
    return q_nope, q_pe, k_nope, k_pe, v


def mla(qn, qr, kn, kr, v):
    return mla_prefill_attention(qn, qr, kn, kr, v, SCALE, True)


def gluon_applies(ins):
    return gluon_prefill.applies(*ins, interpreting=False)


def gluon(qn, qr, kn, kr, v, **cfg):
    out = torch.empty(*qn.shape[:3], DV, device=qn.device, dtype=qn.dtype)
    return gluon_prefill.gluon_prefill_attention(qn, qr, kn, kr, v, SCALE, True, out, **cfg)


def sdpa_prep(qn, qr, kn, kr, v):
    B, H, S, _ = kn.shape
    q = torch.cat([qn, qr], dim=-1)
    k = torch.cat([kn, kr[:, None].expand(B, H, S, DR)], dim=-1)
    vp = F.pad(v, (0, q.shape[-1] - v.shape[-1]))
    return q, k, vp


def sdpa_full(qn, qr, kn, kr, v):
    q, k, vp = sdpa_prep(qn, qr, kn, kr, v)
    return F.scaled_dot_product_attention(q, k, vp, is_causal=True, scale=SCALE)[..., :DV]


def flex_runner(qn, qr, kn, kr, v):
    """PyTorch's FlexAttention (compiled, causal block mask) on the prepared q and k (cat,
    k_pe expanded; prepared outside the timed call, as for `sdpa`) and v unpadded: the
    PyTorch-native fused comparator on the same decompressed math."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    S = kn.shape[2]
    q, k, _ = sdpa_prep(qn, qr, kn, kr, v)
    mask = create_block_mask(lambda b, h, i, j: i >= j, None, None, S, S, device=q.device)
    run = torch.compile(flex_attention, dynamic=False)
    return lambda: run(q, k, v, block_mask=mask, scale=SCALE)


def eager_attention(qn, qr, kn, kr, v):
    B, H, S, _ = kn.shape
    q = torch.cat([qn, qr], dim=-1)
    k = torch.cat([kn, kr[:, None].expand(B, H, S, DR)], dim=-1)
    s = (q @ k.transpose(-1, -2)) * SCALE
    keep = torch.ones(S, S, dtype=torch.bool, device=s.device).tril()
    s = s.float().masked_fill(~keep, float("-inf"))
    return s.softmax(dim=-1).to(v.dtype) @ v


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def free():
    gc.collect()
    torch.cuda.empty_cache()


def sdpa_backend_name(args):
    """Name SDPA's kernel for these inputs from the profiler's kernel names."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        F.scaled_dot_product_attention(*args, is_causal=True, scale=SCALE)
        torch.cuda.synchronize()
    names = [e.key for e in prof.key_averages()]
    for tag in ("cudnn", "flash", "efficient", "mem_eff", "fmha"):
        hit = [n for n in names if tag in n.lower()]
        if hit:
            return hit[0][:60]
    return "unknown (" + ", ".join(n[:30] for n in names[:3]) + ")"


def correctness(device):
    print("\ncorrectness (rel. L2 error; bf16 tolerance 2e-2):")
    ok = True
    # small case also against the fp32 reference
    ins = make_inputs(2, 4, 300, device, seed=7)
    ref = mla_prefill_reference(*ins, SCALE, True)
    e = rel_err(mla(*ins), ref)
    e_ptr = rel_err(mla_prefill_attention(*ins, SCALE, True, tma=False), ref)
    ok &= e < 2e-2 and e_ptr < 2e-2
    print(f"  B=2 H=4 S=300: mla vs fp32 reference {e:.2e} (pointer loads forced: {e_ptr:.2e})")
    for i, (B, H, S) in enumerate(CASES):
        ins = make_inputs(B, H, S, device, seed=100 + i)
        out = torch.full((B, H, S, DV), float("nan"), device=device, dtype=DTYPE)
        mla_prefill_attention(*ins, SCALE, True, out=out)  # poisoned: every element written?
        ref = sdpa_full(*ins)
        e = rel_err(out, ref)
        finite = bool(torch.isfinite(out).all())
        ok &= e < 2e-2 and finite
        print(f"  B={B} H={H} S={S}: mla vs sdpa+prep {e:.2e}, max abs "
              f"{(out.float() - ref.float()).abs().max().item():.2e}, all finite {finite}")
        if gluon_applies(ins):
            out.fill_(float("nan"))
            mla_prefill_attention(*ins, SCALE, True, out=out, gluon=True)
            e, finite = rel_err(out, ref), bool(torch.isfinite(out).all())
            ok &= e < 2e-2 and finite
            print(f"  B={B} H={H} S={S}: gluon vs sdpa+prep {e:.2e}, all finite {finite}")
        del ins, out, ref
        free()
    print(f"correctness: {'PASS' if ok else 'FAIL'}")
    return ok


def run_table(device, ok):
    rows = []
    backend = None
    for B, H, S in CASES:
        ins = make_inputs(B, H, S, device, seed=B * 10**6 + H * 10**4 + S)
        flops = 2 * B * H * S * S * (DN + DR + DV) / 2
        prepped = sdpa_prep(*ins)
        if backend is None:
            backend = sdpa_backend_name(prepped)
        tma = _use_tma((ins[2], ins[3], ins[4]), (64, DN, DR, DV), True)
        fns = {
            "mla": lambda: mla(*ins),
            **({"gluon": lambda: gluon(*ins)} if gluon_applies(ins) else {}),
            "sdpa+prep": lambda: sdpa_full(*ins),
            "sdpa": lambda: F.scaled_dot_product_attention(*prepped, is_causal=True, scale=SCALE),
        }
        times = {name: bench(fn) for name, fn in fns.items()}
        times.setdefault("gluon", None)
        del prepped
        free()
        try:  # checked against the kernel (itself checked against SDPA above) before timing
            flex = flex_runner(*ins)
            err = rel_err(flex(), mla(*ins))
            times["flex"] = bench(flex) if err < 2e-2 else None
            print(f"  B={B} H={H} S={S}: flex vs mla rel. error {err:.1e}", flush=True)
            del flex
        except Exception as exc:  # noqa: BLE001  (a comparator that does not run: a dash)
            print(f"  B={B} H={H} S={S}: flex failed ({type(exc).__name__}: {str(exc)[:200]})", flush=True)
            times["flex"] = None
        torch._dynamo.reset()
        free()
        if B * H * S * S <= INDUCTOR_MAX_SCORES:
            torch._dynamo.reset()
            compiled = torch.compile(eager_attention, backend="inductor", dynamic=False)
            compiled(*ins)
            times["inductor"] = bench(lambda: compiled(*ins))
            del compiled
            torch._dynamo.reset()
        else:
            times["inductor"] = None
        del ins
        free()
        tf = {k: (flops / (t * 1e-3) / 1e12 if t else None) for k, t in times.items()}
        fmt = lambda x, f: "-" if x is None else f.format(x)  # noqa: E731
        rows.append((
            f"{B}", f"{H}", f"{S}", "TMA" if tma else "ptr",
            *(fmt(times[k], "{:.3f}") for k in ("mla", "gluon", "sdpa+prep", "sdpa", "flex", "inductor")),
            *(fmt(tf[k], "{:.0f}") for k in ("mla", "gluon", "sdpa+prep", "sdpa", "flex", "inductor")),
            fmt(times["gluon"] and times["mla"] / times["gluon"], "{:.2f}"),
            fmt(times["gluon"] and times["sdpa"] / times["gluon"], "{:.2f}"),
            f"{times['sdpa+prep'] / times['mla']:.2f}", f"{times['sdpa'] / times['mla']:.2f}",
            fmt(times["flex"] and times["flex"] / times["mla"], "{:.2f}"),
            fmt(times["inductor"] and times["inductor"] / times["mla"], "{:.2f}"),
        ))
        print(f"  B={B} H={H} S={S}: " + ", ".join(
            f"{k} {fmt(t, '{:.3f}')} ms" for k, t in times.items()), flush=True)

    head = ("B", "H", "S", "mla K/V loads", "mla ms", "gluon ms", "sdpa+prep ms", "sdpa ms", "flex ms",
            "inductor ms", "mla TF/s", "gluon TF/s", "sdpa+prep TF/s", "sdpa TF/s", "flex TF/s", "inductor TF/s",
            "mla/gluon", "sdpa/gluon", "sdpa+prep/mla", "sdpa/mla", "flex/mla", "inductor/mla")
    lines = [
        f"device: {torch.cuda.get_device_name(device)}; torch {torch.__version__}; "
        f"triton {triton.__version__}; bf16, causal, Dn/Dr/Dv = {DN}/{DR}/{DV}; "
        f"SDPA kernel: {backend}; correctness {'PASS' if ok else 'FAIL'}",
        "",
        "TF/s counts the useful causal FLOPs 2*B*H*S*S*(192+128)/2 for every column; "
        "ratios > 1 mean mla (gluon in the x/gluon columns) is faster.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


SWEEP = [(128, 64, 8, 3, False), (128, 64, 8, 3, True), (128, 64, 8, 2, True),
         (128, 64, 8, 4, True), (128, 128, 8, 2, True), (128, 32, 8, 3, True),
         (64, 64, 4, 3, True), (64, 64, 4, 2, True)]  # (BLOCK_M, BLOCK_N, warps, stages, tma)


def sweep(device):
    """Time the kernel configs of SWEEP on two shapes."""
    for B, H, S in [(1, 128, 4096), (1, 16, 8192)]:
        ins = make_inputs(B, H, S, device, seed=1)
        ref = sdpa_full(*ins)
        flops = 2 * B * H * S * S * (DN + DR + DV) / 2
        t_sdpa = bench(lambda: sdpa_full(*ins))
        print(f"\nB={B} H={H} S={S}: sdpa+prep {t_sdpa:.3f} ms")
        for bm, bn, nw, ns, tma in SWEEP:
            f = lambda: mla_prefill_attention(  # noqa: E731
                *ins, SCALE, True, block_m=bm, block_n=bn, num_warps=nw, num_stages=ns, tma=tma)
            try:
                e = rel_err(f(), ref)
                t = bench(f)
            except Exception as exc:  # out of shared memory, etc.
                print(f"  {bm}x{bn} w{nw} s{ns} tma={tma}: failed ({type(exc).__name__})")
                continue
            print(f"  {bm}x{bn} w{nw} s{ns} tma={tma}: {t:.3f} ms {flops / t / 1e9:.0f} TF/s "
                  f"x{t_sdpa / t:.2f} err {e:.1e}", flush=True)
        del ins, ref
        free()


# (BLOCK_N, STAGES, PINGPONG)
GLUON_SWEEP = [(128, 2, True), (128, 2, False), (64, 3, True), (64, 3, False), (64, 2, True)]


def gluon_sweep(device):
    """The Gluon program's variants against the Triton kernel and SDPA, causal and not."""
    for B, H, S in [(1, 128, 4096), (1, 128, 8192), (1, 16, 32768)]:
        ins = make_inputs(B, H, S, device, seed=3)
        for causal in (True, False):
            flops = 2 * B * H * S * S * (DN + DR + DV) / (2 if causal else 1)
            q, k, vp = sdpa_prep(*ins)
            ref = F.scaled_dot_product_attention(q, k, vp, is_causal=causal, scale=SCALE)[..., :DV]
            t_sdpa = bench(lambda: F.scaled_dot_product_attention(q, k, vp, is_causal=causal, scale=SCALE))
            del q, k, vp
            t_mla = bench(lambda: mla_prefill_attention(*ins, SCALE, causal, gluon=False))
            print(f"\nB={B} H={H} S={S} causal={causal}: sdpa {t_sdpa:.3f} ms, mla {t_mla:.3f} ms "
                  f"({flops / t_mla / 1e9:.0f} TF/s)")
            out = torch.empty_like(ref)
            for bn, st, pp in GLUON_SWEEP:
                f = lambda: gluon_prefill.gluon_prefill_attention(  # noqa: E731
                    *ins, SCALE, causal, out, block_n=bn, stages=st, pingpong=pp)
                try:
                    e = rel_err(f(), ref)
                    t = bench(f)
                except Exception as exc:  # noqa: BLE001
                    print(f"  gluon BLOCK_N={bn} STAGES={st} PINGPONG={pp}: failed "
                          f"({type(exc).__name__}: {str(exc)[:120]})")
                    continue
                print(f"  gluon BLOCK_N={bn} STAGES={st} PINGPONG={pp}: {t:.3f} ms {flops / t / 1e9:.0f} TF/s "
                      f"sdpa/gluon {t_sdpa / t:.2f} mla/gluon {t_mla / t:.2f} err {e:.1e}", flush=True)
            del ref, out
            free()
        del ins
        free()


def masks(device):
    """The kernel with additive masks, block skipping on and off, against causal=True;
    a left-padded row (a quarter of the keys, finfo.min) as the full causal+padding mask
    eager builds and as causal + the key vector + empty_row_fill (what the pass emits):
    the latter checked against the former (equal under the pass's score bound)."""
    from mla_compile.custom_ops.mask_blocks import classify_blocks
    from mla_compile.custom_ops.triton_prefill import default_config

    for B, H, S in [(1, 16, 1024), (1, 16, 8192), (1, 128, 4096), (1, 128, 8192)]:
        ins = make_inputs(B, H, S, device, seed=2)
        above = torch.ones(S, S, dtype=torch.bool, device=device).triu(1)[None, None]
        ninf = torch.zeros(1, 1, S, S, device=device, dtype=DTYPE).masked_fill(above, float("-inf"))
        fmin = torch.zeros_like(ninf).masked_fill(above, torch.finfo(DTYPE).min)
        pad = torch.zeros(1, 1, 1, S, device=device, dtype=DTYPE)
        pad[..., : S // 4] = float("-inf")  # a quarter of left padding
        fmin_pad = torch.zeros_like(pad).masked_fill(pad == float("-inf"), torch.finfo(DTYPE).min)
        fmin_full = fmin.masked_fill(fmin_pad == torch.finfo(DTYPE).min, torch.finfo(DTYPE).min)
        padded_ref = mla_prefill_attention(*ins, SCALE, False, mask=fmin_full)
        ref = mla_prefill_attention(*ins, SCALE, True)
        bm, bn = default_config(DN, DR, DV, DTYPE, S, True)[:2]
        cases = {  # name -> (causal, mask, block_skip, empty_row_fill)
            "causal=True": (True, None, True, None),
            "-inf mask, skip": (False, ninf, True, None),
            "-inf mask, no skip": (False, ninf, False, None),
            "finfo.min mask, skip": (False, fmin, True, None),
            "finfo.min mask, no skip": (False, fmin, False, None),
            "causal + -inf key padding, skip": (True, pad, True, None),
            "finfo.min causal+padding full mask (left-padded, before)": (False, fmin_full, False, None),
            "causal + finfo.min key padding, empty_row_fill (left-padded, now)":
                (True, fmin_pad, False, torch.finfo(DTYPE).min),
        }
        t_causal = None
        print(f"\nB={B} H={H} S={S} (tiles {bm}x{bn}); block table alone "
              f"{bench(lambda: classify_blocks(ninf, S, S, bm, bn)):.3f} ms")
        for name, (causal, mask, skip, fill) in cases.items():
            f = lambda: mla_prefill_attention(  # noqa: E731
                *ins, SCALE, causal, mask=mask, block_skip=skip, empty_row_fill=fill)
            t = bench(f)
            t_causal = t_causal or t
            padded = mask is fmin_full or mask is fmin_pad
            err = rel_err(f(), padded_ref if padded else ref) if mask is not pad else float("nan")
            print(f"  {name}: {t:.3f} ms ({t / t_causal:.2f}x causal) err {err:.1e}", flush=True)
        del ins, ref, ninf, fmin, pad, fmin_pad, fmin_full, padded_ref
        free()


def main():
    if not torch.cuda.is_available():
        sys.exit("bench_prefill.py needs a CUDA device")
    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(device)}")
    print(f"torch {torch.__version__}, triton {triton.__version__}")
    if "--sweep" in sys.argv:
        sweep(device)
        return 0
    if "--gluon-sweep" in sys.argv:
        gluon_sweep(device)
        return 0
    if "--masks" in sys.argv:
        masks(device)
        return 0
    ok = correctness(device)
    print("\ntiming (median ms):")
    table = run_table(device, ok)
    print()
    print(table)
    out_dir = os.environ.get("OUT")
    if out_dir:
        with open(os.path.join(out_dir, "prefill_bench.md"), "w") as fh:
            fh.write(table + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
