"""Decode steps and prefill of a transformers DeepSeek-V3-attention model on a GPU, in
torch.compile's default mode (no CUDA graphs) and in reduce-overhead (CUDA graphs):
Inductor vs backend="mla" (our kernels launched by Inductor's generated code) vs
backend="mla" with launch="op" (each fused op called through torch.ops.mla), same
run; plus the first call's time (compile) of each, and a per-op host cost table.

Run: `OUT=dir python benchmarks/bench_modes.py [--quick]` (mla_compile and
transformers installed). Model: DeepSeek-V3 attention dims (q_lora 1536, kv_lora 512,
nope/rope/v 128/64/128), H heads, 4 dense layers (hidden 2048, MLP 4096), vocab
32000 (a real lm_head), random weights, bf16, static cache of L = 4096 tokens (half
filled with random latents), B sequences. A decode step is the mean wall time of 10 steps (default mode is host-bound:
wall time is what a user waits), the median of 3 rounds per compile, then the median
over 3 compiles per backend, the backends alternating (see decode_rows).
Prints markdown tables (also $OUT/modes_bench.md).
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import transformers

L = 4096
DECODE = [(1, 16), (32, 16), (1, 128), (32, 128)]
BACKENDS = {"inductor": ("inductor", {}), "mla": ("mla", {}), "mla launch=op": ("mla", {"launch": "op"})}


def make_model(H: int, attn: str = "sdpa"):
    config = transformers.DeepseekV3Config(
        vocab_size=32000, hidden_size=2048, intermediate_size=4096, moe_intermediate_size=256,
        num_hidden_layers=4, first_k_dense_replace=4, num_attention_heads=H, num_key_value_heads=H,
        q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
        n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, max_position_embeddings=8192)
    config._attn_implementation = attn
    torch.manual_seed(0)
    return transformers.DeepseekV3ForCausalLM(config).cuda().to(torch.bfloat16).eval()


def compiled(model, backend: str, mode: str | None, extra: dict, reports: list | None):
    """A fresh compile (Dynamo reset); `reports` None: mla without a report, so that its
    FX graph cache serves a recompile as Inductor's does."""
    torch._dynamo.reset()
    if backend == "inductor":
        return torch.compile(model.forward, fullgraph=True, mode=mode)
    report = {} if reports is None else {"report": reports.append}
    return torch.compile(model.forward, backend="mla", fullgraph=True, options={"mode": mode, **report, **extra})


def timed(fn, warm: int = 5, reps: int = 30) -> tuple[float, float]:
    """(first call seconds, mean microseconds of the later calls)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return first, (time.perf_counter() - t0) / reps * 1e6


def counts(reports) -> str:
    total: dict = {}
    for r in reports:
        for k, v in r.counts().items():
            total[k] = total.get(k, 0) + v
    return ", ".join(f"{k}={v}" for k, v in sorted(total.items())) or "-"


def decode_rows(modes, cases, backends, compiles: int = 3, rounds: int = 3, reps: int = 10) -> list[str]:
    """Each backend compiled `compiles` times, the backends alternating (a host-bound
    step's time moves by up to ~30% from one compile of the same graph to the next, H200);
    per compile the median of `rounds` rounds of `reps` steps; reported: the median over
    the compiles, with their range. The first call is the first compile's (the later ones
    are served by the FX graph cache); mla's report comes from its first compile."""
    rows = ["| mode | H | B | backend | step us (median over compiles) | range over compiles | vs inductor | "
            "first call s | rewrites |", "|---|---|---|---|---|---|---|---|---|"]
    for H in sorted({h for _, h in cases}):
        model = make_model(H)
        for B in [b for b, h in cases if h == H]:
            cache = transformers.StaticCache(config=model.config, max_cache_len=L)
            gen = torch.Generator("cuda").manual_seed(B)
            with torch.no_grad():  # fill half the cache as a prefill would (values: timing only)
                prompt = torch.randint(0, 32000, (B, L // 2), device="cuda", generator=gen)
                model(prompt, past_key_values=cache, use_cache=True)
            ids = torch.randint(0, 32000, (B, 1), device="cuda", generator=gen)
            pos = torch.tensor([L // 2], device="cuda")
            for mode in modes:
                times = {name: [] for name in backends}
                firsts, notes = {}, {}
                for k in range(compiles):
                    for name in backends:
                        backend, extra = BACKENDS[name]
                        reports: list = []
                        fwd = compiled(model, backend, mode, extra, reports if k == 0 else None)
                        with torch.no_grad():
                            step = lambda: fwd(ids, past_key_values=cache, cache_position=pos,  # noqa: E731
                                               use_cache=True).logits
                            first, _ = timed(step, warm=5, reps=1)
                            times[name].append(sorted(timed(step, warm=2, reps=reps)[1]
                                                      for _ in range(rounds))[rounds // 2])
                        if k == 0:
                            firsts[name], notes[name] = first, counts(reports)
                base = None
                for name in backends:
                    ts = sorted(times[name])
                    us = ts[len(ts) // 2]
                    base = base or us
                    rows.append(f"| {mode or 'default'} | {H} | {B} | {name} | {us:.0f} | {ts[0]:.0f}-{ts[-1]:.0f} | "
                                f"{base / us:.2f}x | {firsts[name]:.1f} | {notes[name]} |")
                    print(rows[-1], flush=True)
            del cache
        del model
        torch.cuda.empty_cache()
    return rows


def prefill_rows(cases, backends) -> list[str]:
    rows = ["| H | B, S | backend | forward us | vs inductor | first call s | rewrites |",
            "|---|---|---|---|---|---|---|"]
    for H, B, S in cases:
        model = make_model(H)
        ids = torch.randint(0, 32000, (B, S), device="cuda", generator=torch.Generator("cuda").manual_seed(S))
        base = None
        for name in backends:
            backend, extra = BACKENDS[name]
            reports: list = []
            fwd = compiled(model, backend, None, extra, reports)
            with torch.no_grad():
                first, us = timed(lambda: fwd(ids, use_cache=False).logits, warm=3, reps=10)
            base = base or us
            rows.append(f"| {H} | {B}, {S} | {name} | {us:.0f} | {base / us:.2f}x | {first:.1f} | "
                        f"{counts(reports)} |")
            print(rows[-1], flush=True)
        del model
        torch.cuda.empty_cache()
    return rows


def op_cost_rows() -> list[str]:
    """Host cost of one decode attention (B=1, H=16, L=4096): the op called eagerly, a
    compiled graph holding only the op (launch=op), the same graph with Inductor
    launching the kernels, and an Inductor kernel of similar size (softmax over the
    scores' shape); wall time per call vs GPU time (CUDA-graph replay)."""
    from mla_compile.custom_ops.latent_attention import latent_attention

    B, H, R, Dr = 1, 16, 512, 64
    dev, dt = "cuda", torch.bfloat16
    q = torch.randn(B, H, 1, R, device=dev, dtype=dt)
    qr = torch.randn(B, H, 1, Dr, device=dev, dtype=dt)
    c = torch.randn(B, L, R, device=dev, dtype=dt)
    kr = torch.randn(B, L, Dr, device=dev, dtype=dt)
    scores = torch.randn(B, H, 1, L, device=dev, dtype=dt)

    def fn(q, qr, c, kr):
        return torch.ops.mla.latent_attention(q, qr, c, kr, 0.1, False)

    variants = {
        "op called eagerly": lambda: latent_attention(q, qr, c, kr, 0.1, False),
        "compiled, launch=op": torch.compile(fn, backend="mla", options={"launch": "op"}),
        "compiled, Inductor launches": torch.compile(fn, backend="mla"),
        "Inductor softmax kernel": torch.compile(lambda s: s.softmax(-1)),
    }
    args = {"Inductor softmax kernel": (scores,)}
    rows = ["| call | wall us per call | GPU us (CUDA graph) |", "|---|---|---|"]
    for name, f in variants.items():
        a = args.get(name, (q, qr, c, kr) if name.startswith("compiled") else ())
        _, wall = timed(lambda: f(*a), warm=10, reps=200)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            f(*a)
        _, gpu = timed(graph.replay, warm=10, reps=200)
        rows.append(f"| {name} | {wall:.1f} | {gpu:.1f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="H=16 B=1 and the op costs only")
    parser.add_argument("--part", choices=["decode", "prefill", "ops", "all"], default="all")
    parser.add_argument("--launch-op", action="store_true", help="decode also with launch='op'")
    parser.add_argument("--cases", help="decode cases as HxB,... (default: all)")
    args = parser.parse_args()
    header = f"{torch.cuda.get_device_name()}, torch {torch.__version__}, transformers {transformers.__version__}"
    print(header, flush=True)
    out = [header, ""]
    if args.part in ("ops", "all"):
        out += op_cost_rows() + [""]
    if args.part in ("decode", "all"):
        cases = DECODE[:1] if args.quick else DECODE
        if args.cases:  # "HxB,..."
            cases = [(int(b), int(h)) for h, b in (c.split("x") for c in args.cases.split(","))]
        default_backends = list(BACKENDS) if args.launch_op else ["inductor", "mla"]
        out += decode_rows([None], cases, default_backends) + [""]
        if not args.quick:
            out += decode_rows(["reduce-overhead"], cases, ["inductor", "mla"]) + [""]
    if args.part in ("prefill", "all"):
        out += prefill_rows([(16, 4, 512), (16, 1, 1024)], list(BACKENDS))
    table = "\n".join(out)
    print("\n" + table)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], f"modes_bench_{args.part}.md"), "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
