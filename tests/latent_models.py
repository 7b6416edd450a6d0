"""Model code in the shape of DeepSeek's inference code (attn_impl="absorb", and
`NaiveMLA` for attn_impl="naive"), written for these tests: the latent and rope caches are buffers updated by slice assignment,
q_nope is absorbed through kv_b's weight with an einsum, the scores are the sum of two
einsums over the caches, and the output goes back through kv_b's value rows.

`variant` changes one thing, for the look-alikes the matcher must leave alone:
  "value_other"  the probabilities multiply another buffer, not the latent cache;
  "pe_per_head"  the rope cache holds one key per head (not MLA's shared k_pe);
  "scaled_apart" the two score terms carry different scales.
"""
import torch
import torch.nn as nn

DIMS = dict(dim=64, heads=4, rank=32, nope=16, rope=8, v=16)


def freqs_cis(rope: int, positions: int, theta: float = 10000.0) -> torch.Tensor:
    freqs = 1.0 / (theta ** (torch.arange(0, rope, 2, dtype=torch.float32) / rope))
    angles = torch.outer(torch.arange(positions, dtype=torch.float32), freqs)
    return torch.polar(torch.ones_like(angles), angles)


def rotate(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """x [B, S, H, D] rotated by freqs [S, D/2] (complex pairs, DeepSeek's convention)."""
    xc = torch.view_as_complex(x.float().view(*x.shape[:-1], -1, 2))
    out = torch.view_as_real(xc * freqs.view(1, xc.size(1), 1, xc.size(-1))).flatten(3)
    return out.to(x.dtype)


class AbsorbedMLA(nn.Module):
    def __init__(self, dim=64, heads=4, rank=32, nope=16, rope=8, v=16, max_batch=4, max_len=64,
                 variant=None, dtype=torch.float32):
        super().__init__()
        self.heads, self.rank, self.nope, self.rope, self.v, self.variant = heads, rank, nope, rope, v, variant
        self.wq = nn.Linear(dim, heads * (nope + rope), bias=False, dtype=dtype)
        self.wkv_a = nn.Linear(dim, rank + rope, bias=False, dtype=dtype)
        self.kv_norm = nn.RMSNorm(rank, dtype=dtype)
        self.wkv_b = nn.Linear(rank, heads * (nope + v), bias=False, dtype=dtype)
        self.wo = nn.Linear(heads * v, dim, bias=False, dtype=dtype)
        self.scale = (nope + rope) ** -0.5
        pe_shape = (max_batch, max_len, heads, rope) if variant == "pe_per_head" else (max_batch, max_len, rope)
        self.register_buffer("kv_cache", torch.zeros(max_batch, max_len, rank, dtype=dtype), persistent=False)
        self.register_buffer("pe_cache", torch.zeros(pe_shape, dtype=dtype), persistent=False)
        if variant == "value_other":
            self.register_buffer("other", torch.randn(max_batch, max_len, rank, dtype=dtype), persistent=False)

    def forward(self, x, start_pos: int, freqs, mask=None):
        bsz, seqlen, _ = x.shape
        end = start_pos + seqlen
        q = self.wq(x).view(bsz, seqlen, self.heads, self.nope + self.rope)
        q_nope, q_pe = torch.split(q, [self.nope, self.rope], dim=-1)
        q_pe = rotate(q_pe, freqs)
        kv, k_pe = torch.split(self.wkv_a(x), [self.rank, self.rope], dim=-1)
        k_pe = rotate(k_pe.unsqueeze(2), freqs)
        wkv_b = self.wkv_b.weight.view(self.heads, -1, self.rank)
        q_nope = torch.einsum("bshd,hdc->bshc", q_nope, wkv_b[:, :self.nope])
        self.kv_cache[:bsz, start_pos:end] = self.kv_norm(kv)
        if self.variant == "pe_per_head":
            self.pe_cache[:bsz, start_pos:end] = k_pe.expand(-1, -1, self.heads, -1) * torch.arange(
                1, self.heads + 1, dtype=x.dtype, device=x.device)[:, None]
            rope_scores = torch.einsum("bshr,bthr->bsht", q_pe, self.pe_cache[:bsz, :end])
        else:
            self.pe_cache[:bsz, start_pos:end] = k_pe.squeeze(2)
            rope_scores = torch.einsum("bshr,btr->bsht", q_pe, self.pe_cache[:bsz, :end])
        latent_scores = torch.einsum("bshc,btc->bsht", q_nope, self.kv_cache[:bsz, :end])
        if self.variant == "scaled_apart":
            scores = latent_scores * self.scale + rope_scores * (self.scale * 0.5)
        else:
            scores = (latent_scores + rope_scores) * self.scale
        if mask is not None:
            scores += mask.unsqueeze(1)
        scores = scores.softmax(dim=-1, dtype=torch.float32).type_as(x)
        values = self.other if self.variant == "value_other" else self.kv_cache
        out = torch.einsum("bsht,btc->bshc", scores, values[:bsz, :end])
        out = torch.einsum("bshc,hdc->bshd", out, wkv_b[:, -self.v:])
        return self.wo(out.flatten(2))


class NaiveMLA(AbsorbedMLA):
    """attn_impl="naive": K and V decompressed through wkv_b, written to per-head K/V
    cache buffers by slice assignment, scores an einsum over the K cache in [B, S, H, T]
    order, scaled, the [S, T] mask added over the heads, P @ the V cache. The caches hold
    decompressed keys: only a step that reads back exactly what it wrote (a prefill from
    position 0 of the whole batch the buffers hold) is attention over this step's latent."""

    def __init__(self, dim=64, heads=4, rank=32, nope=16, rope=8, v=16, max_batch=2, max_len=64,
                 dtype=torch.float32):
        super().__init__(dim, heads, rank, nope, rope, v, max_batch, max_len, dtype=dtype)
        del self.kv_cache, self.pe_cache
        self.register_buffer("k_cache", torch.zeros(max_batch, max_len, heads, nope + rope, dtype=dtype),
                             persistent=False)
        self.register_buffer("v_cache", torch.zeros(max_batch, max_len, heads, v, dtype=dtype), persistent=False)

    def forward(self, x, start_pos: int, freqs, mask=None):
        bsz, seqlen, _ = x.shape
        end = start_pos + seqlen
        q = self.wq(x).view(bsz, seqlen, self.heads, self.nope + self.rope)
        q_nope, q_pe = torch.split(q, [self.nope, self.rope], dim=-1)
        q_pe = rotate(q_pe, freqs)
        kv, k_pe = torch.split(self.wkv_a(x), [self.rank, self.rope], dim=-1)
        k_pe = rotate(k_pe.unsqueeze(2), freqs)
        q = torch.cat([q_nope, q_pe], dim=-1)
        kv = self.wkv_b(self.kv_norm(kv)).view(bsz, seqlen, self.heads, self.nope + self.v)
        k_nope, v = torch.split(kv, [self.nope, self.v], dim=-1)
        k = torch.cat([k_nope, k_pe.expand(-1, -1, self.heads, -1)], dim=-1)
        self.k_cache[:bsz, start_pos:end] = k
        self.v_cache[:bsz, start_pos:end] = v
        scores = torch.einsum("bshd,bthd->bsht", q, self.k_cache[:bsz, :end]) * self.scale
        if mask is not None:
            scores += mask.unsqueeze(1)
        scores = scores.softmax(dim=-1, dtype=torch.float32).type_as(x)
        out = torch.einsum("bsht,bthd->bshd", scores, self.v_cache[:bsz, :end])
        return self.wo(out.flatten(2))


def causal_mask(seqlen: int, start_pos: int, dtype=torch.float32) -> torch.Tensor:
    """[S, start_pos + S]: query i sees the cache and keys up to start_pos + i (-inf above)."""
    return torch.full((seqlen, start_pos + seqlen), float("-inf"), dtype=dtype).triu_(start_pos + 1)
