"""Whether `mla.sparse_attention` gathers the chosen keys or runs dense attention
under the selection mask: decided here and nowhere else.

Both routes compute the op's one function (`reference.sparse_attention_reference`:
the indices scattered into a selection mask, dense attention under it), so the
choice changes speed only. Measured on an H200 (benchmarks/RESULTS.md, "DSA sparse
attention on the GPU"; bf16, DeepSeek dims, top-k 2048):
- the gather kernel costs ~50 us whatever the length at batch 1 when it must sort the
  indices to drop repeats (the sort alone ~28 us), where dense decode over 8192-32768
  keys at 16 heads takes 16-30 us; from ~2M (batch x heads x keys) on, gathering wins
  (1.4-5.2x); with indices known distinct (topk's: no sort) it takes 13 us at batch 1
  and wins from 8192 keys at 16 heads (1.25x; 2.3x at 32768; 7.8x at batch 32,
  128 heads);
- with more than one query per sequence (prefill) each query gathers its own rows
  with no tile reuse across queries: 3.4-5.5x slower than the dense kernel at 8192.
So: gather for decode (one query) over at least 4x top-k keys, when the indices are
distinct, else from 2M (batch x heads x keys) on; dense otherwise. Off the GPU (the
interpreter, tests) the gather route always runs: speed does not matter there and
the gather kernel stays covered.
"""
from __future__ import annotations

from ..compat import size_hint

GATHER_MIN_WORK = 1 << 21  # batch * heads * keys from which gathering beat dense (H200)


def gather_chosen_keys(batch, q_len, kv_len, heads, topk, on_gpu: bool, distinct: bool = False) -> bool:
    """True: the gather kernel; False: dense attention under the selection mask. Sizes
    may be symbolic: their hints decide (speed only, so no guard). `distinct`: the
    indices need no sort (the op's flag)."""
    if not on_gpu:
        return True
    b, q, k, h, t = (size_hint(v) for v in (batch, q_len, kv_len, heads, topk))
    return q == 1 and 4 * t <= k and (distinct or b * h * k >= GATHER_MIN_WORK)
