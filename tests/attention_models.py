"""MLA attention layers (DeepSeek-V2/V3 multi-head latent attention) as real model
code writes them, one small module per code shape, for the attention-fusion tests.

Every module goes x -> q (q_proj, or q_a_proj -> RMSNorm -> q_b_proj) and
x -> kv_a_proj_with_mqa -> [c_kv | k_pe]; RMSNorm(c_kv) -> kv_b_proj -> [k_nope | v]
per head; RoPE on q_pe and on k_pe (ONE head, shared by all heads); q = [q_nope,
q_pe], k = [k_nope, k_pe]; softmax(q k^T * scale + mask) v per head; o_proj.
V is narrower than q/k (size.v != nope + rope), as in DeepSeek (128 vs 192).

SHAPES (catalogue at the bottom), kind "match":
  hf_v3               transformers 5.17 DeepseekV3Attention: latents [B,1,S,L], key
                      new_empty + copy_, matmul * YaRN scale + float mask, fp32 softmax
  hf_v3_qlora_padded  the same, q_a_proj -> norm -> q_b_proj, causal + padding mask
  hf_cat_expand       key cat([k_nope, k_pe.expand(-1, H, -1, -1)]), 3-D latents
  hf_assign_broadcast key and query new_empty + slice assignment, k_pe [B,1,S,R]
                      broadcast by the assignment (no expand)
  hf_div_sqrt         scores / math.sqrt(nope + rope), plain softmax
  hf_q_nope_scaled    q_nope * 0.5 before the query cat (must stay in the math)
  sdpa_causal / sdpa_float_mask / sdpa_bool_mask / sdpa_no_mask: SDPA with
                      is_causal=True / additive float / bool causal+padding / no mask
  sdpa_pad_v          V zero-padded to the q/k dim, SDPA, output cropped [..., :v]
  ds_einsum_complex   DeepSeek-V3 inference code, [B,S,H,D], q LoRA, complex RoPE, key
                      cat with k_pe.expand(-1, -1, H, -1), einsum, in-place -inf mask
  bshd_einsum_neox    [B,S,H,D] einsum, key cat with k_pe.unsqueeze(2).expand(B,S,H,R)
  token_einsum        tokens [T,H,D], even/odd RoPE, einsum "thd,shd->hts", causal
  token_matmul        the same through transpose(0, 1) + matmul
  two_layers          two hf_v3 layers on the same x, summed (expected_matches = 2)
  sink                gpt-oss / HY-V4 attention sinks: a logit per head as an extra
                      softmax column, dropped after (the op's `sinks`)
kind "leave_alone" (expected_matches = 0; compiled must still equal eager):
  softcap             tanh(scores / cap) * cap
  per_head_rope       k_pe with H heads (MHA with a rope part, not MLA)
  separate_v          V from its own projection of x, not from the latent
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from rope_models import (
    HIDDEN, apply_even_odd, apply_neox, apply_rotary_emb, half_cache, linear, neox_cache,
    positions, precompute_freqs_cis,
)

YARN_MSCALE = 0.1 * math.log(40) + 1.0   # yarn_get_mscale(factor=40, mscale_all_dim=1)


@dataclass(frozen=True)
class AttnSize:
    B: int          # batch
    S: int          # sequence length
    H: int          # heads
    nope: int = 16  # qk_nope_head_dim
    rope: int = 8   # qk_rope_head_dim
    v: int = 16     # v_head_dim
    latent: int = 32  # kv_lora_rank
    q_lora: int | None = None  # q_lora_rank (None: q_proj)

    def __str__(self) -> str:
        q = f"Q{self.q_lora}" if self.q_lora else ""
        return f"B{self.B}S{self.S}H{self.H}N{self.nope}R{self.rope}V{self.v}L{self.latent}{q}"


# ------------------------------------------------------------ building blocks

class RMSNorm(nn.Module):
    """transformers DeepseekV3RMSNorm (fp32 statistics), weight random around 1."""

    def __init__(self, dim: int, dtype: torch.dtype, gen: torch.Generator, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter((1 + 0.1 * torch.randn(dim, generator=gen)).to(dtype))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def padding_keep(B: int, S: int, padded: bool) -> torch.Tensor:
    """bool [B,1,S,S], True = attend: causal, and with `padded` row b right-padded
    to length max(1, S - 2b) (key 0 is always kept, so no row is fully masked)."""
    keep = torch.ones(S, S, dtype=torch.bool).tril().expand(B, 1, S, S).clone()
    if padded:
        for b in range(B):
            keep[b, :, :, max(1, S - 2 * b):] = False
    return keep


def additive_mask(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where kept, torch.finfo(dtype).min elsewhere (transformers' float mask)."""
    return torch.zeros(keep.shape, dtype=dtype).masked_fill(~keep, torch.finfo(dtype).min)


class _MLA(nn.Module):
    """Weights shared by all shapes, created in a fixed order from `seed`."""

    expected_matches = 1

    def __init__(self, size: AttnSize, dtype: torch.dtype, seed: int = 0,
                 q_lora: int | None = None, yarn: bool = False):
        super().__init__()
        self.size, self.dtype = size, dtype
        g = torch.Generator().manual_seed(seed)
        H, N, R, V, L = size.H, size.nope, size.rope, size.v, size.latent
        self.q_lora = q_lora if q_lora is not None else size.q_lora
        if self.q_lora:
            self.q_a_proj = linear(HIDDEN, self.q_lora, dtype, g)
            self.q_a_layernorm = RMSNorm(self.q_lora, dtype, g)
            self.q_b_proj = linear(self.q_lora, H * (N + R), dtype, g)
        else:
            self.q_proj = linear(HIDDEN, H * (N + R), dtype, g)
        self.kv_a_proj_with_mqa = linear(HIDDEN, L + R, dtype, g)
        self.kv_a_layernorm = RMSNorm(L, dtype, g)
        self.kv_b_proj = linear(L, H * (N + V), dtype, g)
        self.o_proj = linear(H * V, HIDDEN, dtype, g)
        self.scaling = (N + R) ** -0.5 * (YARN_MSCALE * YARN_MSCALE if yarn else 1.0)
        self.gen = g  # subclasses draw their extra weights from it

    def _q(self, x):
        if self.q_lora:
            return self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        return self.q_proj(x)

    def _register(self, **tensors):
        for name, t in tensors.items():
            self.register_buffer(name, t, persistent=False)

    def _dims(self, seed, S, B):
        B, S = (self.size.B if B is None else B), (self.size.S if S is None else S)
        return torch.Generator().manual_seed(seed), B, S

    def example_inputs(self, seed: int = 1, S: int | None = None, B: int | None = None) -> tuple:
        gen, B, S = self._dims(seed, S, B)
        return (torch.randn(B, S, HIDDEN, generator=gen).to(self.dtype),)


# ------------------------------------------------------------ transformers style, [B,H,S,D]

class HFMLA(_MLA):
    """transformers-style MLA, layout [B,H,S,D] (view(B,S,H,D).transpose(1, 2)),
    neox RoPE with cos/sin = cache[position_ids].unsqueeze(1).

    key: "cat" (expand(-1, H, -1, -1)) | "copy" (new_empty + copy_) |
         "assign" (new_empty + slice assignment, k_pe broadcast, no expand)
    query: "cat" | "assign";  latent4d: kv_b_proj on c_kv.view(B, 1, S, L)
    attn: "eager" (matmul * scale, fp32 softmax) | "div" (/ sqrt(D), plain
          softmax) | "sdpa";  pad_v: SDPA on V zero-padded to D, output cropped
    mask: "none" | "causal" | "padded" (float additive inputs) | "bool_padded"
          (bool input) | "is_causal" (SDPA is_causal=True, no input)
    """

    def __init__(self, size: AttnSize, dtype: torch.dtype, seed: int = 0, *, q_lora=None,
                 yarn=False, key="cat", query="cat", latent4d=False, attn="eager",
                 mask="causal", pad_v=False, q_nope_scale=None):
        super().__init__(size, dtype, seed, q_lora=q_lora, yarn=yarn)
        assert key in ("cat", "copy", "assign") and query in ("cat", "assign")
        assert attn in ("eager", "div", "sdpa")
        assert mask in ("none", "causal", "padded", "bool_padded", "is_causal")
        assert attn == "sdpa" or (mask != "is_causal" and not pad_v)
        self.key, self.query, self.latent4d = key, query, latent4d
        self.attn, self.mask, self.pad_v, self.q_nope_scale = attn, mask, pad_v, q_nope_scale
        cos, sin = neox_cache(size.rope, dtype)
        self._register(cos_cached=cos, sin_cached=sin)

    def example_inputs(self, seed: int = 1, S: int | None = None, B: int | None = None) -> tuple:
        gen, B, S = self._dims(seed, S, B)
        x = torch.randn(B, S, HIDDEN, generator=gen).to(self.dtype)
        pos = positions(B, S, gen)
        if self.mask in ("none", "is_causal"):
            return x, pos
        keep = padding_keep(B, S, padded=self.mask != "causal")
        return x, pos, keep if self.mask == "bool_padded" else additive_mask(keep, self.dtype)

    def _kv(self, x):
        """k_nope [B,H,S,N], k_pe [B,1,S,R] (before RoPE), v [B,H,S,V]."""
        B, S, _ = x.shape
        N, R, V, L = self.size.nope, self.size.rope, self.size.v, self.size.latent
        c_kv, k_pe = torch.split(self.kv_a_proj_with_mqa(x), [L, R], dim=-1)
        c_kv = self.kv_a_layernorm(c_kv)
        k_pe = k_pe.view(B, 1, S, R)
        if self.latent4d:
            c_kv = c_kv.view(B, 1, S, L)
        kv = self.kv_b_proj(c_kv).view(B, S, -1, N + V).transpose(1, 2)
        k_nope, v = torch.split(kv, [N, V], dim=-1)
        return k_nope, k_pe, v

    def _key(self, k_nope, k_pe):
        N = self.size.nope
        if self.key == "cat":
            return torch.cat([k_nope, k_pe.expand(-1, k_nope.shape[1], -1, -1)], dim=-1)
        k = k_pe.new_empty(*k_nope.shape[:-1], N + k_pe.shape[-1])
        if self.key == "copy":
            k[..., :N].copy_(k_nope)
            k[..., N:].copy_(k_pe.expand(-1, k_nope.shape[1], -1, -1))
        else:
            k[..., :N] = k_nope
            k[..., N:] = k_pe
        return k

    def _query(self, q_nope, q_pe):
        if self.query == "cat":
            return torch.cat([q_nope, q_pe], dim=-1)
        N = self.size.nope
        q = q_pe.new_empty(*q_pe.shape[:-1], N + q_pe.shape[-1])
        q[..., :N] = q_nope
        q[..., N:] = q_pe
        return q

    def _probs(self, scores, dtype):
        if self.attn == "div":
            return scores.softmax(dim=-1)
        return F.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)

    def _attend(self, q, k, v, mask):
        if self.attn == "sdpa":
            if self.pad_v:
                v = F.pad(v, [0, q.shape[-1] - v.shape[-1]])
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                 is_causal=self.mask == "is_causal", scale=self.scaling)
            return out[..., :self.size.v] if self.pad_v else out
        if self.attn == "div":
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        else:
            scores = torch.matmul(q, k.transpose(2, 3)) * self.scaling
        if mask is not None:
            scores = scores + mask
        p = self._probs(scores, q.dtype)
        p = F.dropout(p, p=0.0, training=self.training)
        return torch.matmul(p, v)

    def forward(self, x, position_ids, attention_mask=None):
        B, S, _ = x.shape
        N, R = self.size.nope, self.size.rope
        q = self._q(x).view(B, S, -1, N + R).transpose(1, 2)
        q_nope, q_pe = torch.split(q, [N, R], dim=-1)
        if self.q_nope_scale is not None:
            q_nope = q_nope * self.q_nope_scale
        k_nope, k_pe, v = self._kv(x)
        cos = self.cos_cached[position_ids].unsqueeze(1)
        sin = self.sin_cached[position_ids].unsqueeze(1)
        q_pe, k_pe = apply_neox(q_pe, cos, sin), apply_neox(k_pe, cos, sin)
        out = self._attend(self._query(q_nope, q_pe), self._key(k_nope, k_pe), v, attention_mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, S, -1).contiguous())


class TwoLayerMLA(nn.Module):
    """Two HFMLA layers (hf_v3 style) side by side on the same x, outputs summed:
    two attention computations in one graph. (Not chained: a second layer on the
    first's bf16 output drifts past 1e-2 from eager even under plain inductor.)"""

    expected_matches = 2

    def __init__(self, size: AttnSize, dtype: torch.dtype, seed: int = 0, **kw):
        super().__init__()
        self.size, self.dtype = size, dtype
        self.layer0 = HFMLA(size, dtype, seed, **kw)
        self.layer1 = HFMLA(size, dtype, seed + 100, **kw)

    def example_inputs(self, seed: int = 1, S: int | None = None, B: int | None = None) -> tuple:
        return self.layer0.example_inputs(seed, S, B)

    def forward(self, x, position_ids, attention_mask=None):
        return self.layer0(x, position_ids, attention_mask) + self.layer1(x, position_ids, attention_mask)


# ------------------------------------------------------------ [B,S,H,D] with einsum

class EinsumMLA(_MLA):
    """DeepSeek-V3 inference code (naive attention), layout [B,S,H,D], einsum
    scores "bshd,bthd->bhst" and output "bhst,bthd->bshd"; causal mask built in
    forward (full -inf, triu_(1)) and added in place.
    rope: "complex" (apply_rotary_emb, freqs_cis[start_pos:start_pos+S], k_pe
    [B,S,1,R] then expand(-1, -1, H, -1)) | "neox" (cos/sin cache[start_pos:...],
    k_pe kept [B,S,R] then unsqueeze(2).expand(B, S, H, R))."""

    def __init__(self, size: AttnSize, dtype: torch.dtype, seed: int = 0, *, rope="complex",
                 q_lora=None, yarn=False, start_pos: int = 2):
        super().__init__(size, dtype, seed, q_lora=q_lora, yarn=yarn)
        self.rope, self.start_pos = rope, start_pos
        cos, sin = neox_cache(size.rope, dtype)
        self._register(freqs_cis=precompute_freqs_cis(size.rope), cos_cached=cos, sin_cached=sin)

    def forward(self, x):
        B, S, _ = x.shape
        H, N, R, V, L = self.size.H, self.size.nope, self.size.rope, self.size.v, self.size.latent
        q = self._q(x).view(B, S, H, N + R)
        q_nope, q_pe = torch.split(q, [N, R], dim=-1)
        kv, k_pe = torch.split(self.kv_a_proj_with_mqa(x), [L, R], dim=-1)
        kv = self.kv_b_proj(self.kv_a_layernorm(kv)).view(B, S, H, N + V)
        k_nope, v = torch.split(kv, [N, V], dim=-1)
        sp = self.start_pos
        if self.rope == "complex":
            freqs_cis = self.freqs_cis[sp:sp + S]
            q_pe = apply_rotary_emb(q_pe, freqs_cis)
            k_pe = apply_rotary_emb(k_pe.unsqueeze(2), freqs_cis)
            k = torch.cat([k_nope, k_pe.expand(-1, -1, H, -1)], dim=-1)
        else:
            cos, sin = self.cos_cached[sp:sp + S], self.sin_cached[sp:sp + S]
            q_pe = apply_neox(q_pe, cos[:, None], sin[:, None])
            k_pe = apply_neox(k_pe, cos, sin)
            k = torch.cat([k_nope, k_pe.unsqueeze(2).expand(B, S, H, R)], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1)
        scores = torch.einsum("bshd,bthd->bhst", q, k) * self.scaling
        mask = torch.full((S, S), float("-inf"), device=x.device).triu_(1)
        scores += mask
        scores = scores.softmax(dim=-1, dtype=torch.float32).type_as(x)
        out = torch.einsum("bhst,bthd->bshd", scores, v)
        return self.o_proj(out.flatten(2))


# ------------------------------------------------------------ tokens flattened [T,H,D]

class TokenMLA(_MLA):
    """Tokens flattened (vLLM style): x [T, HIDDEN], positions [T]; even/odd RoPE
    with half-width cos/sin = cache[positions].unsqueeze(1); causal attention over
    all T tokens (fp32 -inf mask built in forward).
    attn: "einsum" ("thd,shd->hts", "hts,shd->thd") | "matmul" (transpose(0, 1))."""

    def __init__(self, size: AttnSize, dtype: torch.dtype, seed: int = 0, *, attn="einsum",
                 q_lora=None, yarn=False):
        super().__init__(size, dtype, seed, q_lora=q_lora, yarn=yarn)
        self.attn = attn
        cos, sin = half_cache(size.rope, dtype)
        self._register(cos_half=cos, sin_half=sin)

    def example_inputs(self, seed: int = 1, S: int | None = None, B: int | None = None) -> tuple:
        gen, B, S = self._dims(seed, S, B)
        x = torch.randn(B * S, HIDDEN, generator=gen).to(self.dtype)
        return x, positions(B, S, gen).flatten()

    def forward(self, x, positions):
        T = x.shape[0]
        H, N, R, V, L = self.size.H, self.size.nope, self.size.rope, self.size.v, self.size.latent
        q = self._q(x).view(T, H, N + R)
        q_nope, q_pe = q[..., :N], q[..., N:]
        kv_c, k_pe = self.kv_a_proj_with_mqa(x).split([L, R], dim=-1)
        kv = self.kv_b_proj(self.kv_a_layernorm(kv_c)).view(T, H, N + V)
        k_nope, v = kv.split([N, V], dim=-1)
        cos = self.cos_half[positions].unsqueeze(1)
        sin = self.sin_half[positions].unsqueeze(1)
        q_pe = apply_even_odd(q_pe, cos, sin)
        k_pe = apply_even_odd(k_pe.unsqueeze(1), cos, sin)
        q = torch.cat([q_nope, q_pe], dim=-1)
        k = torch.cat([k_nope, k_pe.expand(-1, H, -1)], dim=-1)
        mask = torch.full((T, T), float("-inf"), device=x.device).triu(1)
        if self.attn == "einsum":
            scores = torch.einsum("thd,shd->hts", q, k) * self.scaling
            p = F.softmax(scores + mask, dim=-1, dtype=torch.float32).to(q.dtype)
            out = torch.einsum("hts,shd->thd", p, v)
        else:
            scores = torch.matmul(q.transpose(0, 1), k.transpose(0, 1).transpose(1, 2)) * self.scaling
            p = F.softmax(scores + mask, dim=-1, dtype=torch.float32).to(q.dtype)
            out = torch.matmul(p, v.transpose(0, 1)).transpose(0, 1)
        return self.o_proj(out.reshape(T, H * V))


# ------------------------------------------------------------ attention sinks

class SinkAttention(HFMLA):
    """gpt-oss style attention sinks: a learned per-head logit as an extra softmax
    column, dropped after the softmax (HY-V4 also subtracts the row max first)."""

    def __init__(self, size: AttnSize, dtype: torch.dtype, seed: int = 0, **kw):
        super().__init__(size, dtype, seed, **kw)
        self.sinks = nn.Parameter(torch.randn(size.H, generator=self.gen).to(dtype))

    def _probs(self, scores, dtype):
        B, H, S, _ = scores.shape
        sinks = self.sinks.reshape(1, H, 1, 1).expand(B, H, S, 1)
        combined = torch.cat([scores, sinks], dim=-1)  # HY-V4 (transformers 5.23): row max off first
        combined = combined - combined.max(dim=-1, keepdim=True).values
        return F.softmax(combined, dim=-1, dtype=combined.dtype)[..., :-1].to(dtype)


# ------------------------------------------------------------ look-alikes to leave alone

class SoftcapAttention(HFMLA):
    """Gemma-2 style logit soft-capping tanh(scores / cap) * cap before softmax."""

    expected_matches = 0
    cap = 5.0

    def _probs(self, scores, dtype):
        scores = torch.tanh(scores / self.cap) * self.cap
        return F.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)


class PerHeadRopeAttention(HFMLA):
    """k_pe projected per head ([B,H,S,R], not one shared head): plain MHA with a
    rope part, not MLA, even though k_nope / v come from a latent."""

    expected_matches = 0

    def __init__(self, size: AttnSize, dtype: torch.dtype, seed: int = 0, **kw):
        super().__init__(size, dtype, seed, **kw)
        self.k_rope_proj = linear(HIDDEN, size.H * size.rope, dtype, self.gen)

    def _kv(self, x):
        B, S, _ = x.shape
        k_nope, _, v = super()._kv(x)
        k_pe = self.k_rope_proj(x).view(B, S, self.size.H, self.size.rope).transpose(1, 2)
        return k_nope, k_pe, v


class SeparateVAttention(HFMLA):
    """V from its own projection of x (v_proj), not from the latent that gives K."""

    expected_matches = 0

    def __init__(self, size: AttnSize, dtype: torch.dtype, seed: int = 0, **kw):
        super().__init__(size, dtype, seed, **kw)
        H, N, V = size.H, size.nope, size.v
        self.kv_b_proj = linear(size.latent, H * N, dtype, self.gen)
        self.v_proj = linear(HIDDEN, H * V, dtype, self.gen)

    def _kv(self, x):
        B, S, _ = x.shape
        N, R, L = self.size.nope, self.size.rope, self.size.latent
        c_kv, k_pe = torch.split(self.kv_a_proj_with_mqa(x), [L, R], dim=-1)
        k_nope = self.kv_b_proj(self.kv_a_layernorm(c_kv)).view(B, S, -1, N).transpose(1, 2)
        v = self.v_proj(x).view(B, S, -1, self.size.v).transpose(1, 2)
        return k_nope, k_pe.view(B, 1, S, R), v


# ------------------------------------------------------------ catalogue

@dataclass(frozen=True)
class Shape:
    """One attention code shape. twin: builds the eager-matmul variant with the
    same weights and equivalent inputs (SDPA shapes only), or None."""
    name: str
    build: object                 # (size, dtype) -> module
    kind: str                     # "match" | "leave_alone"
    twin: object = None


def _hf(name, cls=HFMLA, kind="match", **kw):
    return Shape(name, lambda s, dt: cls(s, dt, **kw), kind)


def _sdpa(name, **kw):
    eager = {**kw, "attn": "eager", "pad_v": False,
             "mask": {"is_causal": "causal", "bool_padded": "padded"}.get(kw["mask"], kw["mask"])}
    return replace(_hf(name, attn="sdpa", **kw), twin=lambda s, dt: HFMLA(s, dt, **eager))


HF_V3 = dict(yarn=True, key="copy", latent4d=True)   # transformers 5.17 DeepseekV3Attention

SHAPES = [
    _hf("hf_v3", **HF_V3),
    _hf("hf_v3_qlora_padded", q_lora=24, mask="padded", **HF_V3),
    _hf("hf_cat_expand", key="cat"),
    _hf("hf_assign_broadcast", key="assign", query="assign", latent4d=True),
    _hf("hf_div_sqrt", attn="div"),
    _hf("hf_q_nope_scaled", q_nope_scale=0.5, yarn=True),
    _sdpa("sdpa_causal", mask="is_causal", yarn=True),
    _sdpa("sdpa_float_mask", mask="padded", key="copy", latent4d=True),
    _sdpa("sdpa_bool_mask", mask="bool_padded", q_lora=24),
    _sdpa("sdpa_no_mask", mask="none", key="assign"),
    _sdpa("sdpa_pad_v", mask="is_causal", pad_v=True, yarn=True),
    Shape("ds_einsum_complex", lambda s, dt: EinsumMLA(s, dt, rope="complex", q_lora=24, yarn=True), "match"),
    Shape("bshd_einsum_neox", lambda s, dt: EinsumMLA(s, dt, rope="neox"), "match"),
    Shape("token_einsum", lambda s, dt: TokenMLA(s, dt, attn="einsum"), "match"),
    Shape("token_matmul", lambda s, dt: TokenMLA(s, dt, attn="matmul", yarn=True), "match"),
    Shape("two_layers", lambda s, dt: TwoLayerMLA(s, dt, **HF_V3), "match"),
    _hf("sink", SinkAttention, key="copy", latent4d=True),
    _hf("softcap", SoftcapAttention, "leave_alone", yarn=True),
    _hf("per_head_rope", PerHeadRopeAttention, "leave_alone", key="cat"),
    _hf("separate_v", SeparateVAttention, "leave_alone", key="copy"),
]
