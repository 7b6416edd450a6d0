"""Tensor parallel with backend="mla": every rank compiles its own shard of the model.

    torchrun --nproc-per-node 2 examples/tensor_parallel.py                 # CPU (gloo) or GPUs (nccl)
    torchrun --nproc-per-node 2 examples/tensor_parallel.py --plan builtin  # DeepSeek-V3's own plan

DeepSeek-V3's built-in `tp_plan` shards only the MLP and the experts: attention is
replicated, every rank computes all H heads. This example loads a small random
DeepSeek-V3 (saved with save_pretrained, no download) with a user-supplied plan that
shards attention the way transformers' plans for DeepSeek-V2/V3.2, GLM-MoE-DSA and
MiniCPM3 do:

    q_b_proj (q_proj without a q LoRA)  colwise        this rank's H/TP heads of q
    kv_a_proj_with_mqa                  mla_kv_a_proj  replicated: the full latent on every rank
    kv_b_proj                           colwise        this rank's heads of K_nope and V
    o_proj                              rowwise        partial sums, then one all-reduce

Each rank's graph then holds an MLA attention over H/TP heads and the full latent,
which backend="mla" fuses; the all-reduce after o_proj is left to Inductor. The script
prints each rank's rewrites and checks compiled against eager on the same rank:
prefill logits, and greedy tokens of a generate whose decode step is compiled.
"""
from __future__ import annotations

import argparse
import os
import re
import tempfile

import torch
import torch.distributed as dist
import transformers

ATTENTION_PLAN = {
    "model.layers.*.self_attn.q_b_proj": "colwise",
    "model.layers.*.self_attn.q_proj": "colwise",
    "model.layers.*.self_attn.kv_a_proj_with_mqa": "mla_kv_a_proj",
    "model.layers.*.self_attn.kv_b_proj": "colwise",
    "model.layers.*.self_attn.o_proj": "rowwise",
}


def attention_sharding_plan(model_cls, config) -> dict[str, str]:
    """The model's own plan (as transformers assembles it: the base model's rules under
    `model.`, plus lm_head) with attention sharded by heads. A dict plan replaces the
    built-in one, hence the copy; rules for modules this config does not build (q_proj
    or q_b_proj, experts in an all-dense model) are dropped, as transformers would warn."""
    with torch.device("meta"):
        model = model_cls(config)
    # rules name modules or parameters (experts.gate_up_proj is a parameter)
    names = [name for name, _ in [*model.named_modules(), *model.named_parameters()]]

    def present(rule: str) -> bool:
        pattern = re.compile(re.escape(rule).replace(r"\*", r"\d+"))
        return any(pattern.fullmatch(name) for name in names)

    plan = {**model.tp_plan, **ATTENTION_PLAN}
    return {rule: style for rule, style in plan.items() if present(rule)}


def small_config(gpu: bool) -> transformers.DeepseekV3Config:
    """DeepSeek-V3 attention dims on a GPU (H=16 of 128, latent 512, rope 64), tiny on CPU."""
    config = transformers.DeepseekV3Config(
        vocab_size=1024 if gpu else 128, hidden_size=1024 if gpu else 64,
        intermediate_size=512 if gpu else 64, moe_intermediate_size=128 if gpu else 32,
        num_hidden_layers=2, first_k_dense_replace=1, num_attention_heads=16 if gpu else 4,
        num_key_value_heads=16 if gpu else 4, q_lora_rank=256 if gpu else 32,
        kv_lora_rank=512 if gpu else 16, qk_nope_head_dim=128 if gpu else 16,
        qk_rope_head_dim=64 if gpu else 8, v_head_dim=128 if gpu else 16, n_routed_experts=4,
        num_experts_per_tok=2, n_group=1, topk_group=1, max_position_embeddings=256,
        tie_word_embeddings=False, initializer_range=0.1)
    config._attn_implementation = "eager"
    return config


def shared_directory() -> str:
    """Rank 0 makes a temporary folder and tells the others (one host: same file system)."""
    box = [tempfile.mkdtemp(prefix="mla_tp_") if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", choices=["attention", "builtin"], default="attention",
                        help="shard attention by heads (default) or keep DeepSeek-V3's built-in plan")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    if gpu:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if gpu else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")
    dtype = torch.bfloat16 if gpu else torch.float32

    config = small_config(gpu)
    directory = shared_directory()
    if rank == 0:
        torch.manual_seed(0)
        transformers.DeepseekV3ForCausalLM(config).save_pretrained(directory)
    dist.barrier()
    plan = attention_sharding_plan(transformers.DeepseekV3ForCausalLM, config) if args.plan == "attention" else "auto"
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=dtype, distributed_config=transformers.DistributedConfig(tp_plan=plan)).eval()

    ids = torch.randint(0, config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1)).to(device)
    reports = []
    with torch.no_grad():
        eager = model(ids, use_cache=False).logits
        compiled = torch.compile(model, backend="mla", options={"report": reports.append})(ids, use_cache=False).logits
        want = model.generate(ids, max_new_tokens=8, do_sample=False, cache_implementation="static", pad_token_id=0)
        compile_config = transformers.CompileConfig(backend="mla", mode=None, fullgraph=True,
                                                    options={"report": reports.append})
        compile_config._compile_all_devices = not gpu  # transformers compiles on GPUs only otherwise
        got = model.generate(ids, max_new_tokens=8, do_sample=False, cache_implementation="static", pad_token_id=0,
                             compile_config=compile_config)

    heads = [m.params["H"] for r in reports for m in r.matches if m.pattern == "attention.mla"]
    error = ((compiled.float() - eager.float()).abs().max() / eager.float().abs().max()).item()
    line = (f"rank {rank}/{world}: {len(reports)} graphs, attention.mla x {len(heads)} with heads {sorted(set(heads))} "
            f"(H={config.num_attention_heads}), near misses {sum(len(r.near_misses) for r in reports)}, "
            f"prefill max relative error vs eager {error:.2e}, greedy tokens identical: {torch.equal(got, want)}")
    lines = [None] * world
    dist.all_gather_object(lines, line)
    if rank == 0:
        print(reports[0].format())
        print("\n".join(lines))
        if os.path.isdir(directory):
            import shutil
            shutil.rmtree(directory, ignore_errors=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
