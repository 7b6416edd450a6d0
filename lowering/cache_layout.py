"""The paged latent cache's physical layout: decided here and nowhere else (seed 003).

A page holds `block_size` tokens of `width` elements (latent + rope). Two layouts:

  NORMAL   token-major: element (tok, d) at tok * width + d.
  SHUFFLE  16-token tiles of 16-byte vectors: [block/16, width*bytes/16, 16 tokens,
           16 bytes], so that one 16-byte load serves a matrix-unit operand directly.

Both are one formula with two parameters (tt tokens per tile, vec elements per
vector; NORMAL is tt = 1, vec = width):

    element_offset(tok, d) = ((tok // tt) * (width // vec) + d // vec) * (tt * vec)
                             + (tok % tt) * vec + d % vec

The cache writer, the Triton reader and the PyTorch reference all take (tt, vec) from
`layout_params` of the cache's one `CacheLayout`, so they cannot disagree.
"""
from __future__ import annotations

from enum import Enum

import torch

SHUFFLE_TOKENS = 16   # tokens per tile
SHUFFLE_BYTES = 16    # bytes per vector


class CacheLayout(Enum):
    NORMAL = "normal"
    SHUFFLE = "shuffle"


def choose_cache_layout(block_size: int, backend) -> CacheLayout:
    """SHUFFLE where pages hold whole 16-token tiles and the backend reads it; NORMAL
    otherwise (block_size 1, as vLLM: nothing to tile)."""
    if block_size % SHUFFLE_TOKENS == 0 and CacheLayout.SHUFFLE.value in backend.cache_layouts:
        return CacheLayout.SHUFFLE
    return CacheLayout.NORMAL


def layout_params(layout: CacheLayout, width: int, dtype: torch.dtype) -> tuple[int, int]:
    """(tt, vec) of the element-offset formula above."""
    if layout is CacheLayout.NORMAL:
        return 1, width
    vec = SHUFFLE_BYTES // torch.empty((), dtype=dtype).element_size()
    if width % vec:
        raise ValueError(f"SHUFFLE layout needs a width that is a multiple of {vec} for {dtype}, got {width}")
    return SHUFFLE_TOKENS, vec


def element_offset(tok: torch.Tensor, d: torch.Tensor, width: int, tt: int, vec: int) -> torch.Tensor:
    """The formula of the module docstring (broadcasting tok against d)."""
    return ((tok // tt) * (width // vec) + d // vec) * (tt * vec) + (tok % tt) * vec + d % vec
