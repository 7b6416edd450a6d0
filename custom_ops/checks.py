"""Argument checks shared by the mla ops and the paged cache.

Every message reads "mla.<op>: <argument> must be ..., got ..." and is built only on
failure (the checks run on every call, decode steps included).

Shape checks take ints or SymInts and raise only on a mismatch that is known without
adding a guard: the fake impls run them at trace time, the eager impls again on real
sizes, so nothing slips through.

Value checks (index ranges) need the values on the host, a device sync: only the
eager impls run them, at most one sync per call, and never while a CUDA graph is
being captured (a sync is illegal there; the graph replays without the checks).
"""
from __future__ import annotations

import torch

from ..compat import statically_known_true

INDEX_DTYPES = (torch.int32, torch.int64)  # what the kernels load slots, tables and lengths as


def op_error(op: str, msg: str) -> ValueError:
    return ValueError(f"mla.{op}: {msg}")


def known_true(cond) -> bool:
    """A bool, or a SymBool that is true for every value of its symbols (no guard)."""
    return cond if isinstance(cond, bool) else statically_known_true(cond)


def check_rank(op: str, name: str, t: torch.Tensor, rank: int, layout: str) -> None:
    if t.dim() != rank:
        raise op_error(op, f"{name} must be {rank}-D {layout}, got shape {tuple(t.shape)}")


def check_sizes(op: str, name: str, t: torch.Tensor, want: tuple, layout: str) -> None:
    """t.shape against `want` (None: any size) for a tensor of the right rank."""
    if any(w is not None and known_true(s != w) for s, w in zip(t.shape, want)):
        shown = ", ".join("*" if w is None else str(w) for w in want) + ("," if len(want) == 1 else "")
        raise op_error(op, f"{name} must be {layout} = ({shown}) to agree with the other inputs, "
                           f"got {tuple(t.shape)}")


def check_like(op: str, name: str, t: torch.Tensor, ref: torch.Tensor, ref_name: str) -> None:
    """t has ref's dtype and device."""
    if t.dtype != ref.dtype:
        raise op_error(op, f"{name} dtype {t.dtype} differs from {ref_name}'s {ref.dtype}")
    if t.device != ref.device:
        raise op_error(op, f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def check_index(op: str, name: str, t: torch.Tensor, rank: int, layout: str, device: torch.device) -> None:
    """An integer index tensor (slots, block table, lengths) of `rank` on `device`."""
    check_rank(op, name, t, rank, layout)
    if t.dtype not in INDEX_DTYPES:
        raise op_error(op, f"{name} dtype must be one of {INDEX_DTYPES}, got {t.dtype}")
    if t.device != device:
        raise op_error(op, f"{name} is on {t.device} but the cache is on {device}")


def value_checks_off(device: torch.device) -> bool:
    """True while a CUDA graph is being captured on this device's stream: no sync then."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def first_bad(t: torch.Tensor, bad: torch.Tensor) -> tuple[str, int]:
    """('[i, j]', value) of the first True of `bad` in t (failure path only)."""
    idx = tuple(int(i) for i in bad.nonzero()[0])
    return "[" + ", ".join(map(str, idx)) + "]", int(t[idx])


def check_sinks(op: str, sinks, device: torch.device, heads) -> None:
    """Optional attention sinks: one float logit per head, [H], on `device`."""
    from .backend import KERNEL_DTYPES

    if sinks is None:
        return
    if sinks.dtype not in KERNEL_DTYPES or sinks.device != device:
        raise op_error(op, f"sinks must be a float tensor on {device}, got {sinks.dtype} on {sinks.device}")
    if sinks.dim() != 1 or known_true(sinks.shape[0] != heads):
        raise op_error(op, f"sinks must be [H] = ({heads},), one logit per head, got {tuple(sinks.shape)}")


def check_mask(op: str, mask, device: torch.device, full: tuple) -> None:
    """An optional additive attention mask: a float tensor on `device` broadcasting to
    `full` = [B, H, Sq, Sk] (the attention ops share this)."""
    from ..compat import known_broadcasts_to
    from .backend import KERNEL_DTYPES

    if mask is None:
        return
    if mask.dtype not in KERNEL_DTYPES or mask.device != device:
        raise op_error(op, f"mask must be a float tensor on {device} (additive), got {mask.dtype} on {mask.device}")
    if not known_broadcasts_to(mask.shape, full):
        raise op_error(op, f"mask {tuple(mask.shape)} must broadcast to [B, H, Sq, Sk] = {tuple(full)}")


def check_distinct(op: str, indices: torch.Tensor, padding: int | None = None) -> None:
    """No row repeats an index, as `distinct=True` states (one sort, one host sync);
    `padding` (an index that chooses nothing) may repeat."""
    if indices.shape[-1] < 2 or indices.numel() == 0 or value_checks_off(indices.device):
        return
    ordered = indices.sort(dim=-1).values
    repeats = ordered[..., 1:] == ordered[..., :-1]
    if padding is not None:
        repeats &= ordered[..., 1:] != padding
    if bool(repeats.any()):
        *row, j = (int(i) for i in repeats.nonzero()[0])
        value = int(ordered[(*row, j)])
        raise op_error(op, f"distinct=True, but indices{list(row)} repeats the index {value}")


def check_empty_row_fill(op: str, fill, causal: bool, mask) -> None:
    """`empty_row_fill` speaks of rows of a causal key-only mask (the kernels decide
    emptiness per query tile, which holds only when the mask is constant along rows)."""
    if fill is None:
        return
    if not causal or mask is None:
        raise op_error(op, f"empty_row_fill needs causal=True and a mask, got causal={causal}, "
                           f"mask={'None' if mask is None else tuple(mask.shape)}")
    if mask.dim() >= 2 and not known_true(mask.shape[-2] == 1):
        raise op_error(op, f"empty_row_fill needs a key-only mask (size 1 on the query axis), "
                           f"got {tuple(mask.shape)}")
