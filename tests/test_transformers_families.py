"""Other transformers MLA families on the same structural matcher (no family-specific
code): GLM-4.7-Flash (Glm4MoeLite), MiniCPM3 and Mistral 4, tiny random configs,
eager and sdpa: every layer's attention and RoPE fused, logits equal eager."""
import inspect

import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_transformers_rope import TINY  # noqa: E402

FAMILIES = ["Glm4MoeLite", "MiniCPM3", "Mistral4"]


def build(family: str, impl: str):
    config_cls = getattr(transformers, f"{family}Config")
    accepted = inspect.signature(config_cls.__init__).parameters
    config = config_cls(**{k: v for k, v in dict(TINY, q_lora_rank=32).items() if k in accepted})
    config._attn_implementation = impl
    torch.manual_seed(0)
    return getattr(transformers, f"{family}ForCausalLM")(config).eval()


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_family_fully_fused(family, impl):
    model = build(family, impl)
    ids = torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(4))
    reports = []
    with torch.no_grad():
        expected = model(ids, use_cache=False).logits
        actual = torch.compile(model, backend="mla", options={"report": reports.append})(ids, use_cache=False).logits
    assert len(reports) == 1
    counts = reports[0].counts()
    layers = model.config.num_hidden_layers
    assert counts.get("attention.mla") == layers and counts.get("rope.one_launch") == layers, counts
    assert reports[0].near_misses == [], reports[0].format()
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * max(1.0, scale))
