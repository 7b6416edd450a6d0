"""The real client: transformers DeepSeek-V2 (complex RoPE) and V3 (interleaved
RoPE) with tiny random configs; every layer's RoPE fused, logits equal eager."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=64, moe_intermediate_size=32,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=16,
            qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=4,
            num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=1,
            max_position_embeddings=64)


def build(family: str, impl: str, **extra):
    if family == "v3":
        config = transformers.DeepseekV3Config(q_lora_rank=32, **TINY, **extra)
        model_cls = transformers.DeepseekV3ForCausalLM
    else:
        config = transformers.DeepseekV2Config(q_lora_rank=None, **TINY, **extra)
        model_cls = transformers.DeepseekV2ForCausalLM
    config._attn_implementation = impl
    torch.manual_seed(0)
    return model_cls(config).eval()


# The other RoPE forms compile the very graphs of test_transformers_attention's
# test_every_layer_attention_fused (the same models, forward without cache), which asserts
# these same counts there: v3 eager (rope_interleave=True, its default): rope.pairs; v2
# eager and sdpa: rope.complex. Compiled here only what no other test compiles: the
# neox form (rope_interleave=False).
@pytest.mark.parametrize("family, extra, form, impl", [
    ("v3", {"rope_interleave": False}, "rope.neox", "sdpa"),
])
def test_every_layer_rope_fused(family, extra, form, impl):
    model = build(family, impl, **extra)
    ids = torch.randint(0, 128, (2, 11))
    reports = []
    with torch.no_grad():
        expected = model(ids, use_cache=False).logits
        actual = torch.compile(model, backend="mla", options={"report": reports.append})(ids, use_cache=False).logits
    layers = TINY["num_hidden_layers"]
    assert [r.counts() for r in reports] == [{form: 2 * layers, "rope.one_launch": layers, "attention.mla": layers}]
    assert reports[0].near_misses == []
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
