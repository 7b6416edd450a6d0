"""`torch.ops.mla.sparse_attention`: MLA attention over the keys a DSA indexer chose
(DeepSeek-V3.2, GLM-5, ...): each query row attends only the keys its top-k indices
name. Where gathering is faster (`lowering.sparse_form`: on the GPU, one query over
many keys) it is computed over the latent (the absorbed form) from the chosen rows, so
a query reads K latent rows, not all Sk; elsewhere (prefill, short contexts) as dense
attention under the selection mask, the same function.

    keys(b, q) = set(indices[b, q, :])           duplicates count once
    out = softmax_{k in keys}((q_nope k_nope_k + q_pe k_pe_k) * scale + mask) @ v

Semantics: `reference.sparse_attention_reference` (eager's `scatter` of the indices
into a full mask, then dense attention with every unchosen key at -inf). `mask` is
the model's base (causal / padding) mask, additive, broadcasting to [B, H, Sq, Sk]:
a chosen key the base hides stays hidden. A row with no visible chosen key gives NaN
(eager softmax) or 0 (`zero_empty_rows`, SDPA's safe softmax). Indices must lie in
[0, Sk), as eager's scatter demands (it raises otherwise; so does this op).

`sinks` (optional [H], HY-V4): attention sinks, as the dense ops take them: a logit per
head that joins every row's softmax denominator and has no value; a row with no
visible chosen key then gives 0 (the sink alone), with or without `zero_empty_rows`.

`distinct=True` is the caller's statement that no row repeats an index (the pass
passes it where the indices are `topk`'s over the key axis, distinct by construction):
the gather kernel then skips sorting them (the sort cost ~28 us of a ~45 us call at
batch 1 on an H200). The eager op checks the statement; the function is the same.
"""
from __future__ import annotations

import torch

from ..lowering.kernel_choice import KERNEL_CHOICES, select_backend
from .backend import KERNEL_DTYPES
from .checks import (INDEX_DTYPES, check_distinct, check_like, check_mask, check_rank, check_sinks, check_sizes,
                     first_bad, op_error, value_checks_off)
from .prefill_attention import new_output

_OP = "sparse_attention"
_LAYOUTS = (("q_nope", 4, "[B, H, Sq, Dn]"), ("q_pe", 4, "[B, H, Sq, Dr]"),
            ("c_kv", 3, "[B, Sk, R]"), ("k_pe", 3, "[B, Sk, Dr]"),
            ("w_uk", 3, "[H, Dn, R]"), ("w_uv", 3, "[H, Dv, R]"))


def validate_sparse_args(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, indices, kernel, mask=None, sinks=None) -> None:
    """Shapes, dtypes and devices (fake and real); every message names the argument."""
    if kernel not in KERNEL_CHOICES:
        raise op_error(_OP, f"kernel must be one of {KERNEL_CHOICES}, got {kernel!r}")
    ts = (q_nope, q_pe, c_kv, k_pe, w_uk, w_uv)
    for t, (name, rank, layout) in zip(ts, _LAYOUTS):
        check_rank(_OP, name, t, rank, layout)
    if q_nope.dtype not in KERNEL_DTYPES:
        raise op_error(_OP, f"q_nope dtype must be one of {KERNEL_DTYPES}, got {q_nope.dtype}")
    for t, (name, _, _) in zip(ts[1:], _LAYOUTS[1:]):
        check_like(_OP, name, t, q_nope, "q_nope")
    B, H, Sq, Dn = q_nope.shape
    Sk, R = c_kv.shape[1], c_kv.shape[2]
    Dr, Dv = q_pe.shape[3], w_uv.shape[1]
    want = ((B, H, Sq, Dr), (B, Sk, R), (B, Sk, Dr), (H, Dn, R), (H, Dv, R))
    for t, w, (name, _, layout) in zip(ts[1:], want, _LAYOUTS[1:]):
        check_sizes(_OP, name, t, w, layout)
    check_rank(_OP, "indices", indices, 3, "[B, Sq, K]")
    if indices.dtype not in INDEX_DTYPES:
        raise op_error(_OP, f"indices dtype must be one of {INDEX_DTYPES}, got {indices.dtype}")
    if indices.device != q_nope.device:
        raise op_error(_OP, f"indices is on {indices.device} but q_nope is on {q_nope.device}")
    check_sizes(_OP, "indices", indices, (B, Sq, None), "[B, Sq, K]")
    check_mask(_OP, mask, q_nope.device, (B, H, Sq, Sk))
    check_sinks(_OP, sinks, q_nope.device, H)


def check_index_values(indices: torch.Tensor, sk: int) -> None:
    """Every index in [0, Sk): eager's scatter raises on any other (one host sync)."""
    if indices.numel() == 0 or value_checks_off(indices.device):
        return
    bad = (indices < 0) | (indices >= sk)
    if bool(bad.any()):
        where, value = first_bad(indices, bad)
        raise op_error(_OP, f"indices{where} = {value} is outside [0, Sk = {sk})")


def compute_sparse_attention(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, indices, scale, impl="auto",
                             mask=None, zero_empty_rows=False, distinct=False, sinks=None) -> torch.Tensor:
    """The op's computation without its checks (traceable: see compute_prefill_attention)."""
    out = new_output(q_nope, w_uv)
    select_backend(q_nope.device, impl).sparse_attention(
        q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, indices, scale, mask, zero_empty_rows, out, distinct=distinct,
        sinks=sinks)
    return out


@torch.library.custom_op("mla::sparse_attention", mutates_args=())
def sparse_attention(
    q_nope: torch.Tensor,
    q_pe: torch.Tensor,
    c_kv: torch.Tensor,
    k_pe: torch.Tensor,
    w_uk: torch.Tensor,
    w_uv: torch.Tensor,
    indices: torch.Tensor,
    scale: float,
    impl: str = "auto",
    mask: torch.Tensor | None = None,
    zero_empty_rows: bool = False,
    distinct: bool = False,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """MLA attention of q over the keys `indices` chooses (see the module docstring),
    with optional attention sinks `sinks` [H]."""
    validate_sparse_args(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, indices, impl, mask, sinks)
    check_index_values(indices, c_kv.shape[1])
    if distinct:
        check_distinct(_OP, indices)
    return compute_sparse_attention(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, indices, scale, impl, mask,
                                    zero_empty_rows, distinct, sinks)


@sparse_attention.register_fake
def _sparse_attention_fake(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, indices, scale, impl="auto", mask=None,
                           zero_empty_rows=False, distinct=False, sinks=None):
    validate_sparse_args(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, indices, impl, mask, sinks)
    return new_output(q_nope, w_uv)
