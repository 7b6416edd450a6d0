"""`torch.ops.mla.rope`: one functional op that rotates q's rope part and the
shared k_pe (any number of tensors sharing cos/sin) in a single launch."""
from __future__ import annotations

import torch

from ..compat import known_broadcasts_to, known_same_shape
from ..lowering.kernel_choice import KERNEL_CHOICES, select_backend
from .backend import KERNEL_DTYPES
from .checks import known_true, op_error

MAX_LEADING_DIMS = 4  # the kernel indexes rows through at most 4 leading dims


def validate_rope_args(xs, cos, sin, kernel, op: str = "rope", names=None, kernel_name: str = "kernel") -> None:
    """Every check names the argument; messages are built only on failure (this
    runs on every call, decode steps included). `op`, `names` (of the xs) and
    `kernel_name`: how the calling op spells them (mla.rope_cache_write reuses this).
    No value checks: every value is valid input. Any strides: the kernel takes them."""
    names = names or [f"xs[{i}]" for i in range(len(xs))]
    if not 1 <= len(xs) <= 2:
        raise op_error(op, f"xs must hold 1 or 2 tensors (q_pe and k_pe), got {len(xs)}")
    if kernel not in KERNEL_CHOICES:
        raise op_error(op, f"{kernel_name} must be one of {KERNEL_CHOICES}, got {kernel!r}")
    if not known_same_shape(cos.shape, sin.shape):
        raise op_error(op, f"cos {tuple(cos.shape)} and sin {tuple(sin.shape)} must have one shape")
    if cos.dtype not in KERNEL_DTYPES or sin.dtype not in KERNEL_DTYPES:
        raise op_error(op, f"cos/sin dtype must be one of {KERNEL_DTYPES}, got {cos.dtype}/{sin.dtype}")
    if cos.dim() == 0:
        raise op_error(op, "cos/sin must have a last (rotary) dim, got a 0-D tensor")
    width, lead = cos.shape[-1], cos.shape[:-1]
    for i, (x, name) in enumerate(zip(xs, names)):
        if x.dtype not in KERNEL_DTYPES:
            raise op_error(op, f"{name} dtype must be one of {KERNEL_DTYPES}, got {x.dtype}")
        if not x.device == cos.device == sin.device:
            raise op_error(op, f"{name} is on {x.device} but cos/sin are on {cos.device}/{sin.device}")
        if not 1 <= x.dim() - 1 <= MAX_LEADING_DIMS:
            raise op_error(op, f"{name} must have 1..{MAX_LEADING_DIMS} leading dims, got shape {tuple(x.shape)}")
        d = x.shape[-1]
        if d % 2 or d <= 0:
            raise op_error(op, f"{name} rotary dim (last dim) must be even, got {d}")
        # one launch rotates every x with one rotary dim (the Triton kernel's plan)
        if i and known_true(d != xs[0].shape[-1]):
            raise op_error(op, f"{name} rotary dim (last dim) must equal {names[0]}'s {xs[0].shape[-1]}, got {d}")
        if width not in (d, d // 2):
            raise op_error(op, f"cos/sin width must be {d} or {d // 2} for {name} of rotary dim {d}, got {width}")
        if not known_broadcasts_to(lead, x.shape[:-1]):
            raise op_error(op, f"cos/sin leading shape {tuple(lead)} must broadcast to {name}'s "
                               f"{tuple(x.shape[:-1])}")


def new_output(x: torch.Tensor) -> torch.Tensor:
    """Output buffer: x's strides when x is dense, else contiguous (fake and real agree)."""
    return torch.empty_like(x, memory_format=torch.preserve_format)


def compute_rope(xs, cos, sin, interleaved_in, interleaved_out, impl="auto") -> list[torch.Tensor]:
    """The op's computation without its checks (traceable: see compute_prefill_attention)."""
    outs = [new_output(x) for x in xs]
    select_backend(xs[0].device, impl).rope(list(xs), cos, sin, interleaved_in, interleaved_out, outs)
    return outs


@torch.library.custom_op("mla::rope", mutates_args=())
def rope(
    xs: list[torch.Tensor],
    cos: torch.Tensor,
    sin: torch.Tensor,
    interleaved_in: bool,
    interleaved_out: bool,
    impl: str = "auto",
) -> list[torch.Tensor]:
    """Rotary embedding of each x in `xs` (see `reference.rope_reference`)."""
    validate_rope_args(xs, cos, sin, impl)
    return compute_rope(xs, cos, sin, interleaved_in, interleaved_out, impl)


@rope.register_fake
def _rope_fake(xs, cos, sin, interleaved_in, interleaved_out, impl="auto"):
    validate_rope_args(xs, cos, sin, impl)
    return [new_output(x) for x in xs]
