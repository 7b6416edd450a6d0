"""The real client: transformers DeepseekV3ForCausalLM and DeepseekV2ForCausalLM
(tiny random configs, no download), attn_implementation "eager" and "sdpa", forward
without cache: every layer's attention fused into mla.prefill_attention, logits equal."""
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_transformers_rope import TINY, build  # noqa: E402

LAYERS = TINY["num_hidden_layers"]
QK = TINY["qk_nope_head_dim"] + TINY["qk_rope_head_dim"]
YARN = {"rope_type": "yarn", "factor": 40.0, "mscale_all_dim": 1.0, "mscale": 1.0,
        "original_max_position_embeddings": 16, "beta_fast": 32, "beta_slow": 1}


def run(model, ids, mask=None, dtype=torch.float32):
    model = model.to(dtype)
    reports = []
    with torch.no_grad():
        expected = model(ids, attention_mask=mask, use_cache=False).logits
        compiled = torch.compile(model, backend="mla", options={"report": reports.append})
        actual = compiled(ids, attention_mask=mask, use_cache=False).logits
    assert len(reports) == 1, [r.format() for r in reports]
    return actual, expected, reports[0]


def attention(report):
    return [m.params for m in report.matches if m.pattern == "attention.mla"]


# The RoPE form of each family's default code: V3 interleaves (rope_interleave=True),
# V2 rotates complex numbers. The exact counts below are also test_transformers_rope's
# check for these models (it compiles only the neox form itself).
ROPE_FORM = {"v3": "rope.pairs", "v2": "rope.complex"}


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("family", ["v3", "v2"])
def test_every_layer_attention_fused(family, impl):
    """Also test_causal_mask's unpadded case: transformers' own mask proven causal (19
    tokens, as there)."""
    model = build(family, impl)
    ids = torch.randint(0, 128, (2, 19), generator=torch.Generator().manual_seed(1))
    actual, expected, report = run(model, ids)
    assert report.counts()["attention.mla"] == LAYERS, report.format()
    # every layer's RoPE fused too: q_pe and k_pe, one launch per layer
    assert report.counts() == {ROPE_FORM[family]: 2 * LAYERS, "rope.one_launch": LAYERS,
                               "attention.mla": LAYERS}, report.format()
    assert report.near_misses == [], report.format()
    for p in attention(report):
        assert (p["B"], p["H"], p["Sq"], p["Sk"]) == (2, TINY["num_attention_heads"], 19, 19)
        assert p["mask"] == {"eager": "causal", "sdpa": "causal (safe softmax)"}[impl], p
        assert p["mask_proof"].startswith("causal"), p
        assert (p["Dn"], p["Dr"], p["Dv"], p["R"]) == (16, 8, 16, 16)
        assert math.isclose(p["scale"], QK ** -0.5, rel_tol=1e-6)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_padding_mask_and_yarn_mscale(impl):
    """Left padding (rows with masked keys) and YaRN: the scale carried into the op is
    (nope + rope)^-0.5 * mscale^2 (seed 000), not the latent width's.

    Also test_causal_mask's padded case, on the same compile: transformers' own mask
    (5.17: iota comparisons; >= 5.18: positions compared through an in-graph position
    table; packed-sequence ids from the positions, key padding) is causal where exact,
    and the logits equal at every position, the pad rows included (19 tokens, 6 padded,
    as there; YaRN changes the RoPE tables only, not the mask); with eager's finite
    fill the six left-pad rows attend every key (the op's empty_row_fill)."""
    model = build("v3", impl, rope_scaling=YARN)
    ids = torch.randint(0, 128, (2, 19), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 19, dtype=torch.long)
    mask[1, :6] = 0
    actual, expected, report = run(model, ids, mask)
    assert report.counts()["attention.mla"] == LAYERS, report.format()
    assert report.near_misses == [], report.format()
    mscale = 0.1 * math.log(40.0) + 1.0
    for p in attention(report):
        assert math.isclose(p["scale"], QK ** -0.5 * mscale ** 2, rel_tol=1e-6), p
        assert p["scale_decomposition"] == f"(16+8)^-0.5 * {mscale ** 2:.6g}"
        # both causal + key padding: sdpa's (CPU) -inf fill as it is; eager's finfo.min
        # with the op's rule for the left-pad rows (eager's softmax over every key)
        assert p["mask"] == {"eager": "additive+causal (key padding, finite fill: empty rows attend all keys)",
                             "sdpa": "additive+causal (safe softmax)"}[impl], p
        assert p["mask_proof"].startswith("causal"), p
        assert ("rows with no visible unmasked key attend all keys" in p["mask_proof"]) == (impl == "eager"), p
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_bf16_logits_close():
    model = build("v3", "eager")
    ids = torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(3))
    actual, expected, report = run(model, ids, dtype=torch.bfloat16)
    assert report.counts()["attention.mla"] == LAYERS
    scale = expected.float().abs().max().item()
    torch.testing.assert_close(actual.float(), expected.float(), rtol=2e-2, atol=2e-2 * scale)
