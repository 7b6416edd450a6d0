"""Tiny random models of every MLA family in the installed transformers.

A family is a config class with a `kv_lora_rank` (the latent KV width), found in
transformers' config registry, so a family added upstream is tested the day it
ships. Each keeps its own defaults (RoPE type and scaling, partial rotary, NoPE
layers, indexers, hybrid linear-attention layers, attention sinks); only the sizes
shrink, and the per-layer layout shrinks to the shortest prefix of the default
layout that still holds every kind of layer.
"""
from __future__ import annotations

import importlib
import inspect

import torch
import transformers
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

# Sizes only; a field a family does not have is dropped. Token ids are cleared so
# that they fit the tiny vocabulary and generation never stops early.
SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=64, moe_intermediate_size=32,
             shared_experts_intermediate_size=32, num_attention_heads=4, num_key_value_heads=4,
             kv_lora_rank=16, q_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
             head_dim=16, n_routed_experts=4, num_local_experts=4, num_experts_per_tok=2, n_group=1,
             topk_group=1, max_position_embeddings=64, index_topk=4, index_head_dim=16, index_n_heads=2,
             index_kpool=2, linear_head_dim=16, linear_num_heads=4, linear_attn_config=None,
             pad_token_id=None, bos_token_id=None, eos_token_id=None)
# Where a family reads a size under another name (dots3's sliding-window layers carry
# their own MLA dims; LongCat's head_dim is the rope width).
EXTRA = {
    "dots3_note_text": dict(head_dim=24, swa_num_attention_heads=4, swa_num_key_value_heads=4, swa_q_lora_rank=32,
                            swa_kv_lora_rank=16, swa_head_dim=24, swa_qk_nope_head_dim=16, swa_v_head_dim=16,
                            sliding_window=4),
    "longcat_flash": dict(head_dim=8),
}
# A text model that only a multimodal model wraps gets a one-layer vision tower.
VISION = dict(hidden_size=32, intermediate_size=32, num_hidden_layers=1, depth=1, num_attention_heads=2,
              num_heads=2, out_hidden_size=64, image_size=28, patch_size=14, head_dim=16)


def families() -> list[str]:
    return sorted(mt for mt, cls in CONFIG_MAPPING.items() if hasattr(cls, "kv_lora_rank"))


def _accepted(cls) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters)


def _layer_lists(config) -> dict[str, list]:
    """Per-layer layout lists (layer_types, mlp_layer_types, indexer_types,
    no_rope_layers, ...): one small set of values per layer."""
    n = config.num_hidden_layers
    return {k: v for k, v in vars(config).items()
            if isinstance(v, list) and len(v) == n > 4 and all(isinstance(x, (str, int)) for x in v)
            and len(set(v)) <= 3}


def _short_layout(lists: dict[str, list]) -> tuple[dict[str, list], int]:
    """Runs of equal layers collapsed to one, then the shortest prefix holding every
    value of every list (a prefix keeps what a layer depends on, e.g. a shared
    indexer after the full one it reuses)."""
    if not lists:
        return {}, 2
    keys = list(lists)
    rows = list(zip(*(lists[k] for k in keys)))
    rows = [r for i, r in enumerate(rows) if i == 0 or r != rows[i - 1]]
    n = next(n for n in range(1, len(rows) + 1)
             if all({r[j] for r in rows[:n]} == set(lists[k]) for j, k in enumerate(keys)))
    n = max(n, 2)
    return {k: [r[j] for r in rows[:n]] for j, k in enumerate(keys)}, n


def tiny_config(family: str):
    cls = CONFIG_MAPPING[family]
    default = cls()
    lists, n = _short_layout(_layer_lists(default))
    kw = {k: v for k, v in SMALL.items() if k in _accepted(cls)}
    if getattr(default, "qk_rope_head_dim", None) == 0:  # a NoPE family stays NoPE
        kw["qk_rope_head_dim"] = 0
    if getattr(default, "q_lora_rank", 1) is None:       # no query LoRA stays none
        kw.pop("q_lora_rank", None)
    kw.update(lists, num_hidden_layers=n, **EXTRA.get(family, {}))
    return cls(**kw)


def _wrapping_config(text_config):
    for cls in CONFIG_MAPPING.values():
        subs = getattr(cls, "sub_configs", None) or {}
        if subs.get("text_config") is type(text_config):
            vision = subs.get("vision_config")
            vkw = {k: v for k, v in VISION.items() if isinstance(vision, type) and k in _accepted(vision)}
            return cls(text_config=text_config.to_dict(), vision_config=vkw)
    raise LookupError(f"no model wraps {type(text_config).__name__}")


def _class_ending(config, suffix: str):
    module = importlib.import_module(type(config).__module__.replace(".configuration_", ".modeling_"))
    return next(v for v in vars(module).values() if isinstance(v, type) and v.__name__.endswith(suffix))


def build(family: str, impl: str, **changes):
    """A tiny random causal LM of `family` in fp32 with attention `impl` (`changes`:
    config fields to set, e.g. mlp_layer_types)."""
    config = tiny_config(family)
    for k, v in changes.items():
        setattr(config, k, v)
    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(family)
    try:
        model_cls = getattr(transformers, name) if name else _class_ending(config, "ForCausalLM")
    except StopIteration:
        config = _wrapping_config(config)
        model_cls = _class_ending(config, "ForConditionalGeneration")
    config._attn_implementation = impl
    torch.manual_seed(0)
    return model_cls(config).eval()


def mla_layers(model) -> int:
    """Attention modules with a latent up-projection (LongCat has two per layer)."""
    return sum(1 for m in model.modules() if hasattr(m, "kv_b_proj"))
