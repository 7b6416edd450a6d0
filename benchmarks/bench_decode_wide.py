"""Absorbed MLA decode at 16-128 heads: the wide kernel's Triton program and its Gluon
program for 64 rows (custom_ops/triton_decode_wide.py, custom_ops/gluon_decode.py; `gluon2` =
its pipelined form, custom_ops/gluon_decode_pipelined.py; `gluon3` = the seesaw form,
custom_ops/gluon_decode_seesaw.py, its key tiles copied by cp.async; `gluon3-tma` = the
seesaw with TMA key copies, gluon_seesaw_copy.py)
against the split kernel (custom_ops/triton_decode.py) and FlashMLA's SM90 dense decode,
on the same latent, in one run (issue 12). `python benchmarks/bench_decode_wide.py`
with the package installed.
FlashMLA: the `sgl-flash-mla` wheel's `flash_mla` module, if importable (skipped, with the
reason printed, if not).

bf16, one query token, DeepSeek dims (latent R = 512, rope Dr = 64). The keys live in one
contiguous [B, L, 576] buffer: ours read latent = [..., :512] and rope = [..., 512:] of it;
FlashMLA and `wide-paged` read the very same memory as 64-token pages
([B * L / 64, 64, 1, 576], identity block table). Times: CUDA-graph replays
(triton.testing.do_bench_cudagraph, median); each timed call runs over `copies` buffer
sets in turn (enough for 200 MB, so B = 1 L = 32768's 38 MB does not sit in the 60 MB L2)
and the time is per set. Floors: memory = cache bytes (B L 576 2) / measured copy
bandwidth; compute = FLOPs (B H L (2 576 + 2 512)) / measured bf16 matmul rate; "% max"
= max(floors) / time. Every variant is checked against an fp32 PyTorch statement of the
math (||out - ref|| / ||ref||, output buffer poisoned with NaN first) before it is timed.

Environment: OUT (write $OUT/decode_wide.md, .json and the roofline decode_wide_roofline.png),
BENCH_CASES "BxLxH,..." (default: H in 16, 32, 64, 128 x (B, L) in (1, 32768), (32, 4096),
(64, 8192), (128, 4096)), BENCH_VARIANTS (comma list, default all), BENCH_RAGGED=1 (each
sequence's length uniform in [1, L]: the paged variants and FlashMLA, which read lengths;
floors count the keys read). Paged variants run the default schedule (decode_schedule.py,
`mla_decode_attention_wide`'s rule), as `<name>-oldsched` the old one (schedule="split"),
and the seesaw's as `<name>-balanced` the balanced one, in the same run.
The seesaw with cp.async vs with TMA vs FlashMLA on the same pages (issue 12):
    BENCH_VARIANTS=gluon3,gluon3-tma,gluon3-paged,gluon3-tma-paged,flashmla
    BENCH_CASES=32x4096x64,64x4096x64,128x4096x64,32x8192x64,64x8192x64,128x8192x64,\
32x4096x128,64x4096x128,128x4096x128,32x8192x128,64x8192x128,128x8192x128
(and again with BENCH_RAGGED=1); the run prints whether the TMA descriptors applied
(`tma_plan`: else the launcher silently runs the cp.async copies).
`python benchmarks/bench_decode_wide.py --plot results.json out.png` redraws the roofline
from a saved results file (no GPU needed).
"""
from __future__ import annotations

import json
import math
import os
import time
import traceback

import torch
import triton
import triton.testing

from mla_compile.custom_ops import triton_decode, triton_decode_wide  # noqa: E402
from mla_compile.custom_ops.gluon_seesaw_copy import tma_plan  # noqa: E402
from mla_compile.custom_ops.triton_backend import TritonBackend  # noqa: E402

R, DR, PAGE = 512, 64, 64
SCALE = 0.1352
BL = [(1, 32768), (32, 4096), (64, 8192), (128, 4096)]
CASES = [(B, L, H) for H in (16, 32, 64, 128) for B, L in BL]


def parse_cases(spec):
    return [tuple(int(v) for v in item.split("x")) for item in spec.replace(" ", "").lower().split(",") if item]


def old_rows_per_program(rows, batch):
    return TritonBackend.decode_rows_per_program(rows, True, batch)


def copy_bandwidth():
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = triton.testing.do_bench(lambda: y.copy_(x), warmup=10, rep=50, return_mode="median")
    return 2 * x.numel() / (ms * 1e-3)


def matmul_peak(n=8192):
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn_like(a)
    ms = triton.testing.do_bench(lambda: torch.matmul(a, b), warmup=25, rep=100, return_mode="median")
    return 2 * n**3 / (ms * 1e-3)


def load_flash_mla():
    try:
        import flash_mla
        from flash_mla import flash_mla_with_kvcache, get_mla_metadata
        if not flash_mla.has_legacy():
            return None, "flash_mla has no legacy (SM90) kernels"
        return (flash_mla_with_kvcache, get_mla_metadata), f"flash_mla {flash_mla.__version__}"
    except Exception as e:  # noqa: BLE001
        return None, f"flash_mla not importable: {type(e).__name__}: {e}"


def reference(q, cache, lens=None):
    """fp32 statement of the math: q [B, H, 1, 576], cache [B, L, 576] -> [B, H, 1, 512];
    `lens` [B]: sequence b reads its first lens[b] keys (ragged)."""
    qf, kf = q.float(), cache.float()
    s = torch.einsum("bhqd,bld->bhql", qf, kf) * SCALE
    if lens is not None:
        hidden = torch.arange(cache.shape[1], device=cache.device)[None, :] >= lens[:, None]
        s = s.masked_fill(hidden[:, None, None, :], float("-inf"))
    return torch.einsum("bhql,blr->bhqr", s.softmax(-1), kf[..., :R])


def schedule_speedup(t: dict) -> str:
    """Old schedule / balanced schedule, one program on the same pages: the pair of the
    program that ran fastest on either ("-paged-balanced", else "-paged" where the
    balanced schedule is its default: not the seesaw's)."""
    pairs = {}
    for n in t:
        if n.endswith("-paged-oldsched"):
            p = n[:-len("-paged-oldsched")]
            bal = f"{p}-paged-balanced" if f"{p}-paged-balanced" in t else None if p.startswith("gluon3") else f"{p}-paged"
            if bal in t:
                pairs[p] = (t[n], t[bal])
    if not pairs:
        return "-"
    p = min(pairs, key=lambda k: min(pairs[k]))
    return f"{p}: {pairs[p][0] / pairs[p][1]:.2f}x"


def main():
    cases = parse_cases(os.environ["BENCH_CASES"]) if os.environ.get("BENCH_CASES") else CASES
    ragged = os.environ.get("BENCH_RAGGED") == "1"
    want = set(filter(None, os.environ.get("BENCH_VARIANTS", "").split(",")))
    dev = torch.cuda.get_device_name()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    bw, peak = copy_bandwidth(), matmul_peak()
    fm, fm_note = load_flash_mla()
    head = (f"{dev}, {sms} SMs, torch {torch.__version__}, triton {triton.__version__}; copy bandwidth "
            f"{bw / 1e9:.0f} GB/s, bf16 matmul {peak / 1e12:.0f} TFLOP/s; {fm_note}")
    print(head, flush=True)
    results = []
    for B, L, H in cases:
        bytes_ = B * L * (R + DR) * 2
        copies = max(1, math.ceil(200e6 / bytes_))
        g = torch.Generator(device="cuda").manual_seed(B * L + H)
        sets = []
        for _ in range(copies):
            cache = torch.randn(B, L, R + DR, device="cuda", generator=g).to(torch.bfloat16)
            q = (torch.randn(B, H, 1, R + DR, device="cuda", generator=g) * 0.1).to(torch.bfloat16)
            sets.append((q, cache))
        table = (torch.arange(B * L // PAGE, device="cuda", dtype=torch.int32).view(B, L // PAGE))
        if ragged:  # lengths uniform in [1, L]: only the paged variants read lengths
            seq = torch.randint(1, L + 1, (B,), device="cuda", generator=g, dtype=torch.int32)
        else:
            seq = torch.full((B,), L, device="cuda", dtype=torch.int32)
        ref = reference(*sets[0], seq if ragged else None)
        outs = [torch.empty(B, H, 1, R, device="cuda", dtype=torch.bfloat16) for _ in sets]

        def ours(fn, **kw):
            def run_one(i):
                q, cache = sets[i]
                return fn(q[..., :R], q[..., R:], cache[..., :R], cache[..., R:], SCALE, False, out=outs[i], **kw)
            return run_one

        def paged(gluon, **kw):
            def run_one(i):
                q, cache = sets[i]
                return triton_decode_wide.mla_decode_attention_wide(
                    q[..., :R], q[..., R:], None, None, SCALE, False, out=outs[i], gluon=gluon, **kw,
                    paged=(cache.view(B * L // PAGE, PAGE * (R + DR)), table, seq, PAGE, (1, R + DR)))
            return run_one

        def old_paged(i):
            q, cache = sets[i]
            return triton_decode.mla_decode_attention(
                q[..., :R], q[..., R:], None, None, SCALE, False, out=outs[i], block_h=old_rows_per_program(H, B),
                paged=(cache.view(B * L // PAGE, PAGE * (R + DR)), table, seq, PAGE, (1, R + DR)))

        # "-paged": the default schedule; "-paged-oldsched": the same program on the old one
        # (splits per request from the longest length); "-paged-balanced" (the seesaw's, whose
        # default depends on the batch): on the balanced one
        if ragged:
            variants = {"old-paged": old_paged}
        else:
            variants = {
                "old": ours(triton_decode.mla_decode_attention, block_h=old_rows_per_program(H, B)),
                "wide": ours(triton_decode_wide.mla_decode_attention_wide, gluon=False),
            }
        variants["wide-paged"] = paged(False)
        variants["wide-paged-oldsched"] = paged(False, schedule="split")
        if H >= 64:  # the Gluon programs are 64-row ones; gluon2 / gluon3 = pipelined / seesaw
            for name, prog, kw in (("gluon", "split", {}), ("gluon2", "pipelined", {}),
                                   ("gluon3", "seesaw", dict(seesaw_tma=False)),
                                   ("gluon3-tma", "seesaw", dict(seesaw_tma=True))):
                if not ragged:
                    variants[name] = ours(triton_decode_wide.mla_decode_attention_wide, gluon=True,
                                          gluon_program=prog, **kw)
                variants[f"{name}-paged"] = paged(True, gluon_program=prog, **kw)
                variants[f"{name}-paged-oldsched"] = paged(True, gluon_program=prog, schedule="split", **kw)
                if prog == "seesaw":  # (the other programs' default is the balanced one)
                    variants[f"{name}-paged-balanced"] = paged(True, gluon_program=prog, schedule="balanced", **kw)
            q, cache = sets[0]
            print(f"B={B} L={L} H={H} seesaw TMA descriptors apply: contiguous "
                  f"{tma_plan(cache[..., :R], cache[..., R:], None, R, DR) is not None}, paged "
                  f"{tma_plan(None, None, (cache.view(B * L // PAGE, -1), table, seq, PAGE, (1, R + DR)), R, DR) is not None}",
                  flush=True)
        if fm is not None:
            fwd, meta_fn = fm
            metas = [meta_fn()[0] for _ in sets]

            def flash(i):
                q, cache = sets[i]
                o, _ = fwd(q.transpose(1, 2), cache.view(B * L // PAGE, PAGE, 1, R + DR), table, seq, R,
                           metas[i], softmax_scale=SCALE, causal=False, use_legacy=True)
                return o.transpose(1, 2)
            variants["flashmla"] = flash
        if want:
            variants = {k: v for k, v in variants.items() if k in want}
        keys = int(seq.sum()) if ragged else B * L  # the keys read: what the floors count
        floor = keys * (R + DR) * 2 / bw * 1e6
        floor_c = keys * H * (2 * (R + DR) + 2 * R) / peak * 1e6
        row = dict(B=B, L=L, H=H, ragged=ragged, copies=copies, floor_us=floor, compute_floor_us=floor_c,
                   t={}, err={})
        for name, fn in variants.items():
            try:
                for o in outs:
                    o.fill_(float("nan"))
                t0 = time.perf_counter()
                got = fn(0)
                torch.cuda.synchronize()
                compile_s = time.perf_counter() - t0
                err = ((got.float() - ref).norm() / ref.norm()).item()
                row["err"][name] = err
                if not err < 2e-2:  # NaN fails too
                    print(f"B={B} L={L} H={H} {name}: rel. error {err:.2e}: not timed", flush=True)
                    continue
                for i in range(1, copies):
                    fn(i)
                t = triton.testing.do_bench_cudagraph(lambda: [fn(i) for i in range(copies)], rep=30,
                                                      return_mode="median") * 1e3 / copies
                row["t"][name] = t
                print(f"B={B} L={L} H={H} {name}: {t:.1f} us, {max(floor, floor_c) / t:.0%} of max(floor), "
                      f"err {err:.1e} (first call {compile_s:.1f} s)", flush=True)
            except Exception as e:  # noqa: BLE001
                row["err"][name] = f"{type(e).__name__}: {e}"
                print(f"B={B} L={L} H={H} {name}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
                traceback.print_exc()
        results.append(row)
        del sets, outs, ref
        torch.cuda.empty_cache()
    names = list(dict.fromkeys(n for r in results for n in r["t"]))  # in the order they ran
    lines = ["| B | L | H | floor us | compute floor us | " + " | ".join(f"{n} us (% max)" for n in names)
             + " | best wide / old | best gluon / best wide | best ours / flashmla | old sched / balanced |"
             + " seesaw cp.async / tma | flashmla / seesaw tma |",
             "|---" * (5 + len(names) + 6) + "|"]
    for r in results:
        m = max(r["floor_us"], r["compute_floor_us"])
        cells = [f"{r['t'][n]:.1f} ({m / r['t'][n]:.0%})" if n in r["t"] else "-" for n in names]
        wides = [r["t"][n] for n in r["t"] if n.startswith("wide")]
        bw_ = min(wides) if wides else None
        olds = [r["t"][n] for n in r["t"] if n.startswith("old")]
        vs_old = f"{min(olds) / bw_:.2f}x" if bw_ and olds else "-"
        gl_ = min([r["t"][n] for n in r["t"] if n.startswith("gluon")] or [0]) or None
        best = min(t for t in (bw_, gl_) if t) if (bw_ or gl_) else None
        vs_wide = f"{bw_ / gl_:.2f}x" if bw_ and gl_ else "-"
        vs_fm = f"{r['t']['flashmla'] / best:.2f}x" if best and "flashmla" in r["t"] else "-"
        vs_sched = schedule_speedup(r["t"])
        cpa = [r["t"][n] for n in ("gluon3", "gluon3-paged") if n in r["t"]]
        tma = [r["t"][n] for n in ("gluon3-tma", "gluon3-tma-paged") if n in r["t"]]
        vs_tma = f"{min(cpa) / min(tma):.2f}x" if cpa and tma else "-"
        fm_tma = f"{r['t']['flashmla'] / min(tma):.2f}x" if tma and "flashmla" in r["t"] else "-"
        lines.append(f"| {r['B']} | {length(r)} | {r['H']} | {r['floor_us']:.1f} | {r['compute_floor_us']:.1f} | "
                     + " | ".join(cells) + f" | {vs_old} | {vs_wide} | {vs_fm} | {vs_sched} | {vs_tma} | {fm_tma} |")
    errs = ["| B | L | H | " + " | ".join(names) + " |", "|---" * (3 + len(names)) + "|"]
    for r in results:
        errs.append(f"| {r['B']} | {length(r)} | {r['H']} | " + " | ".join(
            (f"{r['err'][n]:.1e}" if isinstance(r["err"].get(n), float) else str(r["err"].get(n, "-"))[:40])
            for n in names) + " |")
    table = "\n".join(lines)
    text = f"{head}\n\nspeed-ups: time of old / fastest wide, fastest wide / fastest gluon, flashmla / fastest of ours, " \
           f"one program's paged time on the old schedule / on the balanced one\n\n{table}\n\n" \
           f"rel. error vs fp32\n\n" + "\n".join(errs) + "\n"
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "decode_wide.md"), "w") as f:
            f.write(text)
        with open(os.path.join(os.environ["OUT"], "decode_wide.json"), "w") as f:
            json.dump(dict(head=head, results=results), f, indent=1)
        plot(dict(head=head, results=results), os.path.join(os.environ["OUT"], "decode_wide_roofline.png"))
    print("\n" + text)


def length(r: dict) -> str:
    """A result's L, marked when the lengths were ragged (uniform in [1, L])."""
    return f"{r['L']} ragged" if r.get("ragged") else f"{r['L']}"


def plot(saved: dict, path: str) -> bool:
    """The roofline of a results file: one series per variant (FlashMLA's included), a
    point per case at its arithmetic intensity (FLOPs / cache bytes, from the floors)
    and achieved FLOP/s; the roof from the run's own copy bandwidth and matmul rate."""
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import plots

    bw = float(saved["head"].split("copy bandwidth ")[1].split(" GB/s")[0]) * 1e9
    peak = float(saved["head"].split("bf16 matmul ")[1].split(" TFLOP/s")[0]) * 1e12
    points = []
    for r in saved["results"]:
        flops, nbytes = r["compute_floor_us"] * 1e-6 * peak, r["floor_us"] * 1e-6 * bw
        for name, t in r["t"].items():
            points.append((f"B={r['B']} L={length(r)} H={r['H']}", flops / nbytes, flops / (t * 1e-6), name))
    return plots.roofline(path, plots.by_series(points), peak, bw,
                          f"MLA decode, bf16: {saved['head'].split(';')[0]}", xlim=(1.0, 1000.0))


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--plot"]:
        with open(sys.argv[2]) as f:
            plot(json.load(f), sys.argv[3])
    else:
        main()
