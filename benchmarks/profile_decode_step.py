"""Where a default-mode decode step's time goes (issue 11): kernel launches per step, GPU
time per step and wall time per step, Inductor vs backend="mla", each compiled twice,
plus the top of a cProfile of the first compile of each.

Run on a GPU: `python benchmarks/profile_decode_step.py [H] [B]` (default H=16, B=1); the
model and cache are bench_modes.py's (DeepSeek-V3 attention dims, 4 layers, static cache
of 4096 tokens, half filled).
"""
from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time

import torch
import transformers

from bench_modes import L, compiled, make_model


def profile(step) -> tuple[float, float, float, str]:
    """(wall us per step, launches per step, GPU us per step, cProfile top lines)."""
    for _ in range(20):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(50):
        step()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / 50 * 1e6
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(10):
            step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    launches = sum(e.count for e in events if "LaunchKernel" in e.key) / 10
    gpu = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA) / 10
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(20):
        step()
    torch.cuda.synchronize()
    pr.disable()
    text = io.StringIO()
    pstats.Stats(pr, stream=text).sort_stats("tottime").print_stats(12)
    return wall, launches, gpu, "\n".join(line[:150] for line in text.getvalue().splitlines()[6:22])


def main() -> None:
    H, B = (int(a) for a in (sys.argv[1:3] if len(sys.argv) > 2 else (16, 1)))
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; H={H} B={B}, default mode")
    model = make_model(H)
    cache = transformers.StaticCache(config=model.config, max_cache_len=L)
    ids = torch.randint(0, 32000, (B, 1), device="cuda")
    pos = torch.tensor([L // 2], device="cuda")
    for k, name in enumerate(["inductor", "mla"] * 2):
        fwd = compiled(model, name, None, {}, None)
        with torch.no_grad():
            wall, launches, gpu, top = profile(
                lambda: fwd(ids, past_key_values=cache, cache_position=pos, use_cache=True).logits)
        print(f"== {name}: {wall:.0f} us wall per step, {launches:.0f} launches per step, {gpu:.0f} us GPU per step")
        if k < 2:
            print(top)


if __name__ == "__main__":
    main()
