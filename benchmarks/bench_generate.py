"""One decode step of a DeepSeek-V3-attention model through transformers, on a GPU:
eager, torch.compile(backend="inductor") and backend="mla", same mode, same run.

Run: `python benchmarks/bench_generate.py` (mla_compile and transformers installed).
Model: DeepseekV3 attention dims (H=16, q_lora 1536, kv_lora 512, nope/rope/v
128/64/128), 2 dense layers with a small MLP so that attention dominates, random
weights, bf16, static cache of L tokens (transformers attends over the whole static
cache, masked, every step), B sequences. A decode step is timed as the mean of 20
CUDA-graph replays (mode="reduce-overhead" for both compiled backends; eager is
timed with events). Then end-to-end greedy `generate` (512-token prompt, 128 new
tokens) for eager and for transformers' compile path with each backend. Prints a
markdown table (also $OUT/generate_bench.md).
"""
from __future__ import annotations

import os
import time

import torch
import transformers

CASES = [(1, 1024), (32, 1024), (1, 4096), (32, 4096)]


def make_model():
    config = transformers.DeepseekV3Config(
        vocab_size=1024, hidden_size=2048, intermediate_size=256, moe_intermediate_size=256,
        num_hidden_layers=2, first_k_dense_replace=2, num_attention_heads=16, num_key_value_heads=16,
        q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
        n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, max_position_embeddings=8192)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return transformers.DeepseekV3ForCausalLM(config).cuda().to(torch.bfloat16).eval()


def step_time(fn, reps=20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e6


def generate_row(model, B, prompt=512, new=128) -> str:
    """End-to-end greedy generate (static cache; transformers' compile path, its default
    mode reduce-overhead), best of 2 timed runs after a warm-up of the same length."""
    ids = torch.randint(0, 1024, (B, prompt), device="cuda", generator=torch.Generator("cuda").manual_seed(B))
    rates, outs = {}, {}
    for name in ("eager", "inductor", "mla"):
        torch._dynamo.reset()
        kwargs = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, cache_implementation="static")
        if name != "eager":
            kwargs["compile_config"] = transformers.CompileConfig(backend=name, fullgraph=True)
        with torch.no_grad():
            outs[name] = model.generate(ids, **kwargs)
            best = float("inf")
            for _ in range(2):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                model.generate(ids, **kwargs)
                torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t0)
        rates[name] = B * new / best
    same = torch.equal(outs["mla"], outs["eager"])
    return (f"| {B}, {prompt}, {new} | {rates['eager']:.0f} | {rates['inductor']:.0f} | {rates['mla']:.0f} | "
            f"{same} |")


def main() -> None:
    device = torch.cuda.get_device_name()
    model = make_model()
    rows = ["| B | L | eager us | inductor us | mla us | inductor/mla | mla fused attention |",
            "|---|---|---|---|---|---|---|"]
    for B, L in CASES:
        cache = transformers.StaticCache(config=model.config, max_cache_len=L)
        ids = torch.randint(0, 1024, (B, 1), device="cuda")
        pos = torch.tensor([L // 2], device="cuda")  # half the cache filled (zeros: timing only)
        times, fused = {}, "-"
        for name in ("eager", "inductor", "mla"):
            torch._dynamo.reset()
            reports = []
            if name == "eager":
                fwd = model.forward
            elif name == "inductor":
                fwd = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
            else:
                fwd = torch.compile(model.forward, backend="mla", fullgraph=True,
                                    options={"mode": "reduce-overhead", "report": reports.append})
            with torch.no_grad():
                times[name] = step_time(lambda: fwd(ids, past_key_values=cache, cache_position=pos,
                                                    use_cache=True).logits)
            if reports:
                fused = ", ".join(f"{k}={v}" for k, v in reports[0].counts().items())
        rows.append(f"| {B} | {L} | {times['eager']:.0f} | {times['inductor']:.0f} | {times['mla']:.0f} | "
                    f"{times['inductor'] / times['mla']:.2f} | {fused} |")
        print(rows[-1], flush=True)
    rows += ["", "| generate: B, prompt, new | eager tok/s | inductor tok/s | mla tok/s | tokens equal eager |",
             "|---|---|---|---|---|"]
    for B in (1, 32):
        rows.append(generate_row(model, B))
        print(rows[-1], flush=True)
    table = "\n".join(rows)
    print(f"\n{device}, torch {torch.__version__}, transformers {transformers.__version__}\n{table}")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "generate_bench.md"), "w") as f:
            f.write(f"{device}, torch {torch.__version__}, transformers {transformers.__version__}\n\n{table}\n")


if __name__ == "__main__":
    main()
