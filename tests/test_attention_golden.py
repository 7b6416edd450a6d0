"""Golden graphs: the canonical text of the graph after the mla passes, one per MLA
attention code shape, from the rotated q_pe / k_pe and the latent c_kv to the
attention output (static shapes, so the text is deterministic).

Regenerate after an intended change with
    EXPECTTEST_ACCEPT=1 python -m pytest tests/test_attention_golden.py
and review the diff.
"""
from __future__ import annotations

import expecttest
import torch
import torch.nn.functional as F

B, S, H, DN, DR, DV, R = 1, 4, 2, 4, 2, 4, 6
SCALE = (DN + DR) ** -0.5


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _inputs():
    """q_nope [B,S,H,DN], rotated q_pe [B,S,H,DR], latent c_kv [B,S,R], rotated k_pe
    [B,S,DR], kv_b_proj weight [H*(DN+DV), R], causal additive mask."""
    mask = torch.full((S, S), float("-inf")).triu(1)[None, None]
    return (_randn(B, S, H, DN, seed=0), _randn(B, S, H, DR, seed=4), _randn(B, S, R, seed=1),
            _randn(B, S, DR, seed=2), _randn(H * (DN + DV), R, seed=3) * R ** -0.5, mask)


def hf_eager(q_nope, q_pe, c_kv, k_pe, w_kv_b, mask):
    """transformers DeepseekV3Attention: [B,H,S,D], key new_empty + copy_, matmul * scale
    + additive mask, fp32 softmax, matmul."""
    q_nope, q_pe = q_nope.transpose(1, 2), q_pe.transpose(1, 2)
    kv = F.linear(c_kv, w_kv_b).view(B, S, H, DN + DV).transpose(1, 2)
    k_nope, v = kv.split([DN, DV], dim=-1)
    k_pe = k_pe.view(B, 1, S, DR).expand(-1, H, -1, -1)
    query = torch.cat([q_nope, q_pe], dim=-1)
    key = k_pe.new_empty(B, H, S, DN + DR)
    key[..., :DN].copy_(k_nope)
    key[..., DN:].copy_(k_pe)
    scores = torch.matmul(query, key.transpose(2, 3)) * SCALE + mask
    probs = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(probs, v).transpose(1, 2).reshape(B, S, H * DV)


def sdpa_padded_v(q_nope, q_pe, c_kv, k_pe, w_kv_b, mask):
    """flash-attention style: key cat with expand, V zero-padded to DN+DR, SDPA with
    is_causal, output cropped."""
    q = torch.cat([q_nope, q_pe], dim=-1).transpose(1, 2)
    kv = F.linear(c_kv, w_kv_b).view(B, S, H, DN + DV).transpose(1, 2)
    k_nope, v = kv.split([DN, DV], dim=-1)
    key = torch.cat([k_nope, k_pe.view(B, 1, S, DR).expand(-1, H, -1, -1)], dim=-1)
    v = F.pad(v, [0, DN + DR - DV])
    out = F.scaled_dot_product_attention(q, key, v, is_causal=True, scale=SCALE)[..., :DV]
    return out.transpose(1, 2).reshape(B, S, H * DV)


def bshd_einsum(q_nope, q_pe, c_kv, k_pe, w_kv_b, mask):
    """DeepSeek inference code: [B,S,H,D], key cat with an expand over [B,S,H], einsum."""
    q = torch.cat([q_nope, q_pe], dim=-1)
    kv = F.linear(c_kv, w_kv_b).view(B, S, H, DN + DV)
    k_nope, v = kv.split([DN, DV], dim=-1)
    key = torch.cat([k_nope, k_pe.unsqueeze(2).expand(B, S, H, DR)], dim=-1)
    scores = torch.einsum("bshd,bthd->bhst", q, key) * SCALE + mask
    probs = scores.softmax(dim=-1)
    return torch.einsum("bhst,bthd->bshd", probs, v).reshape(B, S, H * DV)


def absorbed_latent(q_nope, q_pe, c_kv, k_pe, w_kv_b, mask):
    """DeepSeek inference code in absorb mode: q_nope through W_uk, scores as two
    einsums (latent, rope), probabilities times the latent, then W_uv."""
    w = w_kv_b.view(H, DN + DV, R)
    q_lat = torch.einsum("bshd,hdc->bshc", q_nope, w[:, :DN])
    scores = (torch.einsum("bshc,btc->bsht", q_lat, c_kv) + torch.einsum("bshr,btr->bsht", q_pe, k_pe)) * SCALE
    probs = (scores + mask[0, 0][:, None]).softmax(dim=-1, dtype=torch.float32)
    out = torch.einsum("bsht,btc->bshc", probs, c_kv)
    return torch.einsum("bshc,hdc->bshd", out, w[:, -DV:]).reshape(B, S, H * DV)


def hf_eager_left_padded(q_nope, q_pe, c_kv, k_pe, w_kv_b, mask):
    """hf_eager under transformers' eager mask built in the graph (5.17): where(k <= q &
    key padding, 0, finfo.min), key 0 padded, so query row 0 sees no unmasked key:
    causal + the key vector + empty_row_fill."""
    i = torch.arange(S)
    keep = (mask[0, 0, -1] == 0) & (i >= 1)
    cond = (i[None, :] <= i[:, None])[None, None] & keep[None, None, None, :]
    return hf_eager(q_nope, q_pe, c_kv, k_pe, w_kv_b, torch.where(cond, 0.0, torch.finfo(torch.float32).min))


class TestAttentionGolden(expecttest.TestCase):
    def setUp(self):
        super().setUp()
        torch._dynamo.reset()

    def tearDown(self):
        torch._dynamo.reset()
        super().tearDown()

    def final_graph(self, fn) -> str:
        inputs, reports = _inputs(), []
        with torch.no_grad():
            out = torch.compile(fn, backend="mla", dynamic=False, options={"report": reports.append})(*inputs)
            torch.testing.assert_close(out, fn(*inputs), rtol=1e-5, atol=1e-5)
        self.assertEqual(len(reports), 1)
        self.assertEqual(reports[0].counts(), {"attention.mla": 1})
        return reports[0].final_graph

    def test_hf_eager(self):
        self.assertExpectedInline(self.final_graph(hf_eager), """\
%0 : f32[1, 4, 2, 4] = input
%1 : f32[1, 4, 2, 2] = input
%2 : f32[16, 6] = input
%3 : f32[1, 4, 6] = input
%4 : f32[1, 4, 2] = input
%5 : f32[1, 1, 4, 4] = input
%6 : f32[1, 2, 4, 4] = aten.permute.default(%0, [0, 2, 1, 3])
%7 : f32[1, 2, 4, 2] = aten.permute.default(%1, [0, 2, 1, 3])
%8 : f32[2, 8, 6] = aten.view.default(%2, [2, 8, 6])
%9 : f32[2, 4, 6] = aten.slice.Tensor(%8, 1, 0, 4)
%10 : f32[2, 4, 6] = aten.slice.Tensor(%8, 1, 4, 8)
%11 : f32[1, 2, 4, 4] = mla.prefill_attention.default(%6, %7, %3, %4, %9, %10, 0.408248, False, 'decompressed', 'auto', %5, False)
%12 : f32[2, 4, 4] = aten.reshape.default(%11, [2, 4, 4])
%13 : f32[1, 2, 4, 4] = aten.view.default(%12, [1, 2, 4, 4])
%14 : f32[1, 4, 2, 4] = aten.permute.default(%13, [0, 2, 1, 3])
%15 : f32[1, 4, 2, 4] = aten.clone.default(%14, memory_format=torch.contiguous_format)
%16 : f32[1, 4, 8] = aten.view.default(%15, [1, 4, 8])
return (%16)
""")

    def test_hf_eager_left_padded(self):
        self.assertExpectedInline(self.final_graph(hf_eager_left_padded), """\
%0 : f32[1, 1, 4, 4] = input
%1 : f32[1, 4, 2, 4] = input
%2 : f32[1, 4, 2, 2] = input
%3 : f32[16, 6] = input
%4 : f32[1, 4, 6] = input
%5 : f32[1, 4, 2] = input
%6 : i64[4] = prims.iota.default(4, start=0, step=1, dtype=i64, device=cpu, requires_grad=False)
%7 : f32[1, 4, 4] = aten.select.int(%0, 0, 0)
%8 : f32[4, 4] = aten.select.int(%7, 0, 0)
%9 : f32[4] = aten.select.int(%8, 0, -1)
%10 : b8[4] = aten.eq.Scalar(%9, 0)
%11 : b8[4] = aten.ge.Scalar(%6, 1)
%12 : b8[4] = aten.bitwise_and.Tensor(%10, %11)
%13 : b8[1, 4] = aten.unsqueeze.default(%12, 0)
%14 : b8[1, 1, 4] = aten.unsqueeze.default(%13, 1)
%15 : b8[1, 1, 1, 4] = aten.unsqueeze.default(%14, 2)
%16 : f32[] = aten.scalar_tensor.default(-3.40282e+38, dtype=f32, layout=torch.strided, device=cpu)
%17 : f32[] = aten.scalar_tensor.default(0, dtype=f32, layout=torch.strided, device=cpu)
%18 : f32[1, 2, 4, 4] = aten.permute.default(%1, [0, 2, 1, 3])
%19 : f32[1, 2, 4, 2] = aten.permute.default(%2, [0, 2, 1, 3])
%20 : f32[1, 1, 1, 4] = aten.where.self(%15, %17, %16)
%21 : f32[2, 8, 6] = aten.view.default(%3, [2, 8, 6])
%22 : f32[2, 4, 6] = aten.slice.Tensor(%21, 1, 0, 4)
%23 : f32[2, 4, 6] = aten.slice.Tensor(%21, 1, 4, 8)
%24 : f32[1, 2, 4, 4] = mla.prefill_attention.default(%18, %19, %4, %5, %22, %23, 0.408248, True, 'decompressed', 'auto', %20, False, None, -3.40282e+38)
%25 : f32[2, 4, 4] = aten.reshape.default(%24, [2, 4, 4])
%26 : f32[1, 2, 4, 4] = aten.view.default(%25, [1, 2, 4, 4])
%27 : f32[1, 4, 2, 4] = aten.permute.default(%26, [0, 2, 1, 3])
%28 : f32[1, 4, 2, 4] = aten.clone.default(%27, memory_format=torch.contiguous_format)
%29 : f32[1, 4, 8] = aten.view.default(%28, [1, 4, 8])
return (%29)
""")

    def test_sdpa_padded_v(self):
        self.assertExpectedInline(self.final_graph(sdpa_padded_v), """\
%0 : f32[1, 4, 2, 4] = input
%1 : f32[1, 4, 2, 2] = input
%2 : f32[16, 6] = input
%3 : f32[1, 4, 6] = input
%4 : f32[1, 4, 2] = input
%5 : f32[1, 2, 4, 4] = aten.permute.default(%0, [0, 2, 1, 3])
%6 : f32[1, 2, 4, 2] = aten.permute.default(%1, [0, 2, 1, 3])
%7 : f32[2, 8, 6] = aten.view.default(%2, [2, 8, 6])
%8 : f32[2, 4, 6] = aten.slice.Tensor(%7, 1, 0, 4)
%9 : f32[2, 4, 6] = aten.slice.Tensor(%7, 1, 4, 8)
%10 : f32[1, 2, 4, 4] = mla.prefill_attention.default(%5, %6, %3, %4, %8, %9, 0.408248, True, 'decompressed', 'auto', None, True)
%11 : f32[1, 4, 2, 4] = aten.permute.default(%10, [0, 2, 1, 3])
%12 : f32[1, 4, 2, 4] = aten.clone.default(%11, memory_format=torch.contiguous_format)
%13 : f32[1, 4, 8] = aten.view.default(%12, [1, 4, 8])
return (%13)
""")

    def test_bshd_einsum(self):
        self.assertExpectedInline(self.final_graph(bshd_einsum), """\
%0 : f32[1, 4, 2, 4] = input
%1 : f32[1, 4, 2, 2] = input
%2 : f32[16, 6] = input
%3 : f32[1, 4, 6] = input
%4 : f32[1, 4, 2] = input
%5 : f32[1, 1, 4, 4] = input
%6 : f32[1, 2, 4, 4] = aten.permute.default(%0, [0, 2, 1, 3])
%7 : f32[1, 2, 4, 2] = aten.permute.default(%1, [0, 2, 1, 3])
%8 : f32[2, 8, 6] = aten.view.default(%2, [2, 8, 6])
%9 : f32[2, 4, 6] = aten.slice.Tensor(%8, 1, 0, 4)
%10 : f32[2, 4, 6] = aten.slice.Tensor(%8, 1, 4, 8)
%11 : f32[1, 2, 4, 4] = mla.prefill_attention.default(%6, %7, %3, %4, %9, %10, 0.408248, False, 'decompressed', 'auto', %5, False)
%12 : f32[2, 4, 4] = aten.reshape.default(%11, [2, 4, 4])
%13 : f32[2, 4, 1, 1, 4] = aten.view.default(%12, [2, 4, 1, 1, 4])
%14 : f32[1, 4, 2, 4, 1] = aten.permute.default(%13, [3, 1, 0, 4, 2])
%15 : f32[1, 4, 2, 4] = aten.view.default(%14, [1, 4, 2, 4])
%16 : f32[1, 4, 2, 4] = aten.clone.default(%15, memory_format=torch.contiguous_format)
%17 : f32[1, 4, 8] = aten.view.default(%16, [1, 4, 8])
return (%17)
""")

    def test_absorbed_latent(self):
        self.assertExpectedInline(self.final_graph(absorbed_latent), """\
%0 : f32[16, 6] = input
%1 : f32[1, 4, 2, 4] = input
%2 : f32[1, 1, 4, 4] = input
%3 : f32[1, 4, 6] = input
%4 : f32[1, 4, 2, 2] = input
%5 : f32[1, 4, 2] = input
%6 : f32[2, 8, 6] = aten.view.default(%0, [2, 8, 6])
%7 : f32[2, 4, 6] = aten.slice.Tensor(%6, 1, 0, 4)
%8 : f32[1, 4, 2, 4, 1] = aten.unsqueeze.default(%1, 4)
%9 : f32[1, 4, 2, 1, 4] = aten.permute.default(%8, [0, 1, 2, 4, 3])
%10 : f32[2, 4, 6, 1] = aten.unsqueeze.default(%7, 3)
%11 : f32[2, 4, 6, 1, 1] = aten.unsqueeze.default(%10, 4)
%12 : f32[1, 1, 2, 6, 4] = aten.permute.default(%11, [3, 4, 0, 2, 1])
%13 : f32[2, 4, 4, 1, 1] = aten.permute.default(%9, [2, 1, 4, 0, 3])
%14 : f32[2, 4, 4] = aten.view.default(%13, [2, 4, 4])
%15 : f32[2, 4, 1, 6, 1] = aten.permute.default(%12, [2, 4, 0, 3, 1])
%16 : f32[2, 4, 6] = aten.view.default(%15, [2, 4, 6])
%17 : f32[2, 4, 6] = aten.bmm.default(%14, %16)
%18 : f32[1, 4, 4] = aten.select.int(%2, 0, 0)
%19 : f32[4, 4] = aten.select.int(%18, 0, 0)
%20 : f32[4, 1, 4] = aten.unsqueeze.default(%19, 1)
%21 : f32[4, 2, 6] = aten.permute.default(%17, [1, 0, 2])
%22 : f32[1, 4, 2, 6] = aten.unsqueeze.default(%21, 0)
%23 : f32[1, 4, 4] = aten.permute.default(%20, [1, 0, 2])
%24 : f32[1, 4, 1, 4] = aten.unsqueeze.default(%23, 2)
%25 : f32[1, 4, 2, 6] = mla.latent_attention.default(%22, %4, %3, %5, 0.408248, False, 'auto', %24, False)
%26 : f32[1, 8, 6] = aten.reshape.default(%25, [1, 8, 6])
%27 : f32[4, 2, 1, 1, 6] = aten.view.default(%26, [4, 2, 1, 1, 6])
%28 : f32[1, 4, 2, 6, 1] = aten.permute.default(%27, [3, 0, 1, 4, 2])
%29 : f32[1, 4, 2, 6] = aten.view.default(%28, [1, 4, 2, 6])
%30 : f32[2, 4, 6] = aten.slice.Tensor(%6, 1, -4, 9223372036854775807)
%31 : f32[1, 4, 2, 6, 1] = aten.unsqueeze.default(%29, 4)
%32 : f32[1, 4, 2, 1, 6] = aten.permute.default(%31, [0, 1, 2, 4, 3])
%33 : f32[2, 4, 6, 1] = aten.unsqueeze.default(%30, 3)
%34 : f32[2, 4, 6, 1, 1] = aten.unsqueeze.default(%33, 4)
%35 : f32[1, 1, 2, 4, 6] = aten.permute.default(%34, [3, 4, 0, 1, 2])
%36 : f32[2, 4, 6, 1, 1] = aten.permute.default(%32, [2, 1, 4, 0, 3])
%37 : f32[2, 4, 6] = aten.view.default(%36, [2, 4, 6])
%38 : f32[2, 6, 1, 4, 1] = aten.permute.default(%35, [2, 4, 0, 3, 1])
%39 : f32[2, 6, 4] = aten.view.default(%38, [2, 6, 4])
%40 : f32[2, 4, 4] = aten.bmm.default(%37, %39)
%41 : f32[2, 4, 1, 1, 4] = aten.view.default(%40, [2, 4, 1, 1, 4])
%42 : f32[1, 4, 2, 4, 1] = aten.permute.default(%41, [3, 1, 0, 4, 2])
%43 : f32[1, 4, 2, 4] = aten.view.default(%42, [1, 4, 2, 4])
%44 : f32[1, 4, 2, 4] = aten.clone.default(%43, memory_format=torch.contiguous_format)
%45 : f32[1, 4, 8] = aten.view.default(%44, [1, 4, 8])
return (%45)
""")
