"""MLA with no RoPE part (NoPE) as transformers 5.23 writes it, for
tests/test_nope_attention.py: q and k are the no-rope parts alone, K and V still come
from the latent through one up-projection (kv_b_proj), and a decode step attends over
a latent cache concatenated in front (DynamicCache's update), which the pass runs in
the absorbed form.

style "kimi": Kimi-Linear / GLM-5-Next (`qk_rope_head_dim = 0`): q never split; the
    latent split [R, 0] from kv_a_proj_with_mqa, the empty k_rot expanded and copied
    into the key's zero-width slice (`expand_kv`);
style "mistral": Mistral-Large-4's NoPE layer: q split [Dn, 0] and concatenated again,
    the key as in "kimi";
style "plain": own code with no rope part at all: key = k_nope, q = q.
attn: "eager" (matmul * scale + mask, fp32 softmax) | "sdpa" (float mask).

Look-alike (left alone): `SeparateProjections`, q/k/v projections of x with no latent
(plain multi-head attention: keys and values from two weights).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from attention_models import RMSNorm, additive_mask, padding_keep
from rope_models import HIDDEN, linear

H, DN, DV, R = 3, 16, 8, 24  # heads, qk (no-rope) head dim, v head dim, latent


class NopeMLA(nn.Module):
    expected_matches = 1

    def __init__(self, dtype: torch.dtype = torch.float32, style: str = "kimi", attn: str = "eager", seed: int = 0):
        super().__init__()
        assert style in ("kimi", "mistral", "plain") and attn in ("eager", "sdpa")
        g = torch.Generator().manual_seed(seed)
        self.style, self.attn, self.dtype = style, attn, dtype
        self.q_proj = linear(HIDDEN, H * DN, dtype, g)
        self.kv_a_proj_with_mqa = linear(HIDDEN, R, dtype, g)  # + qk_rope_head_dim = 0
        self.kv_a_layernorm = RMSNorm(R, dtype, g)
        self.kv_b_proj = linear(R, H * (DN + DV), dtype, g)
        self.o_proj = linear(H * DV, HIDDEN, dtype, g)
        self.scaling = (DN + 8) ** -0.5  # a config's nope + rope width: the graph's scale wins

    def example_inputs(self, B: int = 2, S: int = 5, past: int = 0, seed: int = 1) -> tuple:
        """x [B, S, HIDDEN], the additive mask over past + S keys, and a latent cache
        [B, 1, past, R] (None for prefill)."""
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(B, S, HIDDEN, generator=g).to(self.dtype)
        keep = padding_keep(B, past + S, padded=True)[..., past:, :]
        cache = torch.randn(B, 1, past, R, generator=g).to(self.dtype) if past else None
        return x, additive_mask(keep, self.dtype), cache

    def _key(self, kv, k_rot):
        if self.style == "plain":
            return kv[..., :DN]
        key = kv.new_empty(*kv.shape[:-1], DN + k_rot.shape[-1])
        key[..., :DN].copy_(kv[..., :DN])
        key[..., DN:].copy_(k_rot.expand(-1, H, -1, -1))
        return key

    def forward(self, x, mask, cache=None):
        B, S, _ = x.shape
        q = self.q_proj(x).view(B, S, -1, DN).transpose(1, 2)
        if self.style == "mistral":
            q_pass, q_rot = torch.split(q, [DN, 0], dim=-1)
            q = torch.cat((q_pass, q_rot), dim=-1)
        c_kv, k_rot = torch.split(self.kv_a_proj_with_mqa(x), [R, 0], dim=-1)
        c_kv = self.kv_a_layernorm(c_kv).view(B, 1, S, R)
        k_rot = k_rot.view(B, 1, S, 0)
        if cache is not None:  # DynamicCache.update: the latent grows along the keys
            c_kv = torch.cat([cache, c_kv], dim=-2)
            k_rot = torch.cat([k_rot.new_empty(B, 1, cache.shape[2], 0), k_rot], dim=-2)
        kv = self.kv_b_proj(c_kv).view(B, c_kv.shape[2], -1, DN + DV).transpose(1, 2)
        v = kv[..., DN:]
        k = self._key(kv, k_rot)
        if self.attn == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling)
        else:
            scores = torch.matmul(q, k.transpose(2, 3)) * self.scaling + mask
            out = torch.matmul(F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype), v)
        return self.o_proj(out.transpose(1, 2).reshape(B, S, -1))


class SeparateProjections(NopeMLA):
    """Plain multi-head attention: k_proj and v_proj of x, no latent, no rope part."""

    expected_matches = 0

    def __init__(self, dtype: torch.dtype = torch.float32, **kw):
        super().__init__(dtype, style="plain", **kw)
        g = torch.Generator().manual_seed(7)
        self.k_proj = linear(HIDDEN, H * DN, dtype, g)
        self.v_proj = linear(HIDDEN, H * DV, dtype, g)

    def forward(self, x, mask, cache=None):
        B, S, _ = x.shape
        q = self.q_proj(x).view(B, S, -1, DN).transpose(1, 2)
        k = self.k_proj(x).view(B, S, -1, DN).transpose(1, 2)
        v = self.v_proj(x).view(B, S, -1, DV).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.scaling + mask
        out = torch.matmul(F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype), v)
        return self.o_proj(out.transpose(1, 2).reshape(B, S, -1))
