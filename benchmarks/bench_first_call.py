"""First-call (compile) time of a decode step, Inductor vs backend="mla", each in a fresh
process: "cold" with empty Inductor and Triton cache folders (a new machine), "warm" a
second process on the caches the cold one left (a user's second run of the script).

Run: `OUT=dir python benchmarks/bench_first_call.py` on a CUDA machine (mla_compile and
transformers installed). Model and step: bench_modes.py's (DeepSeek-V3 attention dims,
4 dense layers, bf16, static cache of 4096 tokens half filled, default mode). Each child
prints one JSON line: first call seconds, then Dynamo's compile-time breakdown (the
phases that take the most, mla's passes included as `joint_custom_pre_pass`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

CASES = [(16, 1), (128, 32)]  # (H, B)
PHASES = ("bytecode_tracing", "joint_custom_pre_pass", "compile_fx_inner", "GraphLowering.codegen",
          "async_compile.wait", "decompose_triton_kernel_wrapper_functional")


def child(backend: str, H: int, B: int) -> None:
    import torch
    import transformers
    from torch._dynamo.utils import compile_times

    sys.path.insert(0, os.path.dirname(__file__))
    from bench_modes import L, make_model

    model = make_model(H)
    cache = transformers.StaticCache(config=model.config, max_cache_len=L)
    gen = torch.Generator("cuda").manual_seed(B)
    with torch.no_grad():
        model(torch.randint(0, 32000, (B, L // 2), device="cuda", generator=gen), past_key_values=cache,
              use_cache=True)
    ids = torch.randint(0, 32000, (B, 1), device="cuda", generator=gen)
    pos = torch.tensor([L // 2], device="cuda")
    fwd = torch.compile(model.forward, fullgraph=True, **({"backend": "mla"} if backend == "mla" else {}))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        fwd(ids, past_key_values=cache, cache_position=pos, use_cache=True)
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    names, values = compile_times(repr="csv", aggregate=True)
    phases = {k: round(float(v), 2) for k, v in zip(names, values) if any(p in k for p in PHASES)}
    print(json.dumps({"first_s": round(first, 2), "phases": phases}), flush=True)


def run(backend: str, H: int, B: int, cache_dir: str) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=os.path.join(cache_dir, "inductor"),
               TRITON_CACHE_DIR=os.path.join(cache_dir, "triton"))
    out = subprocess.run([sys.executable, __file__, "--child", backend, str(H), str(B)], env=env,
                         capture_output=True, text=True, timeout=600)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode or not lines:
        raise RuntimeError(f"{backend} H={H} B={B} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    import torch

    rows = [f"{torch.cuda.get_device_name()}, torch {torch.__version__}", "",
            "| H | B | backend | cold first call s | warm first call s | cold vs Inductor | phases (cold, s) |",
            "|---|---|---|---|---|---|---|"]
    for H, B in CASES:
        base = None
        for backend in ("inductor", "mla"):
            with tempfile.TemporaryDirectory() as d:
                cold, warm = run(backend, H, B, d), run(backend, H, B, d)
            base = base or cold["first_s"]
            phases = ", ".join(f"{k} {v}" for k, v in sorted(cold["phases"].items()))
            rows.append(f"| {H} | {B} | {backend} | {cold['first_s']} | {warm['first_s']} | "
                        f"{cold['first_s'] / base:.2f}x | {phases} |")
            print(rows[-1], flush=True)
    table = "\n".join(rows)
    print("\n" + table)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "first_call.md"), "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
