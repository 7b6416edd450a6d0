"""A small DeepSeek-style MLA attention block, as a target for `mla-compile dump`.

    mla-compile dump examples/dump_target.py

q is projected and split into q_nope / q_pe; k_pe comes out of the compressed kv
projection (one head, shared by all heads); neox RoPE through `rotate_half`, with
cos/sin gathered from a cache by position ids, rotates q_pe [B, H, S, 64] and
k_pe [B, 1, S, 64]; then plain causal attention. Random weights, CPU-sized.

`example()` returns `(model, example_inputs)`, which is what `dump` calls.
Run as a script, it prints the output's shape.
"""
from __future__ import annotations

import math

import torch
from torch import nn

BATCH, SEQ, HIDDEN = 2, 8, 64
HEADS, QK_NOPE, QK_ROPE, V_HEAD, KV_RANK = 4, 32, 64, 32, 48
MAX_POSITIONS = 32


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, position_ids):
    cos = cos[position_ids].unsqueeze(1)  # [B, 1, S, rope]
    sin = sin[position_ids].unsqueeze(1)
    q_embed = q * cos + rotate_half(q) * sin
    k_embed = k * cos + rotate_half(k) * sin
    return q_embed, k_embed


class RotaryEmbedding(nn.Module):
    def __init__(self, dim: int, max_positions: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        t = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)  # neox layout: [max_positions, dim]
        self.register_buffer("cos_cached", emb.cos(), persistent=False)
        self.register_buffer("sin_cached", emb.sin(), persistent=False)

    def forward(self, seq_len: int):
        return self.cos_cached[:seq_len], self.sin_cached[:seq_len]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class MlaBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(HIDDEN, HEADS * (QK_NOPE + QK_ROPE), bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(HIDDEN, KV_RANK + QK_ROPE, bias=False)
        self.kv_a_layernorm = RMSNorm(KV_RANK)
        self.kv_b_proj = nn.Linear(KV_RANK, HEADS * (QK_NOPE + V_HEAD), bias=False)
        self.o_proj = nn.Linear(HEADS * V_HEAD, HIDDEN, bias=False)
        self.rotary_emb = RotaryEmbedding(QK_ROPE, MAX_POSITIONS)
        self.scale = 1.0 / math.sqrt(QK_NOPE + QK_ROPE)

    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        b, s, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(b, s, HEADS, QK_NOPE + QK_ROPE).transpose(1, 2)
        q_nope, q_pe = torch.split(q, [QK_NOPE, QK_ROPE], dim=-1)

        compressed_kv = self.kv_a_proj_with_mqa(hidden_states)
        compressed_kv, k_pe = torch.split(compressed_kv, [KV_RANK, QK_ROPE], dim=-1)
        k_pe = k_pe.view(b, s, 1, QK_ROPE).transpose(1, 2)
        kv = self.kv_b_proj(self.kv_a_layernorm(compressed_kv))
        kv = kv.view(b, s, HEADS, QK_NOPE + V_HEAD).transpose(1, 2)
        k_nope, value = torch.split(kv, [QK_NOPE, V_HEAD], dim=-1)

        cos, sin = self.rotary_emb(MAX_POSITIONS)
        q_pe, k_pe = apply_rotary_pos_emb(q_pe, k_pe, cos, sin, position_ids)

        query = torch.cat((q_nope, q_pe), dim=-1)
        key = torch.cat((k_nope, k_pe.expand(b, HEADS, s, QK_ROPE)), dim=-1)
        scores = (query @ key.transpose(-1, -2)) * self.scale
        causal = torch.ones(s, s, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ value
        return self.o_proj(out.transpose(1, 2).reshape(b, s, HEADS * V_HEAD))


def example():
    model = MlaBlock().eval()
    hidden_states = torch.randn(BATCH, SEQ, HIDDEN)
    # Positions past the start, so the gather from the cache is not the identity.
    position_ids = torch.arange(3, 3 + SEQ).unsqueeze(0).expand(BATCH, SEQ)
    return model, (hidden_states, position_ids)


if __name__ == "__main__":
    model, inputs = example()
    with torch.no_grad():
        print(tuple(model(*inputs).shape))
