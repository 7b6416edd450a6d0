"""`torch.ops.mla.latent_attention`: attention over the latent itself, for model code
that has already absorbed the up-projections (DeepSeek's inference code, "absorb"):

    o_lat = softmax((q_lat @ c_kv^T + q_pe @ k_pe^T) * scale + mask) @ c_kv

per (batch, head, query) row, keys c_kv [B, Sk, R] and k_pe [B, Sk, Dr] shared by
every head. The model's own q_nope @ W_uk before it and o_lat @ W_uv^T after it stay
in its graph. Semantics: `reference.latent_attention_reference` (causal top-left as
SDPA's is_causal, `scale` used exactly as given, `mask` additive and broadcasting to
[B, H, Sq, Sk], `zero_empty_rows` gives 0 for a row whose scores are all -inf,
`sinks` [H] optional logits in every row's softmax denominator).
"""
from __future__ import annotations

import torch

from ..lowering.kernel_choice import KERNEL_CHOICES, select_backend
from .backend import KERNEL_DTYPES
from .checks import check_like, check_mask, check_rank, check_sinks, check_sizes, op_error

_OP = "latent_attention"
_LAYOUTS = (("q_lat", 4, "[B, H, Sq, R]"), ("q_pe", 4, "[B, H, Sq, Dr]"),
            ("c_kv", 3, "[B, Sk, R]"), ("k_pe", 3, "[B, Sk, Dr]"))


def validate_latent_args(q_lat, q_pe, c_kv, k_pe, kernel, mask=None, sinks=None) -> None:
    """Every check names the argument; messages are built only on failure."""
    if kernel not in KERNEL_CHOICES:
        raise op_error(_OP, f"kernel must be one of {KERNEL_CHOICES}, got {kernel!r}")
    ts = (q_lat, q_pe, c_kv, k_pe)
    for t, (name, rank, layout) in zip(ts, _LAYOUTS):
        check_rank(_OP, name, t, rank, layout)
    if q_lat.dtype not in KERNEL_DTYPES:
        raise op_error(_OP, f"q_lat dtype must be one of {KERNEL_DTYPES}, got {q_lat.dtype}")
    for t, (name, _, _) in zip(ts[1:], _LAYOUTS[1:]):
        check_like(_OP, name, t, q_lat, "q_lat")
    B, H, Sq, R = q_lat.shape
    Sk, Dr = c_kv.shape[1], q_pe.shape[3]
    for t, want, (name, _, layout) in zip(ts[1:], ((B, H, Sq, Dr), (B, Sk, R), (B, Sk, Dr)), _LAYOUTS[1:]):
        check_sizes(_OP, name, t, want, layout)
    check_mask(_OP, mask, q_lat.device, (B, H, Sq, Sk))
    check_sinks(_OP, sinks, q_lat.device, H)


def new_latent_output(q_lat: torch.Tensor) -> torch.Tensor:
    """[B, H, Sq, R] in q's dtype, laid out as [B, Sq, H, R] (fake and real agree), as
    `prefill_attention.new_output`: the model's W_uv einsum reads it per position."""
    B, H, Sq, R = q_lat.shape
    return q_lat.new_empty(B, Sq, H, R).transpose(1, 2)


def compute_latent_attention(q_lat, q_pe, c_kv, k_pe, scale, causal, impl="auto", mask=None,
                             zero_empty_rows=False, sinks=None) -> torch.Tensor:
    """The op's computation without its checks (traceable: see compute_prefill_attention)."""
    out = new_latent_output(q_lat)
    select_backend(q_lat.device, impl).latent_attention(
        q_lat, q_pe, c_kv, k_pe, scale, causal, mask, zero_empty_rows, out, sinks)
    return out


@torch.library.custom_op("mla::latent_attention", mutates_args=())
def latent_attention(
    q_lat: torch.Tensor,
    q_pe: torch.Tensor,
    c_kv: torch.Tensor,
    k_pe: torch.Tensor,
    scale: float,
    causal: bool,
    impl: str = "auto",
    mask: torch.Tensor | None = None,
    zero_empty_rows: bool = False,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of q = [q_lat, q_pe] over keys [c_kv, k_pe] and values c_kv."""
    validate_latent_args(q_lat, q_pe, c_kv, k_pe, impl, mask, sinks)
    return compute_latent_attention(q_lat, q_pe, c_kv, k_pe, scale, causal, impl, mask,
                                    zero_empty_rows, sinks)


@latent_attention.register_fake
def _latent_attention_fake(q_lat, q_pe, c_kv, k_pe, scale, causal, impl="auto", mask=None,
                           zero_empty_rows=False, sinks=None):
    validate_latent_args(q_lat, q_pe, c_kv, k_pe, impl, mask, sinks)
    return new_latent_output(q_lat)
