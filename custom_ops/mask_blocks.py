"""Block classification of an attention mask: which (query tile, key tile) blocks the
prefill kernel may skip, and which it may run without reading the mask.

For an additive float mask (what the attention ops take) a block is
  EMPTY   every entry is -inf: every score of the block is -inf (finite q, k), so
          its softmax weights are exactly 0 and the online softmax state is left
          exactly as it was (alpha == 1 or the state is still all zero): skipping it
          is bit-exact;
  FULL    every entry is exactly 0 (+0 or -0): s + 0 == s, so the mask need not be
          loaded;
  PARTIAL anything else, finfo.min included: finfo.min is NOT -inf. A row whose keys
          are all finfo.min gets eager's uniform softmax over them, so such a block
          must be visited (see triton_prefill_kernel._attend).
A boolean mask (True: attend) reads as the additive mask where(m, 0, -inf).

Only entries inside [Sq, Sk] count (a ragged last tile classifies its valid part).
The classification is per (mask batch, mask head): a mask broadcast over B or H is
read once, not once per head; one broadcast over the query rows ([.., 1, Sk], key
padding) is classified for one row of tiles. The result, int8
[Bm, Hm, nMm, nNm], is indexed by the kernel with stride 0 over every broadcast dim
(`block_strides`). Tile sizes come from the caller, i.e. from the attention kernel's
own configuration: one source.
"""
from __future__ import annotations

import torch

from .launch import launch

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional on CPU: only the reference is available
    triton = None

EMPTY, PARTIAL, FULL = 0, 1, 2


def _as_4d(mask: torch.Tensor) -> torch.Tensor:
    return mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape)) if mask.dim() < 4 else mask


def table_shape(mask: torch.Tensor, Sq: int, Sk: int, block_m: int, block_n: int) -> tuple:
    """[Bm, Hm, nMm, nNm]: the mask's own batch and head sizes, and one tile row (column)
    when the mask broadcasts over the query rows (keys)."""
    m = _as_4d(mask)
    n_m = 1 if m.shape[2] == 1 else _cdiv(Sq, block_m)
    n_n = 1 if m.shape[3] == 1 else _cdiv(Sk, block_n)
    return (m.shape[0], m.shape[1], n_m, n_n)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def block_strides(table: torch.Tensor) -> tuple:
    """The table's strides as the kernel indexes it by (b, h, query tile, key tile):
    0 over every broadcast dim."""
    Bm, Hm, n_m, n_n = table.shape
    s = table.stride()
    return (0 if Bm == 1 else s[0], 0 if Hm == 1 else s[1], 0 if n_m == 1 else s[2],
            0 if n_n == 1 else s[3])


def classify_blocks_reference(mask: torch.Tensor, Sq: int, Sk: int, block_m: int,
                              block_n: int) -> torch.Tensor:
    """PyTorch version of `classify_blocks` (same table, same rules)."""
    m = _as_4d(mask)
    Bm, Hm, n_m, n_n = table_shape(m, Sq, Sk, block_m, block_n)
    rows = block_m * n_m if m.shape[2] != 1 else 1
    cols = block_n * n_n if m.shape[3] != 1 else 1
    full = m.expand(Bm, Hm, Sq if m.shape[2] != 1 else 1, Sk if m.shape[3] != 1 else 1)
    if full.dtype == torch.bool:
        ninf, zero = ~full, full
    else:
        ninf, zero = full == float("-inf"), full == 0
    # padding rows and columns agree with both tests
    pad = (0, cols - full.shape[3], 0, rows - full.shape[2])
    ninf = torch.nn.functional.pad(ninf, pad, value=True)
    zero = torch.nn.functional.pad(zero, pad, value=True)
    bm, bn = rows // n_m, cols // n_n

    def every(x):
        return x.reshape(Bm, Hm, n_m, bm, n_n, bn).all(dim=5).all(dim=3)

    out = torch.full((Bm, Hm, n_m, n_n), PARTIAL, dtype=torch.int8, device=mask.device)
    out[every(zero)] = FULL
    out[every(ninf)] = EMPTY  # every tile holds >= 1 valid entry: never both
    return out


if triton is not None:
    # the codes as the kernels see them (triton_prefill_kernel imports these): one source
    K_EMPTY: tl.constexpr = tl.constexpr(EMPTY)
    K_PARTIAL: tl.constexpr = tl.constexpr(PARTIAL)
    K_FULL: tl.constexpr = tl.constexpr(FULL)

    @triton.jit(do_not_specialize=["rows", "cols"])
    def _classify_blocks(Mk, T, smk_b, smk_h, smk_m, smk_n, st_b, st_h, st_m, st_n,
                         Hm, rows, cols,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_BOOL: tl.constexpr):
        # one program per block: the mask is read once in all, with enough programs
        # to spread the read over the GPU
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        pid_bh = tl.program_id(2)
        b = (pid_bh // Hm).to(tl.int64)
        h = (pid_bh % Hm).to(tl.int64)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        ok = (offs_m < rows)[:, None] & (offs_n < cols)[None, :]
        src = (Mk + b * smk_b + h * smk_h + offs_m.to(tl.int64)[:, None] * smk_m
               + offs_n.to(tl.int64)[None, :] * smk_n)
        x = tl.load(src, mask=ok, other=0)
        if IS_BOOL:
            ninf = x == 0
            zero = x != 0
        else:
            ninf = x == float("-inf")
            zero = x == 0.0
        # entries outside [rows, cols] count as both -inf and 0
        n_not_ninf = tl.sum((ok & ~ninf).to(tl.int32))
        n_not_zero = tl.sum((ok & ~zero).to(tl.int32))
        kind = tl.where(n_not_ninf == 0, K_EMPTY, tl.where(n_not_zero == 0, K_FULL, K_PARTIAL))
        tl.store(T + b * st_b + h * st_h + pid_m * st_m + pid_n * st_n, kind.to(tl.int8))


def classify_blocks(mask: torch.Tensor, Sq: int, Sk: int, block_m: int, block_n: int) -> torch.Tensor:
    """The block table of `mask` (broadcasting to [B, H, Sq, Sk]) for block_m x block_n
    tiles, computed on the mask's device by one Triton launch (traceable: only torch
    ops and the launch, no host read of the mask)."""
    m = _as_4d(mask)
    shape = table_shape(m, Sq, Sk, block_m, block_n)
    table = torch.empty(shape, dtype=torch.int8, device=mask.device)
    rows = Sq if m.shape[2] != 1 else 1
    cols = Sk if m.shape[3] != 1 else 1
    sm = m.stride()
    grid = (shape[3], shape[2], shape[0] * shape[1])
    launch(
        _classify_blocks, grid, m, table, sm[0], sm[1], sm[2], sm[3], *table.stride(), shape[1], rows, cols,
        BLOCK_M=block_m, BLOCK_N=block_n, IS_BOOL=m.dtype == torch.bool, num_warps=4)
    return table


__all__ = ["EMPTY", "PARTIAL", "FULL", "classify_blocks", "classify_blocks_reference",
           "block_strides", "table_shape"]
