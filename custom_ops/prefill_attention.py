"""`torch.ops.mla.prefill_attention`: MLA attention straight from the latent c_kv.

One op for both ways of computing it (`form`, chosen by
`lowering.attention_form.choose_attention_form`): "decompressed" expands c_kv into
per-head K and V and runs flash attention over q/k dim Dn+Dr and v dim Dv;
"absorbed" folds w_uk into the query and w_uv into the output and attends over the
latent itself (dim R+Dr), which is cheaper for short queries over long keys.
Semantics: `reference.prefill_attention_reference`; causal is top-left aligned
(SDPA's is_causal), `scale` is used exactly as given, and an optional additive
`mask` (what eager attention adds to the scaled scores) broadcasts to
[B, H, Sq, Sk]. `zero_empty_rows` gives 0 for a query row whose scores are all
-inf (SDPA's safe softmax; eager softmax gives NaN there). `sinks` (optional [H]):
attention sinks, a logit per head in every row's softmax denominator. Dr may be 0
(NoPE MLA: q_pe and k_pe zero-width).

`empty_row_fill` (optional float; needs causal=True and a key-only mask, size 1 on
the query axis): eager's rule for a materialised causal + key-padding mask with a
finite fill. A query row i with no visible unmasked key (every mask value at keys
j <= i equals the fill, compared in fp32) attends EVERY key, with score
qk * scale + mask[j] for j <= i and qk * scale + fill for j > i; every other row is
causal with the mask (`reference.empty_rows_mask` defines it). With a key-only mask
emptiness only ever ends along the rows, so a kernel can decide it per query tile.
"""
from __future__ import annotations

import torch

from ..compat import known_same_shape
from ..lowering.attention_form import FORMS
from ..lowering.kernel_choice import KERNEL_CHOICES, select_backend
from .backend import KERNEL_DTYPES
from .checks import check_empty_row_fill, check_mask, check_sinks

# (argument, rank, layout) in the op's argument order
_LAYOUTS = (("q_nope", 4, "[B, H, Sq, Dn]"), ("q_pe", 4, "[B, H, Sq, Dr]"),
            ("c_kv", 3, "[B, Sk, R]"), ("k_pe", 3, "[B, Sk, Dr]"),
            ("w_uk", 3, "[H, Dn, R]"), ("w_uv", 3, "[H, Dv, R]"))


def _error(msg: str) -> ValueError:
    return ValueError(f"mla.prefill_attention: {msg}")


def validate_prefill_args(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, form, kernel, mask=None, sinks=None,
                          causal=False, empty_row_fill=None) -> None:
    """Every check names the argument; messages are built only on failure (this runs
    on every call). `symbolic=False` (the real kernel's call) promises int sizes."""
    if kernel not in KERNEL_CHOICES:
        raise _error(f"kernel must be one of {KERNEL_CHOICES}, got {kernel!r}")
    if form not in FORMS:
        raise _error(f"form must be one of {FORMS}, got {form!r}")
    ts = (q_nope, q_pe, c_kv, k_pe, w_uk, w_uv)
    for t, (name, rank, layout) in zip(ts, _LAYOUTS):
        if t.dim() != rank:
            raise _error(f"{name} must be {rank}-D {layout}, got shape {tuple(t.shape)}")
    dtype, device = q_nope.dtype, q_nope.device
    if dtype not in KERNEL_DTYPES:
        raise _error(f"q_nope dtype must be one of {KERNEL_DTYPES}, got {dtype}")
    for t, (name, _, _) in zip(ts, _LAYOUTS):
        if t.dtype != dtype:
            raise _error(f"{name} dtype {t.dtype} differs from q_nope's {dtype}")
        if t.device != device:
            raise _error(f"{name} is on {t.device} but q_nope is on {device}")
    B, H, Sq, Dn = q_nope.shape
    Sk, R = c_kv.shape[1], c_kv.shape[2]
    Dr, Dv = q_pe.shape[3], w_uv.shape[1]
    expected = (None, (B, H, Sq, Dr), (B, Sk, R), (B, Sk, Dr), (H, Dn, R), (H, Dv, R))
    for t, want, (name, _, layout) in zip(ts, expected, _LAYOUTS):
        if want is not None and not known_same_shape(t.shape, want):
            raise _error(f"{name} must be {layout} = {want} to agree with the other inputs, "
                         f"got {tuple(t.shape)}")
    check_mask("prefill_attention", mask, device, (B, H, Sq, Sk))
    check_sinks("prefill_attention", sinks, device, H)
    check_empty_row_fill("prefill_attention", empty_row_fill, causal, mask)


def new_output(q_nope: torch.Tensor, w_uv: torch.Tensor) -> torch.Tensor:
    """[B, H, Sq, Dv] in q's dtype, laid out in memory as [B, Sq, H, Dv] (fake and real
    agree): models transpose the output back to [B, Sq, H * Dv] for o_proj, which is
    then a view, not a copy."""
    B, H, Sq, _ = q_nope.shape
    return q_nope.new_empty(B, Sq, H, w_uv.shape[1]).transpose(1, 2)


def compute_prefill_attention(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, scale, causal, form,
                              impl="auto", mask=None, zero_empty_rows=False, sinks=None,
                              empty_row_fill=None) -> torch.Tensor:
    """The op's computation without its checks: torch ops and kernel launches only,
    so that lowering can trace it into the graph (passes/inline_launches.py)."""
    out = new_output(q_nope, w_uv)
    select_backend(q_nope.device, impl).prefill_attention(
        q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, scale, causal, form, mask, zero_empty_rows, out, sinks,
        empty_row_fill)
    return out


@torch.library.custom_op("mla::prefill_attention", mutates_args=())
def prefill_attention(
    q_nope: torch.Tensor,
    q_pe: torch.Tensor,
    c_kv: torch.Tensor,
    k_pe: torch.Tensor,
    w_uk: torch.Tensor,
    w_uv: torch.Tensor,
    scale: float,
    causal: bool,
    form: str,
    impl: str = "auto",
    mask: torch.Tensor | None = None,
    zero_empty_rows: bool = False,
    sinks: torch.Tensor | None = None,
    empty_row_fill: float | None = None,
) -> torch.Tensor:
    """MLA attention of q over the latent c_kv (see `reference.prefill_attention_reference`)."""
    validate_prefill_args(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, form, impl, mask, sinks, causal, empty_row_fill)
    return compute_prefill_attention(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, scale, causal, form,
                                     impl, mask, zero_empty_rows, sinks, empty_row_fill)


@prefill_attention.register_fake
def _prefill_attention_fake(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, scale, causal, form,
                            impl="auto", mask=None, zero_empty_rows=False, sinks=None, empty_row_fill=None):
    validate_prefill_args(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, form, impl, mask, sinks, causal, empty_row_fill)
    return new_output(q_nope, w_uv)
