"""Tensor parallel decode step on two GPUs of one host: TP=2 against TP=1, backend="mla"
against Inductor, same run (issue 15).

Run: `python benchmarks/bench_tp.py` from the repository root (mla_compile and
transformers installed, 2 GPUs). It saves one random model, then starts
`torch.distributed.run --nproc-per-node 1` and `--nproc-per-node 2` on it (fresh
processes each) and merges what they measured.

Model: DeepSeek-V3 attention dims (H=128, hidden 7168, q_lora 1536, kv_lora 512,
nope/rope/v 128/64/128), 4 dense layers with a small MLP so that attention dominates,
random weights, bf16. TP=2 loads it with the attention-sharding plan of
examples/tensor_parallel.py (DeepSeek-V3's built-in plan replicates attention): 64
heads per rank over the full latent. A decode step is model.forward over a static cache
of L=4096 tokens for B in {1, 32}, timed as the mean of 20 CUDA-graph replays
(mode="reduce-overhead" for both backends), the slower rank's time. Greedy tokens: a
16-token prompt written into the same static cache eagerly, then 8 decode steps of the
timed compiled step, against the same loop in eager (and across TP sizes).

`--dtype float32` runs the same in fp32 (TF32 off), where greedy tokens must agree across
backends and TP sizes (bf16 near-ties can flip between all-reduce orders).
`--tp 1` / `--tp 2` run one TP size (each run's weights are the same: seeded), so the
two fit separate time limits; `--merge bench_tp1.json bench_tp2.json` joins them.
Writes $OUT/bench_tp{1,2}.json per TP size and $OUT/bench_tp.json (or ./): rows, `tp2_over_tp1` (TP=2 time / TP=1
time per backend and B: below 1 is a speed-up), `tokens_equal`, `fused_every_rank`;
and a markdown table ($OUT/bench_tp.md). `--tiny` runs the same plumbing on CPU (gloo,
fp32, tiny dims, no CUDA graphs) to check it, not to time anything.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import transformers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCHES, L, PROMPT, STEPS, LAYERS = (1, 32), 4096, 16, 8, 4


def example_module():
    """examples/tensor_parallel.py: the attention-sharding plan lives there, documented."""
    spec = importlib.util.spec_from_file_location("tp_example", os.path.join(ROOT, "examples", "tensor_parallel.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_config(tiny: bool) -> transformers.DeepseekV3Config:
    dims = dict(hidden_size=64, num_attention_heads=4, q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16,
                qk_rope_head_dim=8, v_head_dim=16, max_position_embeddings=256) if tiny else dict(
        hidden_size=7168, num_attention_heads=128, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
        qk_rope_head_dim=64, v_head_dim=128, max_position_embeddings=8192)
    config = transformers.DeepseekV3Config(
        vocab_size=1024, intermediate_size=256, moe_intermediate_size=256, num_hidden_layers=LAYERS,
        first_k_dense_replace=LAYERS, num_key_value_heads=dims["num_attention_heads"], n_routed_experts=4,
        num_experts_per_tok=2, n_group=1, topk_group=1, tie_word_embeddings=False, **dims)
    config._attn_implementation = "eager"
    return config


def step_time(fn, sync, reps=20) -> float:
    for _ in range(3):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) / reps * 1e6


def child(directory: str, out_path: str, tiny: bool, dtype_name: str = "bfloat16") -> None:
    """One TP size (this process group's world): eager tokens, then per backend and B the
    tokens and the step time; rank 0 writes what every rank saw."""
    import torch.distributed as dist

    gpu = not tiny
    if gpu:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if gpu else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")
    dtype = torch.float32 if tiny else getattr(torch, dtype_name)
    torch.set_float32_matmul_precision("highest")  # no TF32: fp32 means fp32 (the exactness check)
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    config = transformers.AutoConfig.from_pretrained(directory)
    kwargs = {}
    if world > 1:
        plan = example_module().attention_sharding_plan(transformers.DeepseekV3ForCausalLM, config)
        kwargs["distributed_config"] = transformers.DistributedConfig(tp_plan=plan)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, **kwargs).eval()
    if world == 1:
        model.to(device)
    heads = config.num_attention_heads // world
    mode = None if tiny else "reduce-overhead"
    rows, tokens, fused = [], {}, True
    for B in BATCHES:
        prompt = torch.randint(0, config.vocab_size, (B, PROMPT), generator=torch.Generator().manual_seed(B))
        prompt = prompt.to(device)
        for name in ("eager", "inductor", "mla"):
            torch._dynamo.reset()
            reports = []
            if name == "eager":
                fwd = model.forward
            elif name == "inductor":
                fwd = torch.compile(model.forward, fullgraph=True, mode=mode)
            else:
                fwd = torch.compile(model.forward, backend="mla", fullgraph=True,
                                    options={"mode": mode, "report": reports.append})
            cache = transformers.StaticCache(config=model.config, max_cache_len=L)
            with torch.no_grad():
                logits = model(prompt, past_key_values=cache, use_cache=True,
                               cache_position=torch.arange(PROMPT, device=device)).logits
                ids = logits[:, -1:].argmax(-1)
                seq = [ids]
                for p in range(PROMPT, PROMPT + STEPS - 1):  # greedy, through the timed step
                    ids = fwd(ids, past_key_values=cache, cache_position=torch.tensor([p], device=device),
                              use_cache=True).logits[:, -1:].argmax(-1).clone()
                    seq.append(ids)
                tokens[f"{name} B={B}"] = torch.cat(seq, 1).cpu().tolist()
                pos = torch.tensor([L // 2], device=device)
                dist.barrier()
                us = step_time(lambda: fwd(ids, past_key_values=cache, cache_position=pos, use_cache=True).logits,
                               sync)
            if name == "mla":
                seen = [(m.params["H"], m.params["form"]) for r in reports for m in r.matches
                        if m.pattern == "attention.mla"]
                fused = fused and bool(reports) and all(
                    sum(m.pattern == "attention.mla" and m.params["H"] == heads for m in r.matches) == LAYERS
                    for r in reports)
            else:
                seen = []
            slowest = [None] * world
            dist.all_gather_object(slowest, us)
            rows.append({"tp": world, "B": B, "L": L, "backend": name, "us": max(slowest),
                         "attention": sorted(set(seen))})
    every = [None] * world
    dist.all_gather_object(every, {"fused": fused, "tokens": tokens})
    if rank == 0:
        result = {"tp": world, "rows": rows, "fused_every_rank": all(e["fused"] for e in every),
                  "tokens": every[0]["tokens"], "ranks_agree": all(e["tokens"] == every[0]["tokens"] for e in every),
                  "device": torch.cuda.get_device_name() if gpu else "cpu", "torch": torch.__version__,
                  "dtype": str(dtype).replace("torch.", ""),
                  "transformers": transformers.__version__, "date": time.strftime("%Y-%m-%d")}
        with open(out_path, "w") as f:
            json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


def merge(one: dict, two: dict) -> dict:
    time_of = {(r["tp"], r["B"], r["backend"]): r["us"] for r in one["rows"] + two["rows"]}
    ratio = {f"{name} B={B}": time_of[(2, B, name)] / time_of[(1, B, name)]
             for B in BATCHES for name in ("inductor", "mla")}
    same_as_eager = all(r["tokens"][f"mla B={B}"] == r["tokens"][f"eager B={B}"] for r in (one, two) for B in BATCHES)
    return {
        "device": two["device"], "torch": two["torch"], "transformers": two["transformers"],
        "date": two["date"], "dtype": two.get("dtype", "bfloat16"), "rows": one["rows"] + two["rows"],
        "tp2_over_tp1": ratio,
        # mla's greedy tokens equal eager's at the same TP size, on every rank
        "tokens_equal": same_as_eager and one["ranks_agree"] and two["ranks_agree"],
        # informative: bf16 all-reduce order can flip a near-tie between TP sizes
        "tokens_equal_tp2_tp1": one["tokens"] == two["tokens"],
        "tokens_mla_equal_inductor": all(r["tokens"][f"mla B={B}"] == r["tokens"][f"inductor B={B}"]
                                         for r in (one, two) for B in BATCHES),
        "fused_every_rank": one["fused_every_rank"] and two["fused_every_rank"],
    }


def table(result: dict) -> str:
    time_of = {(r["tp"], r["B"], r["backend"]): r["us"] for r in result["rows"]}
    lines = ["| B | L | TP | eager us | inductor us | mla us | inductor/mla | mla TP2/TP1 | inductor TP2/TP1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for B in BATCHES:
        for tp in (1, 2):
            e, i, m = (time_of[(tp, B, n)] for n in ("eager", "inductor", "mla"))
            scale = (f"{result['tp2_over_tp1'][f'mla B={B}']:.2f} | {result['tp2_over_tp1'][f'inductor B={B}']:.2f}"
                     if tp == 2 else "- | -")
            lines.append(f"| {B} | {L} | {tp} | {e:.0f} | {i:.0f} | {m:.0f} | {i / m:.2f} | {scale} |")
    flags = ", ".join(f"{k}={result[k]}" for k in ("tokens_equal", "tokens_equal_tp2_tp1",
                                                    "tokens_mla_equal_inductor", "fused_every_rank"))
    return (f"{result['device']}, torch {result['torch']}, transformers {result['transformers']}, "
            f"{result.get('dtype', 'bfloat16')}, {result['date']}\n\n" + "\n".join(lines) + f"\n\n{flags}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU plumbing check: gloo, fp32, tiny dims, no graphs")
    parser.add_argument("--tp", type=int, choices=[1, 2], action="append",
                        help="run only this TP size (repeatable; default both): $OUT/bench_tp{N}.json")
    parser.add_argument("--merge", nargs=2, metavar=("TP1_JSON", "TP2_JSON"),
                        help="merge two runs' bench_tp1.json and bench_tp2.json (no GPU needed)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16",
                        help="float32: the exactness check (greedy tokens equal across backends and TP sizes)")
    parser.add_argument("--child", nargs=2, metavar=("MODEL_DIR", "OUT_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child, args.tiny, args.dtype)
    out_dir = os.environ.get("OUT", ".")
    parts = {}
    if args.merge:
        for n, path in zip((1, 2), args.merge):
            with open(path) as f:
                parts[n] = json.load(f)
    else:
        sizes = sorted(set(args.tp or (1, 2)))
        if not args.tiny and torch.cuda.device_count() < max(sizes):
            sys.exit(f"bench_tp.py needs {max(sizes)} GPUs (or --tiny for a CPU check of the plumbing)")
        with tempfile.TemporaryDirectory(prefix="bench_tp_") as directory:
            torch.manual_seed(0)  # the same weights in every run: --tp 1 and --tp 2 may run apart
            transformers.DeepseekV3ForCausalLM(make_config(args.tiny)).to(torch.bfloat16).save_pretrained(directory)
            # (saved in bf16 either way: the same weights, loaded up to float32 for the check)
            for n in sizes:
                path = os.path.join(out_dir, f"bench_tp{n}.json")
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
                       os.path.abspath(__file__), "--child", directory, path, "--dtype", args.dtype] + (
                           ["--tiny"] if args.tiny else [])
                subprocess.run(cmd, check=True, cwd=ROOT)
                with open(path) as f:
                    parts[n] = json.load(f)
    if len(parts) < 2:
        print(f"wrote {out_dir}/bench_tp{sizes[0]}.json; merge with --merge bench_tp1.json bench_tp2.json")
        return
    result = merge(parts[1], parts[2])
    text = table(result)
    print(text)
    with open(os.path.join(out_dir, "bench_tp.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out_dir, "bench_tp.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
