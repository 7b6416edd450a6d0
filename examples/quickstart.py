"""Quick start: compile a small DeepSeek-style MLA attention block with
`backend="mla"`, print what was rewritten and the error against eager.

    python examples/quickstart.py            # CPU, or the GPU when there is one
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


class MLAAttention(nn.Module):
    """DeepSeek-V2/V3 attention: low-rank q, a compressed latent KV with a
    shared rope key, neox RoPE on the rope parts, softmax attention."""

    def __init__(self, hidden=256, heads=4, q_lora=96, kv_lora=64, nope=32, rope=16, v_dim=32, max_pos=512):
        super().__init__()
        self.h, self.nope, self.rope, self.v_dim, self.kv_lora = heads, nope, rope, v_dim, kv_lora
        self.q_a_proj = nn.Linear(hidden, q_lora, bias=False)
        self.q_a_norm = RMSNorm(q_lora)
        self.q_b_proj = nn.Linear(q_lora, heads * (nope + rope), bias=False)
        self.kv_a_proj = nn.Linear(hidden, kv_lora + rope, bias=False)
        self.kv_a_norm = RMSNorm(kv_lora)
        self.kv_b_proj = nn.Linear(kv_lora, heads * (nope + v_dim), bias=False)
        self.o_proj = nn.Linear(heads * v_dim, hidden, bias=False)
        self.scale = (nope + rope) ** -0.5
        inv_freq = 1.0 / (10000 ** (torch.arange(0, rope, 2).float() / rope))
        freqs = torch.outer(torch.arange(max_pos).float(), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos(), persistent=False)
        self.register_buffer("sin_cached", emb.sin(), persistent=False)

    def forward(self, x, position_ids):
        b, s, _ = x.shape
        q = self.q_b_proj(self.q_a_norm(self.q_a_proj(x)))
        q = q.view(b, s, self.h, self.nope + self.rope).transpose(1, 2)
        q_nope, q_pe = torch.split(q, [self.nope, self.rope], dim=-1)
        kv = self.kv_a_proj(x)
        c_kv, k_pe = torch.split(kv, [self.kv_lora, self.rope], dim=-1)
        k_pe = k_pe.view(b, 1, s, self.rope)
        cos = self.cos_cached[position_ids].unsqueeze(1).to(x.dtype)
        sin = self.sin_cached[position_ids].unsqueeze(1).to(x.dtype)
        q_pe = q_pe * cos + rotate_half(q_pe) * sin
        k_pe = k_pe * cos + rotate_half(k_pe) * sin
        kv = self.kv_b_proj(self.kv_a_norm(c_kv)).view(b, s, self.h, self.nope + self.v_dim).transpose(1, 2)
        k_nope, v = torch.split(kv, [self.nope, self.v_dim], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1)
        k = torch.cat([k_nope, k_pe.expand(-1, self.h, -1, -1)], dim=-1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return self.o_proj(o.transpose(1, 2).reshape(b, s, self.h * self.v_dim))


def main():
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = MLAAttention().to(device, dtype).eval()
    x = torch.randn(2, 64, 256, device=device, dtype=dtype)
    position_ids = torch.arange(64, device=device).expand(2, -1)

    reports = []
    compiled = torch.compile(model, backend="mla", options={"report": reports.append})
    with torch.no_grad():
        expected = model(x, position_ids)
        actual = compiled(x, position_ids)

    for report in reports:
        print(report.format())
    error = ((actual.float() - expected.float()).abs().max() / expected.float().abs().max()).item()
    print(f"device={device} dtype={str(dtype).replace('torch.', '')} rewrites={reports[0].counts()}")
    print(f"max relative error vs eager: {error:.2e}")
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-4
    if not math.isfinite(error) or error > tolerance:
        raise SystemExit(f"error {error:.2e} above tolerance {tolerance:.0e}")


if __name__ == "__main__":
    main()
