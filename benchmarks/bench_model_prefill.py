"""Prefill (one forward pass) of a transformers DeepSeek-V3-attention model on a GPU, as
a user runs it: eager vs Inductor vs backend="mla" (default torch.compile mode), plus
transformers' own flex_attention (a causal BlockMask, compiled by Inductor) as the
PyTorch-native comparator; issue 16.

Run: `OUT=dir python benchmarks/bench_model_prefill.py [--heads 16 128]` (mla_compile
and transformers installed). Model: benchmarks/bench_modes.make_model (DeepSeek-V3
attention dims, 4 dense layers, real MLP and lm_head, random weights, bf16). For each
(H, attn_implementation, B, S): forward wall time (mean of 10 after 3 warm-ups, 100 below
4096 tokens; ms),
each backend's ratio against the faster of eager and Inductor, the first call (s), and
what our pass did with the mask (the report's `mask`: "causal" means it proved the
materialised mask causal and the kernel skips the upper triangle and reads no mask).
"left-padded" is B=2 with the first quarter of row 1 padded (attention_mask), for sdpa
(on CUDA its boolean mask arrives as where(mask, 0, -65504)) and eager (finfo.min):
both finite fills, which the pass turns into causal + the key-padding vector + the op's
empty_row_fill (mask "additive+causal (key padding, finite fill: empty rows attend all
keys...)"): only the left-pad query tiles walk past the diagonal. mla's
last-token logits are checked against eager's (bf16: max abs diff printed). Prints a
markdown table (also $OUT/model_prefill_H{H}_{attns}.md), with each backend's peak GPU
memory over its compile and timed calls (session 9's mla row at H = 128, S = 32768 ran out
of memory with the Gluon prefill route on: this column is there to find out why).
"""
from __future__ import annotations

import argparse
import os

import torch
import transformers

from bench_modes import make_model, timed

SIZES = [(4, 512), (1, 1024), (1, 4096), (1, 8192), (1, 32768)]
EAGER_IMPL_MAX = 8192  # the eager implementation materialises [B, H, S, S] scores


def mask_kinds(reports) -> str:
    kinds = sorted({m.params.get("mask", "none") for r in reports for m in r.matches
                    if m.pattern == "attention.mla"})
    return "/".join(kinds) or "not fused"


def variants(attn: str):
    """name -> (attn_implementation, compile) for one row group."""
    if attn == "flex_attention":
        return {"flex (inductor)": ("flex_attention", "inductor")}
    return {"eager": (attn, None), "inductor": (attn, "inductor"), "mla": (attn, "mla")}


def run_case(H, attn, B, S, padded, models):
    ids = torch.randint(0, 32000, (B, S), device="cuda", generator=torch.Generator("cuda").manual_seed(S))
    mask = None
    if padded:
        mask = torch.ones(B, S, dtype=torch.long, device="cuda")
        mask[1, : S // 4] = 0
    rows, times, ref = [], {}, None
    for name, (impl, backend) in variants(attn).items():
        model = models.setdefault(impl, make_model(H, impl))
        reports: list = []
        torch._dynamo.reset()
        fwd = model.forward
        if backend == "inductor":  # flex: graph breaks allowed (its mask code fails fullgraph)
            fwd = torch.compile(model.forward, fullgraph=impl != "flex_attention")
        elif backend == "mla":
            fwd = torch.compile(model.forward, backend="mla", fullgraph=True, options={"report": reports.append})
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            with torch.no_grad():
                reps = 10 if B * S >= 4096 else 100  # a 1-2 ms host-bound forward: 10 calls were noise
                first, us = timed(lambda: fwd(ids, attention_mask=mask, use_cache=False).logits, warm=3, reps=reps)
                last = fwd(ids, attention_mask=mask, use_cache=False).logits[:, -1].float()
        except Exception as e:  # e.g. an implementation that does not take these dims
            rows.append((name, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"))
            continue
        ref = last if name == "eager" else ref
        err = f"{(last - ref).abs().max().item():.3f}" if ref is not None and name != "eager" else "-"
        times[name] = us
        peak = torch.cuda.max_memory_allocated() / 2**30
        rows.append((name, us, first, mask_kinds(reports) if backend == "mla" else "-", err, peak))
    best = min((times[n] for n in ("eager", "inductor") if n in times), default=None)
    return rows, best


def table(H: int, sizes, attns) -> list[str]:
    lines = [f"| H | attn | B, S | backend | forward ms | vs best of eager/Inductor | first call s | mask | "
             f"last-token logits max diff vs eager | peak GiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    cases = [(attn, B, S, False) for attn in attns for B, S in sizes]
    cases += [(attn, 2, 4096, True) for attn in ("sdpa", "eager") if attn in attns]
    best_by_size: dict = {}
    models: dict = {}
    for attn, B, S, padded in cases:
        impl_ok = attn != "eager" or S <= EAGER_IMPL_MAX
        if not impl_ok or (attn == "flex_attention" and S > 8192):
            continue
        rows, best = run_case(H, attn, B, S, padded, models)
        best_by_size.setdefault((B, S, padded), best)
        best = best or best_by_size.get((B, S, padded))
        shape = f"{B}, {S}" + (" left-padded" if padded else "")
        for row in rows:
            if isinstance(row[1], str):
                lines.append(f"| {H} | {attn} | {shape} | {row[0]} | {row[1]} | | | | | |")
            else:
                name, us, first, mask, err, peak = row
                ratio = f"{best / us:.2f}x" if best else "-"
                lines.append(f"| {H} | {attn} | {shape} | {name} | {us / 1e3:.2f} | {ratio} | {first:.1f} | "
                             f"{mask} | {err} | {peak:.1f} |")
            print(lines[-1], flush=True)
        torch.cuda.empty_cache()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--heads", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--sizes", default=None, help="e.g. 4x512,1x8192 (default: the issue's five)")
    parser.add_argument("--attn", nargs="+", default=["sdpa", "eager", "flex_attention"])
    args = parser.parse_args()
    sizes = SIZES if not args.sizes else [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    header = (f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
              f"transformers {transformers.__version__}")
    print(header, flush=True)
    for H in args.heads:
        out = [header, ""] + table(H, sizes, args.attn)
        print("\n".join(out))
        if os.environ.get("OUT"):
            with open(os.path.join(os.environ["OUT"], f"model_prefill_H{H}_{'_'.join(args.attn)}.md"), "w") as f:
                f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
