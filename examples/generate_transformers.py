"""transformers `generate()` with and without backend="mla", on a small DeepSeek-V3
model built from a config (random weights, no download).

    python examples/generate_transformers.py            # CPU: tiny sizes; GPU: larger

Prints tokens/s for eager generate and for generate compiled with backend="mla"
(transformers' own compile path: a static cache and `CompileConfig`), the mla
report of the compiled decode graph, and checks that the greedy tokens agree.
"""
from __future__ import annotations

import time

import torch
import transformers


def small_model(device: str) -> transformers.PreTrainedModel:
    gpu = device == "cuda"
    config = transformers.DeepseekV3Config(
        vocab_size=512, hidden_size=512 if gpu else 64, intermediate_size=256 if gpu else 64,
        moe_intermediate_size=64 if gpu else 32, num_hidden_layers=2, first_k_dense_replace=1,
        num_attention_heads=16 if gpu else 4, num_key_value_heads=16 if gpu else 4,
        q_lora_rank=256 if gpu else 32, kv_lora_rank=512 if gpu else 16,
        qk_nope_head_dim=128 if gpu else 16, qk_rope_head_dim=64 if gpu else 8,
        v_head_dim=128 if gpu else 16, n_routed_experts=4, num_experts_per_tok=2, n_group=1,
        topk_group=1, max_position_embeddings=1024)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return transformers.DeepseekV3ForCausalLM(config).to(device).eval()


def timed_generate(model, ids, new_tokens, **kwargs):
    """(tokens, tokens/s): the best of 3 timed runs after a warm-up of the same length
    (a static cache is sized prompt + new_tokens, so every run reuses one compile)."""
    out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, **kwargs)
    best = float("inf")
    for _ in range(3):
        if ids.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=new_tokens, do_sample=False, **kwargs)
        if ids.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return out, ids.shape[0] * new_tokens / best


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = small_model(device)
    batch, prompt, new_tokens = (8, 128, 64) if device == "cuda" else (2, 16, 16)
    ids = torch.randint(0, 512, (batch, prompt), device=device, generator=torch.Generator(device).manual_seed(1))
    reports = []
    # torch.compile refuses mode= together with options=: give the mode to the backend
    compile_config = transformers.CompileConfig(
        backend="mla", mode=None, fullgraph=True,
        options={"mode": "reduce-overhead", "report": reports.append})
    compile_config._compile_all_devices = device == "cpu"  # transformers compiles on GPUs only otherwise
    with torch.no_grad():
        eager, eager_tps = timed_generate(model, ids, new_tokens, cache_implementation="static")
        fused, fused_tps = timed_generate(model, ids, new_tokens, cache_implementation="static",
                                          compile_config=compile_config)
    print(reports[-1].format() if reports else "no graph was compiled")
    print(f"device={device} batch={batch} prompt={prompt} new_tokens={new_tokens}")
    print(f"eager generate:            {eager_tps:8.1f} tokens/s")
    print(f"generate, backend='mla':   {fused_tps:8.1f} tokens/s")
    same = torch.equal(eager, fused)
    print(f"greedy tokens identical: {same}")
    if not same:
        raise SystemExit("tokens differ")


if __name__ == "__main__":
    main()
