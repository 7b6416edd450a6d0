"""One decode step of attention written the way DeepSeek's inference code writes it in
"absorb" mode (tests/latent_models.py: latent and rope caches as buffers updated by
slice assignment, scores as two einsums over them): eager, torch.compile
(backend="inductor") and backend="mla", same mode, same run, on a GPU.

Run: `python benchmarks/bench_absorbed.py` (mla_compile installed; run from the repo
root: the model comes from tests/latent_models.py). DeepSeek-V3 attention dims (latent
512, rope 64, nope 128, v 128, hidden 2048), H heads, bf16, a cache of L tokens of
which the step attends to all, B sequences. Compiled backends run under CUDA graphs
(mode="reduce-overhead", start position marked dynamic by a warm-up over two
positions); a step is the mean of 50 calls. The mla graph must contain one
mla.latent_attention. Prints a markdown table (also $OUT/absorbed_bench.md).
"""
from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from latent_models import AbsorbedMLA, freqs_cis  # noqa: E402

CASES = [(1, 4096, 16), (32, 4096, 16), (32, 4096, 128), (64, 8192, 16)]


def step_time(fn, reps=50) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e6


def main() -> None:
    device = torch.cuda.get_device_name()
    print(f"device: {device}; torch {torch.__version__}")
    rows = ["| B | L | H | eager us | inductor us | mla us | inductor/mla | eager/mla | max abs diff vs eager |",
            "|---|---|---|---|---|---|---|---|---|"]
    for B, L, H in CASES:
        torch.manual_seed(0)
        model = AbsorbedMLA(dim=2048, heads=H, rank=512, nope=128, rope=64, v=128, max_batch=B, max_len=L,
                            dtype=torch.bfloat16).cuda().eval()
        model.kv_cache.normal_()
        model.pe_cache.normal_()
        freqs = freqs_cis(64, L).cuda()
        x = torch.randn(B, 1, 2048, device="cuda", dtype=torch.bfloat16)
        pos = L - 1
        times, outs = {}, {}
        with torch.no_grad():
            outs["eager"] = model(x, pos, freqs[pos:pos + 1]).clone()
            times["eager"] = step_time(lambda: model(x, pos, freqs[pos:pos + 1]))
            for name in ("inductor", "mla"):
                torch._dynamo.reset()
                reports = []
                opts = {"report": reports.append} if name == "mla" else None
                fn = torch.compile(model, backend=name, mode="reduce-overhead", options=opts) if name == "inductor" \
                    else torch.compile(model, backend="mla", options={**opts, "mode": "reduce-overhead"})
                for p in (pos - 2, pos - 1):  # a second position makes it dynamic: one graph for every step
                    fn(x, p, freqs[p:p + 1])
                outs[name] = fn(x, pos, freqs[pos:pos + 1]).clone()
                times[name] = step_time(lambda: fn(x, pos, freqs[pos:pos + 1]))
                if name == "mla":
                    ops = [m for r in reports for m in r.matches if m.params.get("form") == "latent"]
                    assert ops, "no mla.latent_attention in the compiled graphs"
        diff = max((outs[n].float() - outs["eager"].float()).abs().max().item() for n in ("inductor", "mla"))
        rows.append(f"| {B} | {L} | {H} | {times['eager']:.0f} | {times['inductor']:.0f} | {times['mla']:.0f} | "
                    f"{times['inductor'] / times['mla']:.2f} | {times['eager'] / times['mla']:.2f} | {diff:.1e} |")
        print(rows[-1], flush=True)
        del model
        torch.cuda.empty_cache()
    table = "\n".join(rows)
    print(f"\n{device}\n{table}")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "absorbed_bench.md"), "w") as f:
            f.write(f"{device}, torch {torch.__version__}\n\n{table}\n")


if __name__ == "__main__":
    main()
