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

Which one: the kernel backend lists the layouts it reads in preference order. The
Triton decode kernel prefers NORMAL: on an H200 (an earlier session, two separate runs)
it read 64-token NORMAL pages at 0.84-0.93 of the copy-bandwidth floor and SHUFFLE pages
at 0.45-0.48 (its loads want whole token rows; SHUFFLE suits kernels that feed matrix
units from 16-byte vectors); benchmarks/bench_decode.py now times both side by side.
"""
from __future__ import annotations

from enum import Enum

import torch

SHUFFLE_TOKENS = 16   # tokens per tile
SHUFFLE_BYTES = 16    # bytes per vector


class CacheLayout(Enum):
    NORMAL = "normal"
    SHUFFLE = "shuffle"


def layout_fits(layout: CacheLayout, block_size: int) -> bool:
    """SHUFFLE needs pages of whole 16-token tiles (never block_size 1); NORMAL fits all."""
    return layout is CacheLayout.NORMAL or block_size % SHUFFLE_TOKENS == 0


def choose_cache_layout(block_size: int, backend, requested: CacheLayout | None = None) -> CacheLayout:
    """The backend's most preferred layout (its `cache_layouts` are in preference order)
    that fits the block size, or `requested` if the backend reads it and it fits."""
    if requested is not None:
        if requested.value not in backend.cache_layouts or not layout_fits(requested, block_size):
            raise ValueError(f"mla paged cache: layout {requested.value} does not fit block_size "
                             f"{block_size} with the {backend.name} backend (it reads {backend.cache_layouts}; "
                             f"SHUFFLE needs a multiple of {SHUFFLE_TOKENS})")
        return requested
    return next(CacheLayout(v) for v in backend.cache_layouts if layout_fits(CacheLayout(v), block_size))


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


def slot_offsets(slots: torch.Tensor, dims: torch.Tensor, width: int, block_size: int, tt: int,
                 vec: int) -> torch.Tensor:
    """Flat element offsets [T, len(dims)] in a cache [num_blocks, block_size * width] of
    dims `dims` of the tokens at `slots` (slot = block * block_size + token in block)."""
    blk, tok = slots // block_size, slots % block_size
    return blk[:, None] * (block_size * width) + element_offset(tok[:, None], dims[None, :], width, tt, vec)
