"""PyTorch reference implementations: the definition of each op's semantics.

They run for CPU tensors when Triton is not interpreting, and are what the Triton
kernels are tested against.
"""
from __future__ import annotations

from typing import ClassVar

import torch

from .backend import KernelBackend


def rope_reference(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    interleaved_in: bool,
    interleaved_out: bool,
) -> torch.Tensor:
    """Rotate pairs (a, b) of the last dim of x, computing in float32.

    Pairs are (x[j], x[j + d/2]) or, with `interleaved_in`, (x[2j], x[2j+1]).
    cos/sin have width d (lo half for `a`'s output, hi half for `b`'s) or d/2
    (one angle per pair). Output: lo = a*c - b*s, hi = b*c + a*s, laid out as
    [lo..., hi...] or, with `interleaved_out`, [lo0, hi0, lo1, hi1, ...].
    """
    d = x.shape[-1]
    half = d // 2
    xf = x.float()
    if interleaved_in:
        a, b = xf[..., 0::2], xf[..., 1::2]
    else:
        a, b = xf[..., :half], xf[..., half:]
    c, s = cos.float(), sin.float()
    if c.shape[-1] == d:
        c_lo, c_hi, s_lo, s_hi = c[..., :half], c[..., half:], s[..., :half], s[..., half:]
    else:
        c_lo = c_hi = c
        s_lo = s_hi = s
    lo = a * c_lo - b * s_lo
    hi = b * c_hi + a * s_hi
    if interleaved_out:
        out = torch.stack((lo, hi), dim=-1).flatten(-2)
    else:
        out = torch.cat((lo, hi), dim=-1)
    return out.to(x.dtype)


class ReferenceBackend(KernelBackend):
    name: ClassVar[str] = "reference"

    @classmethod
    def supports(cls, device: torch.device) -> bool:
        return True

    @classmethod
    def rope(cls, xs, cos, sin, interleaved_in, interleaved_out, outs) -> None:
        for x, out in zip(xs, outs):
            out.copy_(rope_reference(x, cos, sin, interleaved_in, interleaved_out))
