"""One rank of the tensor-parallel test (tests/test_tensor_parallel.py starts two with
`python -m torch.distributed.run --standalone --nproc-per-node 2 tp_worker.py DIR`).

Loads the tiny model saved in DIR with transformers' own `tp_plan="auto"` (gloo, CPU,
DTensor weights), compiles it with backend="mla" and writes what it saw to
DIR/rank{r}.pt: the sharding, the report's rewrites and collectives, logits and greedy
tokens. The asserting is the test's, so that a failure names the rank and the value.
Also checks the paged latent cache under TP: each rank attends with its own heads over
the same full latent cache.
"""
from __future__ import annotations

import os
import re
import sys
from collections import Counter

os.environ.setdefault("TRITON_INTERPRET", "1")  # as tests/conftest.py: CPU runs the Triton kernels

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import transformers  # noqa: E402

from mla_compile.custom_ops import PagedLatentCache  # noqa: E402



def collectives(graph_text: str) -> dict:
    """Collective ops (all_reduce, all_gather_into_tensor, wait_tensor, ...) by name."""
    return dict(Counter(re.findall(r"_c10d_functional\.(\w+)\.", graph_text)))


def summarize(report) -> dict:
    """What the test asserts on, in plain types (torch.load(weights_only=True) reads them)."""
    return {
        "counts": report.counts(),
        "attention": [(m.params["H"], m.params["form"]) for m in report.matches if m.pattern == "attention.mla"],
        "near_misses": [f"{n.pattern}: {n.reason}" for n in report.near_misses],
        # the collectives in the graph the passes got and in the one they left: untouched means equal
        "collectives_before": collectives(report.passes[0].before),
        "collectives_after": collectives(report.final_graph),
        "text": report.format(),
    }


def sharding(model) -> dict:
    """Local shapes of one layer's attention weights, and whether they are DTensors."""
    attn = model.model.layers[0].self_attn
    names = ("q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")
    weights = {n: getattr(attn, n).weight for n in names}
    dtensor = torch.distributed.tensor.DTensor
    return {
        "dtensor": {n: isinstance(w, dtensor) for n, w in weights.items()},
        # vocab-parallel input embedding (transformers 5.23 adds it to every plan): one more all-reduce
        "embedding_sharded": isinstance(model.model.embed_tokens.weight, dtensor),
        "local_shape": {n: tuple(w.to_local().shape if hasattr(w, "to_local") else w.shape)
                        for n, w in weights.items()},
    }


def paged_cache_under_tp(model, rank: int, world: int) -> dict:
    """Every rank writes the same latent tokens into its own full paged cache and attends
    with its own heads (transformers' kv_b_proj shard as w_uk / w_uv); the per-rank
    outputs gathered over ranks, by head, must be the 1-process result over all heads."""
    cfg = model.config
    attn = model.model.layers[0].self_attn
    H, Dn, Dv, R, Dr = (cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.v_head_dim,
                        cfg.kv_lora_rank, cfg.qk_rope_head_dim)
    h = H // world
    w = attn.kv_b_proj.weight
    w_full = w.full_tensor().detach().view(H, Dn + Dv, R)  # a collective: every rank calls it
    w_local = w.to_local().detach().view(h, Dn + Dv, R)
    heads = slice(rank * h, (rank + 1) * h)
    gen = torch.Generator().manual_seed(7)  # same on every rank: one replicated latent cache
    B, Sq, lens, block = 2, 1, [13, 6], 4
    cache = PagedLatentCache.allocate(8, block, R, Dr, dtype=torch.float32)
    table = torch.randperm(8, generator=gen)[:B * 4].view(B, 4).to(torch.int32)
    for b, n in enumerate(lens):
        t = torch.arange(n)
        cache.write(torch.randn(n, R, generator=gen), torch.randn(n, Dr, generator=gen),
                    table[b, t // block].long() * block + t % block)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    q_nope, q_pe = torch.randn(B, H, Sq, Dn, generator=gen), torch.randn(B, H, Sq, Dr, generator=gen)
    scale = 0.2
    full = cache.attend(q_nope, q_pe, w_full[:, :Dn], w_full[:, Dn:], scale, table, seq_lens)
    mine = cache.attend(q_nope[:, heads], q_pe[:, heads], w_local[:, :Dn], w_local[:, Dn:], scale, table, seq_lens)
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine.contiguous())
    return {
        "shard_is_head_block": bool(torch.equal(w_local, w_full[heads])),
        "gathered_vs_full": (torch.cat(parts, dim=1) - full).abs().max().item(),
        "full_scale": full.abs().max().item(),
        "heads_per_rank": mine.shape[1],
    }


def main(directory: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ref = torch.load(os.path.join(directory, "reference.pt"))
    ids, new_tokens = ref["ids"], ref["tokens"].shape[1] - ref["ids"].shape[1]
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32,
        distributed_config=transformers.DistributedConfig(tp_plan="auto")).eval()
    out = {"world": world, "sharding": sharding(model)}

    with torch.no_grad():
        reports = []
        compiled = torch.compile(model, backend="mla", options={"report": reports.append})
        out["prefill_logits"] = compiled(ids, use_cache=False).logits
        out["prefill_reports"] = [summarize(r) for r in reports]

        reports = []
        config = transformers.CompileConfig(backend="mla", mode=None, fullgraph=True,
                                            options={"report": reports.append})
        config._compile_all_devices = True  # on CPU transformers compiles only when told to
        gen = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                             cache_implementation="static", compile_config=config, output_logits=True,
                             return_dict_in_generate=True)
        out["tokens"] = gen.sequences
        out["step_logits"] = torch.stack(gen.logits)
        out["decode_reports"] = [summarize(r) for r in reports]

    out["paged"] = paged_cache_under_tp(model, rank, world)
    torch.save(out, os.path.join(directory, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
