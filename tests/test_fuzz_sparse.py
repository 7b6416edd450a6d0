"""Property-based check of `mla.sparse_attention` over index patterns: hypothesis
draws sizes, the top-k indices (random, duplicates, every key, top-k >= length, one
key), the base mask (none, causal with a cache offset, ragged lengths, rows with no
visible key), safe softmax, attention sinks and dtype. Each case: the Triton kernel (interpreted on
CPU) equals the reference (and, where no row repeats an index, its `distinct=True` path too), and the reference equals eager DSA code (scatter into an
all-True mask, masked_fill with -inf, dense attention); with every key chosen it
equals the dense op's reference.

MLA_FUZZ_SPARSE_EXAMPLES=n runs n examples (default 15, the CI run; derandomized).
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings, strategies as st  # noqa: E402

from kernel_device import kernel_test_device  # noqa: E402
from mla_compile.custom_ops import prefill_attention_reference, sparse_attention_reference  # noqa: E402
from mla_compile.custom_ops.triton_sparse import _sparse_split  # noqa: E402
from test_sparse_op import eager_dsa, inputs  # noqa: E402

EXAMPLES = int(os.environ.get("MLA_FUZZ_SPARSE_EXAMPLES", "15"))
DEVICE = kernel_test_device(_sparse_split)
PATTERNS = ("random", "duplicates", "every_key", "one_key", "descending")
BASES = ("none", "causal_offset", "ragged", "empty_rows")


def draw_indices(pattern, B, Sq, Sk, K, g):
    if pattern == "duplicates":  # a few keys named many times
        return torch.randint(0, min(3, Sk), (B, Sq, K), generator=g)
    if pattern == "every_key":  # top-k >= length: every key, then repeats
        return (torch.arange(K) % Sk).expand(B, Sq, K).contiguous()
    if pattern == "one_key":
        return torch.randint(0, Sk, (B, Sq, 1), generator=g)
    if pattern == "descending":
        return torch.randperm(Sk, generator=g)[:K].sort(descending=True).values.expand(B, Sq, -1).contiguous()
    return torch.randint(0, Sk, (B, Sq, K), generator=g)


def draw_base(kind, B, Sq, Sk, g):
    if kind == "none":
        return None
    keep = torch.ones(B, 1, Sq, Sk, dtype=torch.bool)
    if kind == "causal_offset":  # query i at position Sk - Sq + i (a decode chunk over a cache)
        keep = torch.ones(Sq, Sk, dtype=torch.bool).tril(Sk - Sq)[None, None].expand(B, 1, Sq, Sk)
    elif kind == "ragged":  # each sequence its own length
        lens = torch.randint(1, Sk + 1, (B,), generator=g)
        keep = (torch.arange(Sk) < lens[:, None])[:, None, None, :].expand(B, 1, Sq, Sk)
    elif kind == "empty_rows":
        keep = torch.rand(B, 1, Sq, 1, generator=g).gt(0.5).expand(B, 1, Sq, Sk)
    return torch.where(keep, 0.0, float("-inf"))


@pytest.mark.skipif(DEVICE is None, reason="no Triton device (GPU or TRITON_INTERPRET=1)")
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(B=st.integers(1, 2), H=st.integers(1, 5), Sq=st.integers(1, 4), Sk=st.integers(1, 24),
       K=st.integers(1, 40), pattern=st.sampled_from(PATTERNS), base=st.sampled_from(BASES),
       zero=st.booleans(), bf16=st.booleans(), with_sinks=st.booleans(), seed=st.integers(0, 2**16))
def test_sparse_index_patterns(B, H, Sq, Sk, K, pattern, base, zero, bf16, with_sinks, seed):
    event(f"{pattern}/{base}" + "/sinks" * with_sinks)
    dtype = torch.bfloat16 if bf16 else torch.float32
    g = torch.Generator().manual_seed(seed)
    q_nope, q_pe, c, kp, wk, wv, _ = inputs(B, H, Sq, Sk, 1, dtype, seed)
    idx = draw_indices(pattern, B, Sq, Sk, K, g)
    mask = draw_base(base, B, Sq, Sk, g)
    mask_t = mask.to(dtype) if mask is not None else None
    sinks = (torch.randn(H, generator=g) * 2).to(dtype) if with_sinks else None  # HY-V4's logit per head
    want = sparse_attention_reference(q_nope, q_pe, c, kp, wk, wv, idx, 0.35, mask_t, zero, sinks)
    eager = eager_dsa(q_nope, q_pe, c, kp, wk, wv, idx, 0.35, mask_t, float("-inf"), sinks)
    if zero:  # SDPA's safe softmax: a row with no visible key gives 0 (with sinks, already 0)
        eager = eager.nan_to_num(0.0)
    tol = 2e-2 if bf16 else 2e-5
    torch.testing.assert_close(want, eager, rtol=tol, atol=tol, equal_nan=True)
    if pattern == "every_key" and K >= Sk:
        dense = prefill_attention_reference(q_nope, q_pe, c, kp, wk, wv, 0.35, False, "decompressed", mask_t, zero,
                                            sinks)
        torch.testing.assert_close(want, dense, rtol=tol, atol=tol, equal_nan=True)
    to = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    got = torch.ops.mla.sparse_attention(*(to(t) for t in (q_nope, q_pe, c, kp, wk, wv, idx)), 0.35, "triton",
                                         to(mask_t), zero, False, to(sinks))
    torch.testing.assert_close(got.cpu(), want, rtol=tol, atol=tol, equal_nan=True)
    ordered = idx.sort(-1).values
    if not bool((ordered[..., 1:] == ordered[..., :-1]).any()):  # no repeats: the no-sort path too
        got = torch.ops.mla.sparse_attention(*(to(t) for t in (q_nope, q_pe, c, kp, wk, wv, idx)), 0.35, "triton",
                                             to(mask_t), zero, True, to(sinks))
        torch.testing.assert_close(got.cpu(), want, rtol=tol, atol=tol, equal_nan=True)
