"""Eager-only sanity checks of tests/attention_models.py, independent of the
compiler: every shape runs in fp32 and bf16 with a finite, non-zero output of the
right shape; each SDPA shape equals its eager-matmul twin; hf_v3 equals
transformers' DeepseekV3Attention with the same weights; every shape traces
fullgraph (no graph break)."""
from __future__ import annotations

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from attention_models import (  # noqa: E402
    HIDDEN, SHAPES, YARN_MSCALE, AttnSize, HFMLA, padding_keep,
)

SIZE = AttnSize(B=2, S=7, H=2)
SIZES = [SIZE, AttnSize(B=1, S=5, H=1, nope=8, rope=16, v=24, latent=16, q_lora=16)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SHAPE_IDS = [s.name for s in SHAPES]
TWINS = [s for s in SHAPES if s.twin is not None]


def _close(out, ref, dtype):
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    scale = max(1.0, ref.abs().max().item())
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol * scale)


def test_catalogue():
    assert len(set(SHAPE_IDS)) == len(SHAPE_IDS)
    assert SIZE.v != SIZE.nope + SIZE.rope
    for s in SHAPES:
        assert s.kind in ("match", "leave_alone"), s.name
        m = s.build(SIZE, torch.float32)
        assert isinstance(m.expected_matches, int)
        assert (m.expected_matches == 0) == (s.kind == "leave_alone"), s.name


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_runs(shape, size, dtype):
    m = shape.build(size, dtype)
    inputs = m.example_inputs()
    with torch.no_grad():
        out = m(*inputs)
        again = shape.build(size, dtype)(*m.example_inputs())
        other = m(*m.example_inputs(seed=2))
    lead = (size.B * size.S,) if inputs[0].dim() == 2 else (size.B, size.S)
    assert out.shape == (*lead, HIDDEN) and out.dtype == dtype
    assert torch.isfinite(out).all()
    assert out.abs().max() > 0
    assert torch.equal(out, again), "not deterministic from the seeds"
    assert not torch.equal(out, other), "output ignores the inputs"


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("shape", TWINS, ids=[s.name for s in TWINS])
def test_sdpa_equals_eager_twin(shape, size, dtype):
    sdpa, eager = shape.build(size, dtype), shape.twin(size, dtype)
    with torch.no_grad():
        _close(sdpa(*sdpa.example_inputs()), eager(*eager.example_inputs()), dtype)


def test_padding_mask_matters():
    """The padded mask really differs from the causal one (a row is padded)."""
    assert not torch.equal(padding_keep(2, 7, True), padding_keep(2, 7, False))
    assert padding_keep(2, 7, True).any(-1).all(), "a fully masked row"


def test_q_nope_scale_is_in_the_math():
    scaled = next(s for s in SHAPES if s.name == "hf_q_nope_scaled").build(SIZE, torch.float32)
    plain = HFMLA(SIZE, torch.float32, yarn=True)
    inputs = plain.example_inputs()
    with torch.no_grad():
        assert not torch.allclose(scaled(*inputs), plain(*inputs))


def _reference(m: HFMLA, x, position_ids, mask):
    """Per-head softmax(q k^T * scale + mask) v written out from the weights."""
    B, S, _ = x.shape
    N, R, V, L, H = m.size.nope, m.size.rope, m.size.v, m.size.latent, m.size.H
    q = m._q(x).view(B, S, H, N + R)
    c_kv, k_pe = m.kv_a_proj_with_mqa(x).split([L, R], -1)
    kv = m.kv_b_proj(m.kv_a_layernorm(c_kv)).view(B, S, H, N + V)
    cos, sin = m.cos_cached[position_ids], m.sin_cached[position_ids]    # [B,S,R]
    rot = lambda t, c, s: t * c + torch.cat([-t[..., R // 2:], t[..., :R // 2]], -1) * s  # noqa: E731
    out = torch.empty(B, S, H, V, dtype=x.dtype)
    for b in range(B):
        kp = rot(k_pe[b], cos[b], sin[b])                                  # [S,R] one head
        for h in range(H):
            qh = torch.cat([q[b, :, h, :N], rot(q[b, :, h, N:], cos[b], sin[b])], -1)
            kh = torch.cat([kv[b, :, h, :N], kp], -1)
            s = (qh.float() @ kh.float().T) * m.scaling + mask[b, 0].float()
            out[b, :, h] = (s.softmax(-1) @ kv[b, :, h, N:].float()).to(x.dtype)
    return m.o_proj(out.reshape(B, S, H * V))


@pytest.mark.parametrize("name", ["hf_v3", "hf_cat_expand", "hf_assign_broadcast", "hf_v3_qlora_padded"])
def test_hf_shapes_equal_reference(name):
    m = next(s for s in SHAPES if s.name == name).build(SIZE, torch.float32)
    x, pos, mask = m.example_inputs()
    with torch.no_grad():
        _close(m(x, pos, mask), _reference(m, x, pos, mask), torch.float32)


def test_hf_v3_equals_transformers():
    """hf_v3 is transformers 5.17 DeepseekV3Attention (same weights, same scale)."""
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention

    m = next(s for s in SHAPES if s.name == "hf_v3").build(SIZE, torch.float32)
    cfg = DeepseekV3Config(
        hidden_size=HIDDEN, num_attention_heads=SIZE.H, num_key_value_heads=SIZE.H,
        q_lora_rank=None, kv_lora_rank=SIZE.latent, qk_nope_head_dim=SIZE.nope,
        qk_rope_head_dim=SIZE.rope, v_head_dim=SIZE.v, rope_interleave=False, attention_bias=False,
        rope_parameters={"rope_type": "yarn", "factor": 40.0, "mscale_all_dim": 1.0, "mscale": 1.0,
                         "rope_theta": 10000.0, "original_max_position_embeddings": 32,
                         "beta_fast": 32, "beta_slow": 1},
    )
    cfg._attn_implementation = "eager"
    ref = DeepseekV3Attention(cfg, layer_idx=0).eval()
    assert math.isclose(ref.scaling, (SIZE.nope + SIZE.rope) ** -0.5 * YARN_MSCALE ** 2, rel_tol=1e-6)
    missing, unexpected = ref.load_state_dict(m.state_dict(), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    x, pos, mask = m.example_inputs()
    cos, sin = m.cos_cached[pos], m.sin_cached[pos]
    with torch.no_grad():
        _close(m(x, pos, mask), ref(x, (cos, sin), mask)[0], torch.float32)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_traces_fullgraph(shape):
    m = shape.build(SIZE, torch.bfloat16)
    inputs = m.example_inputs()
    with torch.no_grad():
        ref = m(*inputs)
        out = torch.compile(m, backend="eager", fullgraph=True)(*inputs)
        assert torch._dynamo.explain(m)(*inputs).graph_break_count == 0
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
