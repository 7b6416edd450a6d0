"""`torch.ops.mla.wide_decode_gluon` and `mla.prefill_gluon`: the Gluon programs inside a
compiled graph.

Inductor launches our Triton kernels itself (passes/inline_launches.py), but not a
Gluon kernel: its analysis of a user kernel (torch 2.11-2.14) compiles it as plain
Triton, which fails for Gluon, and then counts every input as written. So where the
traced wide launcher (triton_decode_wide.py) would run the Gluon program in a graph
that runs under CUDA graphs, it calls this op instead: one call for the whole wide
decode (Gluon split program and combine), no checks per call (the fused op's ran at
trace time). Under CUDA graphs the call costs nothing, for a program 1.3-1.45x faster
than the Triton one at 64-128 heads (benchmarks/RESULTS.md, issue 12). Without CUDA
graphs the Triton program is inlined instead: a custom op call costs ~200 us of host
time (torch 2.11, H200), more than the faster program saves in a host-bound step.

The op is functional (a new [B, H, Sq, R] output, copied into the launcher's `out`):
the launch tracing (torch.func.functionalize) cannot functionalize a custom op that
writes into an argument.

At run time the launcher chooses again on the real tensors: the Gluon program where its
data pointers are 16-byte aligned, else the Triton program (same numbers).

`mla.prefill_gluon` is the same for the prefill launcher (triton_prefill.py): the Gluon
prefill program (gluon_prefill.py, 1.2x the Triton kernel on an H200) where
`gluon_prefill.traced_route` says so, i.e. also without CUDA graphs for long prompts,
where its host time hides behind milliseconds of kernel.
"""
from __future__ import annotations

import torch


@torch.library.custom_op("mla::wide_decode_gluon", mutates_args=())
def wide_decode_gluon(
    q_lat: torch.Tensor,
    q_pe: torch.Tensor,
    c_kv: torch.Tensor | None,
    k_pe: torch.Tensor | None,
    mask: torch.Tensor | None,
    cache: torch.Tensor | None,
    block_table: torch.Tensor | None,
    seq_lens: torch.Tensor | None,
    sinks: torch.Tensor | None,
    scale: float,
    causal: bool,
    zero_empty_rows: bool,
    page: int,
    tt: int,
    vec: int,
    block_h: int,
) -> torch.Tensor:
    """`triton_decode_wide.mla_decode_attention_wide` on these arguments (`cache` given:
    the paged form, `(cache, block_table, seq_lens, page, (tt, vec))`; else c_kv, k_pe)."""
    from .triton_decode_wide import mla_decode_attention_wide

    paged = None if cache is None else (cache, block_table, seq_lens, page, (tt, vec))
    return mla_decode_attention_wide(q_lat, q_pe, c_kv, k_pe, scale, causal, mask=mask,
                                     zero_empty_rows=zero_empty_rows, paged=paged, block_h=block_h,
                                     sinks=sinks)


@wide_decode_gluon.register_fake
def _(q_lat, q_pe, c_kv, k_pe, mask, cache, block_table, seq_lens, sinks, scale, causal,
      zero_empty_rows, page, tt, vec, block_h) -> torch.Tensor:
    return torch.empty_like(q_lat, memory_format=torch.contiguous_format)


def call_wide_decode_gluon(q_lat, q_pe, c_kv, k_pe, mask, paged, sinks, out, scale, causal,
                           zero_empty_rows, block_h) -> torch.Tensor:
    """The traced launcher's call: the op on the launcher's own arguments, into `out`."""
    cache, table, lens, page, (tt, vec) = paged if paged is not None else (None, None, None, 0, (0, 0))
    return out.copy_(torch.ops.mla.wide_decode_gluon(
        q_lat, q_pe, c_kv, k_pe, mask, cache, table, lens, sinks, float(scale), bool(causal),
        bool(zero_empty_rows), int(page), int(tt), int(vec), int(block_h)))


@torch.library.custom_op("mla::prefill_gluon", mutates_args=())
def prefill_gluon(q_nope: torch.Tensor, q_pe: torch.Tensor, k_nope: torch.Tensor, k_pe: torch.Tensor,
                  v: torch.Tensor, scale: float, causal: bool) -> torch.Tensor:
    """`triton_prefill.mla_prefill_attention` (no mask, no sinks) on these arguments:
    the Gluon program where it applies to the real tensors, else the Triton kernel."""
    from .triton_prefill import mla_prefill_attention

    return mla_prefill_attention(q_nope, q_pe, k_nope, k_pe, v, scale, causal)


@prefill_gluon.register_fake
def _(q_nope, q_pe, k_nope, k_pe, v, scale, causal) -> torch.Tensor:
    B, H, Sq, _ = q_nope.shape
    return q_nope.new_empty(B, H, Sq, v.shape[-1])


__all__ = ["wide_decode_gluon", "call_wide_decode_gluon", "prefill_gluon"]
