"""RoPE code shapes as real model code writes them, one small function or module
per shape, for the RoPE fusion tests (tests/test_rope_fusion.py) and the golden
graphs (tests/test_rope_golden.py).

Each module builds its own weights in the dtype it is given (Linear weights drawn
with std 1/sqrt(fan_in), so activations are O(1)) and has `example_inputs(...)`
returning fresh random inputs. Layout names: [B,H,S,D] (projection viewed as
[B,S,H,D] then transpose(1, 2)), [B,S,H,D], [T,H,D] (tokens flattened).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

NOPE = 16          # q_nope / qk_nope_head_dim
LATENT = 32        # kv_lora_rank
HIDDEN = 32        # model width
MAX_POS = 32       # rotary cache length
BASE = 10000.0


@dataclass(frozen=True)
class Size:
    B: int      # batch
    S: int      # sequence length
    H: int      # q heads
    rope: int   # rotary dim (qk_rope_head_dim)

    def __str__(self) -> str:
        return f"B{self.B}S{self.S}H{self.H}R{self.rope}"


# ------------------------------------------------------------ building blocks

def linear(in_features: int, out_features: int, dtype: torch.dtype, gen: torch.Generator) -> nn.Linear:
    lin = nn.Linear(in_features, out_features, bias=False, dtype=dtype)
    with torch.no_grad():
        w = torch.randn(out_features, in_features, generator=gen) * in_features ** -0.5
        lin.weight.copy_(w.to(dtype))
    return lin


def inv_freq(dim: int) -> torch.Tensor:
    return 1.0 / (BASE ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))


def neox_cache(dim: int, dtype: torch.dtype, max_pos: int = MAX_POS) -> tuple[torch.Tensor, torch.Tensor]:
    """cos_cached, sin_cached: [max_pos, dim], the angles repeated twice (neox)."""
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv_freq(dim))
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def half_cache(dim: int, dtype: torch.dtype, max_pos: int = MAX_POS) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin: [max_pos, dim/2], one angle per pair."""
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv_freq(dim))
    return freqs.cos().to(dtype), freqs.sin().to(dtype)


def precompute_freqs_cis(dim: int, max_pos: int = MAX_POS) -> torch.Tensor:
    """complex64 [max_pos, dim/2] (DeepSeek inference code)."""
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv_freq(dim))
    return torch.polar(torch.ones_like(freqs), freqs)


def positions(B: int, S: int, gen: torch.Generator) -> torch.Tensor:
    """position ids [B, S]: a random offset per row, then consecutive."""
    start = torch.randint(0, MAX_POS - S + 1, (B, 1), generator=gen)
    return start + torch.arange(S)


# ------------------------------------------------------------ the RoPE code shapes

def rotate_half(x):
    """transformers' rotate_half, by slicing."""
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def rotate_half_chunk(x):
    """rotate_half by chunk (e.g. GPT-NeoX / older code)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_neox(x, cos, sin, rotate=rotate_half):
    return x * cos + rotate(x) * sin


def apply_even_odd(x, cos, sin):
    """Pairs (x[2j], x[2j+1]) with half-width cos/sin; output [lo..., hi...]."""
    x1 = x[..., 0::2]
    x2 = x[..., 1::2]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def apply_rotary_pos_emb_interleave(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
    """transformers DeepSeek-V2/V3: de-interleave, then neox. cos/sin [B, S, D]."""
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    b, h, s, d = q.shape
    q = q.view(b, h, s, d // 2, 2).transpose(4, 3).reshape(b, h, s, d)
    b, h, s, d = k.shape
    k = k.view(b, h, s, d // 2, 2).transpose(4, 3).reshape(b, h, s, d)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed, k_embed


def apply_rotary_emb(x, freqs_cis):
    """DeepSeek inference code: x [B, S, H, D], freqs_cis complex64 [S, D/2]."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    freqs_cis = freqs_cis.view(1, xc.size(1), 1, xc.size(-1))
    y = torch.view_as_real(xc * freqs_cis).flatten(3)
    return y.type_as(x)


def reshape_for_broadcast(freqs_cis, x):
    """Meta Llama: freqs_cis [S, D/2] -> [1, S, 1, D/2] for x [B, S, H, D/2]."""
    shape = [d if i == 1 or i == x.ndim - 1 else 1 for i, d in enumerate(x.shape)]
    return freqs_cis.view(*shape)


def apply_rotary_emb_qk(xq, xk, freqs_cis):
    """Meta Llama form: q and k rotated together, freqs viewed once for both."""
    xq_ = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
    xk_ = torch.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2))
    freqs_cis = reshape_for_broadcast(freqs_cis, xq_)
    xq_out = torch.view_as_real(xq_ * freqs_cis).flatten(3)
    xk_out = torch.view_as_real(xk_ * freqs_cis).flatten(3)
    return xq_out.type_as(xq), xk_out.type_as(xk)


# ------------------------------------------------------------ modules

class _Base(nn.Module):
    """Common constructor bits and input generation."""

    uses_positions = False

    def __init__(self, size: Size, dtype: torch.dtype, seed: int = 0):
        super().__init__()
        self.size, self.dtype = size, dtype
        self.gen = torch.Generator().manual_seed(seed)

    def example_inputs(self, seed: int = 1, S: int | None = None, B: int | None = None) -> tuple:
        gen = torch.Generator().manual_seed(seed)
        B = self.size.B if B is None else B
        S = self.size.S if S is None else S
        x = torch.randn(B, S, HIDDEN, generator=gen).to(self.dtype)
        if self.uses_positions:
            return x, positions(B, S, gen)
        return (x,)


class NeoxAttention(_Base):
    """Llama-style q/k projections, layout [B,H,S,D] (view + transpose(1, 2)).

    rotate: "slice" (rotate_half) or "chunk" (rotate_half_chunk).
    cos_from: "slice" (cos_cached[:seq_len], broadcast [1,1,S,D]) or
              "gather" (cos_cached[position_ids].unsqueeze(1), [B,1,S,D]).
    k has one head (shared), so q and k take one launch.
    """

    def __init__(self, size: Size, dtype: torch.dtype, rotate: str = "slice", cos_from: str = "slice", seed: int = 0):
        super().__init__(size, dtype, seed)
        self.rotate = rotate_half if rotate == "slice" else rotate_half_chunk
        self.cos_from = cos_from
        self.uses_positions = cos_from == "gather"
        D = size.rope
        self.q_proj = linear(HIDDEN, size.H * D, dtype, self.gen)
        self.k_proj = linear(HIDDEN, D, dtype, self.gen)
        cos, sin = neox_cache(D, dtype)
        self.register_buffer("cos_cached", cos, persistent=False)
        self.register_buffer("sin_cached", sin, persistent=False)

    def forward(self, x, position_ids=None):
        B, S, _ = x.shape
        D = self.size.rope
        q = self.q_proj(x).view(B, S, self.size.H, D).transpose(1, 2)
        k = self.k_proj(x).view(B, S, 1, D).transpose(1, 2)
        if self.cos_from == "slice":
            cos = self.cos_cached[:S][None, None]
            sin = self.sin_cached[:S][None, None]
        else:
            cos = self.cos_cached[position_ids].unsqueeze(1)
            sin = self.sin_cached[position_ids].unsqueeze(1)
        q = apply_neox(q, cos, sin, self.rotate)
        k = apply_neox(k, cos, sin, self.rotate)
        return q, k


class EvenOddAttention(_Base):
    """Interleaved pairs x[..., 0::2], x[..., 1::2], half-width cos/sin gathered by
    position ids, layout [B,S,H,D] (cos [B,S,1,D/2]); k one head."""

    uses_positions = True

    def __init__(self, size: Size, dtype: torch.dtype, seed: int = 0):
        super().__init__(size, dtype, seed)
        D = size.rope
        self.q_proj = linear(HIDDEN, size.H * D, dtype, self.gen)
        self.k_proj = linear(HIDDEN, D, dtype, self.gen)
        cos, sin = half_cache(D, dtype)
        self.register_buffer("cos_half", cos, persistent=False)
        self.register_buffer("sin_half", sin, persistent=False)

    def forward(self, x, position_ids):
        B, S, _ = x.shape
        D = self.size.rope
        q = self.q_proj(x).view(B, S, self.size.H, D)
        k = self.k_proj(x).view(B, S, 1, D)
        cos = self.cos_half[position_ids].unsqueeze(2)
        sin = self.sin_half[position_ids].unsqueeze(2)
        return apply_even_odd(q, cos, sin), apply_even_odd(k, cos, sin)


class DeepseekV2Attention(_Base):
    """transformers DeepSeek-V2/V3 MLA front: q split [nope, rope] by torch.split,
    kv_a_proj_with_mqa split [latent, rope], k_pe one head, layout [B,H,S,D];
    cos/sin = rotary cache [:seq_len] then gathered by position ids; the rope parts
    de-interleaved then rotated neox (apply_rotary_pos_emb_interleave)."""

    uses_positions = True
    past = 4  # tokens already in the kv cache: kv_seq_len = past + S

    def __init__(self, size: Size, dtype: torch.dtype, seed: int = 0):
        super().__init__(size, dtype, seed)
        R = size.rope
        self.q_proj = linear(HIDDEN, size.H * (NOPE + R), dtype, self.gen)
        self.kv_a_proj_with_mqa = linear(HIDDEN, LATENT + R, dtype, self.gen)
        cos, sin = neox_cache(R, dtype)
        self.register_buffer("cos_cached", cos, persistent=False)
        self.register_buffer("sin_cached", sin, persistent=False)

    def example_inputs(self, seed: int = 1, S: int | None = None, B: int | None = None) -> tuple:
        gen = torch.Generator().manual_seed(seed)
        B = self.size.B if B is None else B
        S = self.size.S if S is None else S
        x = torch.randn(B, S, HIDDEN, generator=gen).to(self.dtype)
        start = torch.randint(0, self.past + 1, (B, 1), generator=gen)  # left padding
        return x, start + torch.arange(S)

    def forward(self, x, position_ids):
        B, S, _ = x.shape
        R = self.size.rope
        q = self.q_proj(x).view(B, S, self.size.H, NOPE + R).transpose(1, 2)
        q_nope, q_pe = torch.split(q, [NOPE, R], dim=-1)
        compressed_kv = self.kv_a_proj_with_mqa(x)
        compressed_kv, k_pe = torch.split(compressed_kv, [LATENT, R], dim=-1)
        k_pe = k_pe.view(B, S, 1, R).transpose(1, 2)
        kv_seq_len = self.past + S
        cos = self.cos_cached[:kv_seq_len]            # rotary_emb(value, seq_len=kv_seq_len)
        sin = self.sin_cached[:kv_seq_len]
        cos, sin = cos[position_ids], sin[position_ids]   # position_ids < kv_seq_len
        q_pe, k_pe = apply_rotary_pos_emb_interleave(q_pe, k_pe, cos, sin)
        query_states = torch.cat((q_nope, q_pe), dim=-1)
        return query_states, k_pe, compressed_kv


class DeepseekInferenceMLA(_Base):
    """DeepSeek-V3 inference code MLA front, layout [B,S,H,D]: complex RoPE with
    freqs_cis (torch.polar) sliced from a cache [start_pos:start_pos+S] and viewed
    [1,S,1,D/2]; k_pe = kv[..., latent:] with one head (unsqueeze(2))."""

    def __init__(self, size: Size, dtype: torch.dtype, seed: int = 0, start_pos: int = 2):
        super().__init__(size, dtype, seed)
        R = size.rope
        self.start_pos = start_pos
        self.wq = linear(HIDDEN, size.H * (NOPE + R), dtype, self.gen)
        self.wkv_a = linear(HIDDEN, LATENT + R, dtype, self.gen)
        self.register_buffer("freqs_cis", precompute_freqs_cis(R), persistent=False)

    def forward(self, x):
        B, S, _ = x.shape
        R = self.size.rope
        freqs_cis = self.freqs_cis[self.start_pos : self.start_pos + S]
        q = self.wq(x).view(B, S, self.size.H, NOPE + R)
        q_nope, q_pe = torch.split(q, [NOPE, R], dim=-1)
        q_pe = apply_rotary_emb(q_pe, freqs_cis)
        kv = self.wkv_a(x)
        kv, k_pe = torch.split(kv, [LATENT, R], dim=-1)
        k_pe = apply_rotary_emb(k_pe.unsqueeze(2), freqs_cis)
        return torch.cat([q_nope, q_pe], dim=-1), kv, k_pe


class LlamaComplexAttention(_Base):
    """Meta Llama reference code, layout [B,S,H,D]: complex RoPE of q and k in one
    apply_rotary_emb(xq, xk, freqs_cis), freqs_cis = cache[start_pos:start_pos+S];
    k has one head (MQA)."""

    def __init__(self, size: Size, dtype: torch.dtype, seed: int = 0, start_pos: int = 1):
        super().__init__(size, dtype, seed)
        self.start_pos = start_pos
        self.wq = linear(HIDDEN, size.H * size.rope, dtype, self.gen)
        self.wk = linear(HIDDEN, size.rope, dtype, self.gen)
        self.register_buffer("freqs_cis", precompute_freqs_cis(size.rope), persistent=False)

    def forward(self, x):
        B, S, _ = x.shape
        xq = self.wq(x).view(B, S, self.size.H, self.size.rope)
        xk = self.wk(x).view(B, S, 1, self.size.rope)
        freqs_cis = self.freqs_cis[self.start_pos : self.start_pos + S]
        return apply_rotary_emb_qk(xq, xk, freqs_cis)


class MlaNeoxBSHD(_Base):
    """MLA front, layout [B,S,H,D]: q_pe by slicing q[..., nope:], k_pe by slicing
    the latent projection; cos/sin = cache[:seq_len] broadcast [1,S,1,D]."""

    def __init__(self, size: Size, dtype: torch.dtype, seed: int = 0):
        super().__init__(size, dtype, seed)
        R = size.rope
        self.q_proj = linear(HIDDEN, size.H * (NOPE + R), dtype, self.gen)
        self.kv_a_proj = linear(HIDDEN, LATENT + R, dtype, self.gen)
        cos, sin = neox_cache(R, dtype)
        self.register_buffer("cos_cached", cos, persistent=False)
        self.register_buffer("sin_cached", sin, persistent=False)

    def forward(self, x):
        B, S, _ = x.shape
        q = self.q_proj(x).view(B, S, self.size.H, NOPE + self.size.rope)
        q_nope, q_pe = q[..., :NOPE], q[..., NOPE:]
        latent = self.kv_a_proj(x)
        kv_c, k_pe = latent[..., :LATENT], latent[..., LATENT:].unsqueeze(2)
        cos = self.cos_cached[:S][None, :, None, :]
        sin = self.sin_cached[:S][None, :, None, :]
        q_pe = apply_neox(q_pe, cos, sin)
        k_pe = apply_neox(k_pe, cos, sin)
        return torch.cat((q_nope, q_pe), dim=-1), kv_c, k_pe


class TokenMLA(_Base):
    """vLLM-style MLA front on flattened tokens [T,H,D]: q_pe = q[..., nope:],
    k_pe [T,1,R] from the latent projection's split, cos/sin = cache[positions]
    .unsqueeze(1) [T,1,R]. Inputs: hidden [T, HIDDEN] and positions [T]."""

    def __init__(self, size: Size, dtype: torch.dtype, seed: int = 0):
        super().__init__(size, dtype, seed)
        R = size.rope
        self.q_proj = linear(HIDDEN, size.H * (NOPE + R), dtype, self.gen)
        self.kv_a_proj = linear(HIDDEN, LATENT + R, dtype, self.gen)
        cos, sin = neox_cache(R, dtype)
        self.register_buffer("cos_cache", cos, persistent=False)
        self.register_buffer("sin_cache", sin, persistent=False)

    def example_inputs(self, seed: int = 1, S: int | None = None, B: int | None = None) -> tuple:
        gen = torch.Generator().manual_seed(seed)
        B = self.size.B if B is None else B
        S = self.size.S if S is None else S
        x = torch.randn(B * S, HIDDEN, generator=gen).to(self.dtype)
        return x, positions(B, S, gen).flatten()

    def forward(self, x, positions):
        T = x.shape[0]
        R = self.size.rope
        q = self.q_proj(x).view(T, self.size.H, NOPE + R)
        q_pe = q[..., NOPE:]
        kv_c, k_pe = self.kv_a_proj(x).split([LATENT, R], dim=-1)
        k_pe = k_pe.unsqueeze(1)
        cos = self.cos_cache[positions].unsqueeze(1)
        sin = self.sin_cache[positions].unsqueeze(1)
        q_pe = apply_neox(q_pe, cos, sin)
        k_pe = apply_neox(k_pe, cos, sin)
        return torch.cat((q[..., :NOPE], q_pe), dim=-1), kv_c, k_pe


class PartialRotary(_Base):
    """Partial rotary (GPT-NeoX / Phi): only x[..., :rot] is rotated, then cat with
    the pass-through x[..., rot:]; layout [B,H,S,D] with head dim NOPE + rope and
    rotary dim = size.rope; k has one head."""

    def __init__(self, size: Size, dtype: torch.dtype, seed: int = 0):
        super().__init__(size, dtype, seed)
        self.head_dim = NOPE + size.rope
        self.q_proj = linear(HIDDEN, size.H * self.head_dim, dtype, self.gen)
        self.k_proj = linear(HIDDEN, self.head_dim, dtype, self.gen)
        cos, sin = neox_cache(size.rope, dtype)
        self.register_buffer("cos_cached", cos, persistent=False)
        self.register_buffer("sin_cached", sin, persistent=False)

    def forward(self, x):
        B, S, _ = x.shape
        rot = self.size.rope
        q = self.q_proj(x).view(B, S, self.size.H, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, S, 1, self.head_dim).transpose(1, 2)
        cos = self.cos_cached[:S][None, None]
        sin = self.sin_cached[:S][None, None]
        q_rot, q_pass = q[..., :rot], q[..., rot:]
        k_rot, k_pass = k[..., :rot], k[..., rot:]
        q_rot = apply_neox(q_rot, cos, sin)
        k_rot = apply_neox(k_rot, cos, sin)
        return torch.cat((q_rot, q_pass), dim=-1), torch.cat((k_rot, k_pass), dim=-1)


# ------------------------------------------------------------ catalogue

@dataclass(frozen=True)
class Shape:
    """One RoPE code shape: how to build it and what the report must say."""
    name: str
    build: object                 # (size, dtype) -> module
    counts: dict
    form: str                     # RopeMatch.form expected on every rope match
    style: str                    # the match's "style" param


SHAPES = [
    Shape("neox_slice", lambda s, dt: NeoxAttention(s, dt, rotate="slice", cos_from="slice"),
          {"rope.neox": 2, "rope.one_launch": 1}, "neox", "neox"),
    Shape("neox_chunk", lambda s, dt: NeoxAttention(s, dt, rotate="chunk", cos_from="gather"),
          {"rope.neox": 2, "rope.one_launch": 1}, "neox", "neox"),
    Shape("even_odd", EvenOddAttention,
          {"rope.pairs": 2, "rope.one_launch": 1}, "even_odd", "deinterleaved"),
    Shape("deinterleave", DeepseekV2Attention,
          {"rope.neox": 2, "rope.one_launch": 1}, "neox_deinterleave", "deinterleaved"),
    Shape("complex", DeepseekInferenceMLA,
          {"rope.complex": 2, "rope.one_launch": 1}, "complex", "interleaved"),
    Shape("complex_qk", LlamaComplexAttention,
          {"rope.complex": 2, "rope.one_launch": 1}, "complex", "interleaved"),
    Shape("mla_bshd", MlaNeoxBSHD,
          {"rope.neox": 2, "rope.one_launch": 1}, "neox", "neox"),
    Shape("token_thd", TokenMLA,
          {"rope.neox": 2, "rope.one_launch": 1}, "neox", "neox"),
    Shape("partial", PartialRotary,
          {"rope.neox": 2, "rope.one_launch": 1}, "neox", "neox"),
]
