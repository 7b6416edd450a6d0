"""CUDA graphs (mode="reduce-overhead"): the fused ops are capturable and replays
give eager's numbers; the report proves the rewrite happened. Needs a CUDA device; CI has none, the GPU machine runs it."""
import os

import pytest
import torch
from torch._dynamo.utils import counters

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="needs a CUDA device and compiled (not interpreted) Triton: TRITON_INTERPRET=0")


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_qk(q, k, cos, sin):
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def test_rope_under_cuda_graphs():
    counters.clear()
    reports = []  # torch.compile refuses mode= with options=: the mode goes into the options
    compiled = torch.compile(rope_qk, backend="mla", options={"mode": "reduce-overhead", "report": reports.append})
    for step in range(4):  # warm-up, record, then replays with fresh data
        args = (torch.randn(8, 16, 64, device="cuda", dtype=torch.bfloat16),
                torch.randn(8, 1, 64, device="cuda", dtype=torch.bfloat16),
                torch.randn(8, 1, 64, device="cuda", dtype=torch.bfloat16),
                torch.randn(8, 1, 64, device="cuda", dtype=torch.bfloat16))
        got = [t.clone() for t in compiled(*args)]
        for g, e in zip(got, rope_qk(*args)):
            torch.testing.assert_close(g, e, rtol=2e-2, atol=2e-2)
    assert counters["inductor"]["cudagraph_skips"] == 0
    # the replays ran the fused op: both RoPEs rewritten, merged into one launch
    assert len(reports) == 1, [r.format() for r in reports]
    # ... and Inductor launches its kernel (passes/inline_launches.py)
    assert reports[0].counts() == {"rope.neox": 2, "rope.one_launch": 1, "launch.inductor": 1}, \
        reports[0].format()
    assert reports[0].near_misses == [], reports[0].format()


def test_prefill_op_under_cuda_graph_capture():
    torch.manual_seed(0)
    B, H, S, Dn, Dr, Dv, R = 2, 4, 64, 32, 16, 32, 64
    args = [torch.randn(B, H, S, Dn), torch.randn(B, H, S, Dr), torch.randn(B, S, R),
            torch.randn(B, S, Dr), torch.randn(H, Dn, R) / R ** 0.5, torch.randn(H, Dv, R) / R ** 0.5]
    args = [a.to("cuda", torch.bfloat16) for a in args]
    op = torch.ops.mla.prefill_attention
    expected = op(*args, 0.2, True, "decompressed", "reference")
    op(*args, 0.2, True, "decompressed", "triton")  # compile the kernel outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = op(*args, 0.2, True, "decompressed", "triton")
    graph.replay()
    torch.testing.assert_close(out.float(), expected.float(), rtol=2e-2, atol=2e-2)
