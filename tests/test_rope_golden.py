"""Golden graphs: the canonical text of the graph after the mla passes, one per
RoPE code shape (static shapes, so the text is deterministic).

Regenerate after an intended change with
    EXPECTTEST_ACCEPT=1 python -m pytest tests/test_rope_golden.py
and review the diff.
"""
from __future__ import annotations

import os
import sys

import expecttest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from rope_models import (  # noqa: E402
    apply_even_odd, apply_neox, apply_rotary_emb_qk, apply_rotary_pos_emb_interleave,
    rotate_half_chunk,
)


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------ the shapes, as functions

def neox_slice(q, k, cos_cached, sin_cached):
    """[B,H,S,D], cos/sin = cache[:seq_len] broadcast [1,1,S,D], rotate_half by slicing."""
    S = q.shape[2]
    cos, sin = cos_cached[:S][None, None], sin_cached[:S][None, None]
    return apply_neox(q, cos, sin), apply_neox(k, cos, sin)


def neox_chunk(q, k, cos_cached, sin_cached, position_ids):
    """[B,H,S,D], cos/sin gathered by position ids [B,1,S,D], rotate_half by chunk."""
    cos, sin = cos_cached[position_ids].unsqueeze(1), sin_cached[position_ids].unsqueeze(1)
    return apply_neox(q, cos, sin, rotate_half_chunk), apply_neox(k, cos, sin, rotate_half_chunk)


def even_odd(q, k, cos_half, sin_half):
    """[B,S,H,D], x[..., 0::2] / x[..., 1::2], half-width cos/sin [1,S,1,D/2]."""
    cos, sin = cos_half[None, :, None, :], sin_half[None, :, None, :]
    return apply_even_odd(q, cos, sin), apply_even_odd(k, cos, sin)


def deinterleave(q, k, cos, sin):
    """transformers DeepSeek-V2/V3 apply_rotary_pos_emb_interleave, cos/sin [B,S,D]."""
    return apply_rotary_pos_emb_interleave(q, k, cos, sin)


def complex_qk(xq, xk, freqs_cis):
    """view_as_complex * freqs_cis (torch.polar), [B,S,H,D], freqs viewed [1,S,1,D/2]."""
    return apply_rotary_emb_qk(xq, xk, freqs_cis)


def token_mla(q, kv, cos_cache, sin_cache, positions):
    """[T,H,D]: q_pe = q[..., nope:], k_pe from the latent split with one head,
    cos/sin = cache[positions].unsqueeze(1) [T,1,D]; q_pe and k_pe in one launch."""
    q_pe = q[..., 16:]
    kv_c, k_pe = kv.split([32, 8], dim=-1)
    k_pe = k_pe.unsqueeze(1)
    cos, sin = cos_cache[positions].unsqueeze(1), sin_cache[positions].unsqueeze(1)
    q_pe = apply_neox(q_pe, cos, sin)
    k_pe = apply_neox(k_pe, cos, sin)
    return torch.cat((q[..., :16], q_pe), dim=-1), kv_c, k_pe


def _freqs(S, half):
    angles = torch.outer(torch.arange(S, dtype=torch.float32), 1.0 / 10000 ** (torch.arange(half) / half))
    return torch.polar(torch.ones_like(angles), angles)


class TestRopeGolden(expecttest.TestCase):
    def setUp(self):
        super().setUp()
        torch._dynamo.reset()

    def tearDown(self):
        torch._dynamo.reset()
        super().tearDown()

    def final_graph(self, fn, *inputs) -> str:
        reports = []
        with torch.no_grad():
            compiled = torch.compile(fn, backend="mla", dynamic=False, options={"report": reports.append})
            out = compiled(*inputs)
            ref = fn(*inputs)
        for o, r in zip(out, ref):
            torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)
        self.assertEqual(len(reports), 1)
        return reports[0].final_graph

    def test_neox_slice(self):
        graph = self.final_graph(
            neox_slice, _randn(1, 2, 4, 8, seed=0), _randn(1, 1, 4, 8, seed=1),
            _randn(16, 8, seed=2), _randn(16, 8, seed=3))
        self.assertExpectedInline(graph, """\
%0 : f32[16, 8] = input
%1 : f32[16, 8] = input
%2 : f32[1, 2, 4, 8] = input
%3 : f32[1, 1, 4, 8] = input
%4 : f32[4, 8] = aten.slice.Tensor(%0, 0, 0, 4)
%5 : f32[1, 4, 8] = aten.unsqueeze.default(%4, 0)
%6 : f32[1, 1, 4, 8] = aten.unsqueeze.default(%5, 1)
%7 : f32[4, 8] = aten.slice.Tensor(%1, 0, 0, 4)
%8 : f32[1, 4, 8] = aten.unsqueeze.default(%7, 0)
%9 : f32[1, 1, 4, 8] = aten.unsqueeze.default(%8, 1)
%10 : (f32[1, 2, 4, 8], f32[1, 1, 4, 8]) = mla.rope.default([%2, %3], %6, %9, False, False, 'auto')
%11 : f32[1, 2, 4, 8] = getitem(%10, 0)
%12 : f32[1, 1, 4, 8] = getitem(%10, 1)
return (%11, %12)
""")

    def test_neox_chunk(self):
        graph = self.final_graph(
            neox_chunk, _randn(1, 2, 4, 8, seed=0), _randn(1, 1, 4, 8, seed=1),
            _randn(16, 8, seed=2), _randn(16, 8, seed=3), torch.tensor([[3, 4, 5, 6]]))
        self.assertExpectedInline(graph, """\
%0 : f32[16, 8] = input
%1 : i64[1, 4] = input
%2 : f32[16, 8] = input
%3 : f32[1, 2, 4, 8] = input
%4 : f32[1, 1, 4, 8] = input
%5 : f32[1, 4, 8] = aten.index.Tensor(%0, [%1])
%6 : f32[1, 1, 4, 8] = aten.unsqueeze.default(%5, 1)
%7 : f32[1, 4, 8] = aten.index.Tensor(%2, [%1])
%8 : f32[1, 1, 4, 8] = aten.unsqueeze.default(%7, 1)
%9 : (f32[1, 2, 4, 8], f32[1, 1, 4, 8]) = mla.rope.default([%3, %4], %6, %8, False, False, 'auto')
%10 : f32[1, 2, 4, 8] = getitem(%9, 0)
%11 : f32[1, 1, 4, 8] = getitem(%9, 1)
return (%10, %11)
""")

    def test_even_odd(self):
        graph = self.final_graph(
            even_odd, _randn(1, 4, 2, 8, seed=0), _randn(1, 4, 1, 8, seed=1),
            _randn(4, 4, seed=2), _randn(4, 4, seed=3))
        self.assertExpectedInline(graph, """\
%0 : f32[4, 4] = input
%1 : f32[4, 4] = input
%2 : f32[1, 4, 2, 8] = input
%3 : f32[1, 4, 1, 8] = input
%4 : f32[1, 4, 4] = aten.unsqueeze.default(%0, 0)
%5 : f32[1, 4, 1, 4] = aten.unsqueeze.default(%4, 2)
%6 : f32[1, 4, 4] = aten.unsqueeze.default(%1, 0)
%7 : f32[1, 4, 1, 4] = aten.unsqueeze.default(%6, 2)
%8 : (f32[1, 4, 2, 8], f32[1, 4, 1, 8]) = mla.rope.default([%2, %3], %5, %7, True, False, 'auto')
%9 : f32[1, 4, 2, 8] = getitem(%8, 0)
%10 : f32[1, 4, 1, 8] = getitem(%8, 1)
return (%9, %10)
""")

    def test_deinterleave(self):
        graph = self.final_graph(
            deinterleave, _randn(1, 2, 4, 8, seed=0), _randn(1, 1, 4, 8, seed=1),
            _randn(1, 4, 8, seed=2), _randn(1, 4, 8, seed=3))
        self.assertExpectedInline(graph, """\
%0 : f32[1, 4, 8] = input
%1 : f32[1, 4, 8] = input
%2 : f32[1, 2, 4, 8] = input
%3 : f32[1, 1, 4, 8] = input
%4 : f32[1, 1, 4, 8] = aten.unsqueeze.default(%0, 1)
%5 : f32[1, 1, 4, 8] = aten.unsqueeze.default(%1, 1)
%6 : (f32[1, 2, 4, 8], f32[1, 1, 4, 8]) = mla.rope.default([%2, %3], %4, %5, True, False, 'auto')
%7 : f32[1, 2, 4, 8] = getitem(%6, 0)
%8 : f32[1, 1, 4, 8] = getitem(%6, 1)
return (%7, %8)
""")

    def test_complex(self):
        graph = self.final_graph(
            complex_qk, _randn(1, 4, 2, 8, seed=0), _randn(1, 4, 1, 8, seed=1), _freqs(4, 4))
        self.assertExpectedInline(graph, """\
%0 : c64[4, 4] = input
%1 : f32[1, 4, 2, 8] = input
%2 : f32[1, 4, 1, 8] = input
%3 : c64[1, 4, 1, 4] = aten.view.default(%0, [1, 4, 1, 4])
%4 : f32[1, 4, 1, 4, 2] = aten.view_as_real.default(%3)
%5 : f32[1, 4, 1, 4] = aten.select.int(%4, -1, 0)
%6 : f32[1, 4, 1, 4] = aten.select.int(%4, -1, 1)
%7 : (f32[1, 4, 2, 8], f32[1, 4, 1, 8]) = mla.rope.default([%1, %2], %5, %6, True, True, 'auto')
%8 : f32[1, 4, 2, 8] = getitem(%7, 0)
%9 : f32[1, 4, 1, 8] = getitem(%7, 1)
return (%8, %9)
""")

    def test_token_thd_one_launch(self):
        graph = self.final_graph(
            token_mla, _randn(4, 2, 24, seed=0), _randn(4, 40, seed=1),
            _randn(16, 8, seed=2), _randn(16, 8, seed=3), torch.tensor([5, 6, 7, 8]))
        self.assertExpectedInline(graph, """\
%0 : f32[4, 2, 24] = input
%1 : f32[4, 40] = input
%2 : f32[16, 8] = input
%3 : i64[4] = input
%4 : f32[16, 8] = input
%5 : f32[4, 2, 8] = aten.slice.Tensor(%0, 2, 16, 9223372036854775807)
%6 : (f32[4, 32], f32[4, 8]) = aten.split_with_sizes.default(%1, [32, 8], -1)
%7 : f32[4, 32] = getitem(%6, 0)
%8 : f32[4, 8] = getitem(%6, 1)
%9 : f32[4, 1, 8] = aten.unsqueeze.default(%8, 1)
%10 : f32[4, 8] = aten.index.Tensor(%2, [%3])
%11 : f32[4, 1, 8] = aten.unsqueeze.default(%10, 1)
%12 : f32[4, 8] = aten.index.Tensor(%4, [%3])
%13 : f32[4, 1, 8] = aten.unsqueeze.default(%12, 1)
%14 : (f32[4, 2, 8], f32[4, 1, 8]) = mla.rope.default([%5, %9], %11, %13, False, False, 'auto')
%15 : f32[4, 2, 8] = getitem(%14, 0)
%16 : f32[4, 1, 8] = getitem(%14, 1)
%17 : f32[4, 2, 16] = aten.slice.Tensor(%0, 2, 0, 16)
%18 : f32[4, 2, 24] = aten.cat.default([%17, %15], -1)
return (%18, %7, %16)
""")


if __name__ == "__main__":
    import unittest

    unittest.main()
