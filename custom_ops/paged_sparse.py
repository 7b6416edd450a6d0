"""`torch.ops.mla.paged_sparse_decode`: DSA sparse attention (DeepSeek-V3.2, GLM-5)
over the paged latent cache, for a serving loop that keeps its latent in
`PagedLatentCache` pages (`cache.attend_sparse`).

    rows = PagedLatentCache.read(block_table, seq_lens)      # c_kv [B, L, R], k_pe [B, L, Dr]
    out  = mla.sparse_attention(q_nope, q_pe, *rows, w_uk, w_uv, indices, scale)

is the function: `indices` [B, Sq, K] are logical token positions of each sequence, the
convention of `mla.sparse_attention` (the same model indices feed both; a duplicate
selects once), with one addition a ragged batch needs: -1 is padding (top-k over a
sequence shorter than K), ignored. `distinct=True` states that no row repeats an index
other than -1 (topk's indices, as vLLM and FlashMLA take them): the kernel then reads
them as they are, without the sort that merges duplicates (~30 us at batch 1, H200); the
eager op checks the claim. A row with no chosen key (all padding, K = 0) gives
the contiguous op's empty row: NaN (eager softmax), or 0 with `zero_empty_rows`.

On the Triton backend each chosen index goes through the block table to its page and
is read in the cache's layout by the paged decode kernel's own address helper
(`triton_sparse.py`, `paged=`): K rows per query, never the whole sequence. The
reference (CPU without the interpreter, `kernel="reference"`) is the formula above:
`paged_cache.gather` then `reference.sparse_attention_reference`.

Checks, as `mla.paged_decode`'s (ValueError naming the argument): shapes, dtypes and
devices at trace time and in eager; in eager only (one host sync, none during CUDA graph
capture) seq_lens and used block-table entries in range and every index -1 or in
[0, seq_lens[b]) (an index past the length raises, as the contiguous op's past Sk).
"""
from __future__ import annotations

import torch

from ..lowering.kernel_choice import select_backend
from .checks import check_distinct, check_index, check_sizes
from .paged_cache import _check_decode, _check_table_values, gather
from .reference import sparse_attention_reference

_OP = "paged_sparse_decode"
PADDING = -1  # an index that chooses nothing (vLLM's and FlashMLA's sparse convention)


def _check_args(q_nope, q_pe, cache, block_table, seq_lens, w_uk, w_uv, indices, block_size, tt, vec,
                kernel) -> None:
    """Shapes, dtypes and devices (fake and real)."""
    _check_decode(_OP, q_nope, q_pe, cache, block_table, seq_lens, w_uk, w_uv, block_size, tt, vec, kernel)
    check_index(_OP, "indices", indices, 3, "[B, Sq, K]", cache.device)
    check_sizes(_OP, "indices", indices, (q_nope.shape[0], q_nope.shape[2], None), "[B, Sq, K]")


def _check_values(cache, block_table, seq_lens, indices, block_size) -> None:
    """Eager only: the table's checks and every index -1 or in [0, seq_lens[b]), one sync."""
    lens = seq_lens.long()[:, None, None]
    bad = (indices < PADDING) | (indices >= lens)

    def message(where, value):  # failure path only: the first bad index's sequence length
        n = int(seq_lens[int(bad.nonzero()[0, 0])])
        return f"indices{where} = {value} is outside [0, seq_lens[b] = {n}) and is not {PADDING} (padding)"

    _check_table_values(_OP, cache, block_table, seq_lens, block_size, more=(indices, bad, message))


def paged_sparse_reference(q_nope, q_pe, cache, block_table, seq_lens, w_uk, w_uv, indices, scale, block_size,
                           tt, vec, zero_empty_rows=False) -> torch.Tensor:
    """The op's definition: the rows `PagedLatentCache.read` returns, then
    `sparse_attention_reference` over them. Padding (and, where checks are off, an index
    outside the sequence, which the kernel skips too) names one extra key that the base
    mask hides, so it chooses nothing and an all-padding row is the contiguous op's
    empty row."""
    R, Dr = w_uk.shape[2], q_pe.shape[-1]
    c, kr, valid = gather(cache, block_table, seq_lens, block_size, tt, vec, R, Dr)
    L = c.shape[1]
    hidden = indices.long()
    hidden = torch.where((hidden < 0) | (hidden >= L), L, hidden)
    c, kr = (torch.cat([t, t.new_zeros(t.shape[0], 1, t.shape[2])], dim=1) for t in (c, kr))
    visible = torch.cat([valid, valid.new_zeros(valid.shape[0], 1)], dim=1)
    base = torch.zeros(visible.shape, device=c.device).masked_fill(~visible, float("-inf"))[:, None, None]
    return sparse_attention_reference(q_nope, q_pe, c, kr, w_uk, w_uv, hidden, scale, base, zero_empty_rows)


def compute_paged_sparse_decode(q_nope, q_pe, cache, block_table, seq_lens, w_uk, w_uv, indices, scale,
                                block_size, tt, vec, impl="auto", zero_empty_rows=False,
                                distinct=False) -> torch.Tensor:
    """The op's computation without its checks (torch ops and kernel launches only)."""
    backend = select_backend(q_nope.device, impl)
    if backend.name != "triton":
        return paged_sparse_reference(q_nope, q_pe, cache, block_table, seq_lens, w_uk, w_uv, indices, scale,
                                      block_size, tt, vec, zero_empty_rows)
    q_lat = torch.einsum("bhqd,hdr->bhqr", q_nope, w_uk)
    # the kernel steps through a table row and through seq_lens with unit stride
    table = block_table if block_table.stride(-1) == 1 else block_table.contiguous()
    lens = seq_lens.to(torch.int32).contiguous()
    o_lat = torch.empty_like(q_lat, memory_format=torch.contiguous_format)
    backend.paged_sparse_over_latent(q_lat, q_pe, (cache, table, lens, block_size, (tt, vec)), indices, scale,
                                     zero_empty_rows, o_lat, distinct=distinct)
    return torch.einsum("bhqr,hvr->bhqv", o_lat, w_uv).contiguous()  # the fake's strides


@torch.library.custom_op("mla::paged_sparse_decode", mutates_args=())
def paged_sparse_decode(q_nope: torch.Tensor, q_pe: torch.Tensor, cache: torch.Tensor, block_table: torch.Tensor,
                        seq_lens: torch.Tensor, w_uk: torch.Tensor, w_uv: torch.Tensor, indices: torch.Tensor,
                        scale: float, block_size: int, tt: int, vec: int, impl: str = "auto",
                        zero_empty_rows: bool = False, distinct: bool = False) -> torch.Tensor:
    """MLA attention of q ([B, H, Sq, Dn] / [B, H, Sq, Dr]) over the cached tokens
    `indices` [B, Sq, K] chooses per query (see the module docstring); -> [B, H, Sq, Dv]."""
    _check_args(q_nope, q_pe, cache, block_table, seq_lens, w_uk, w_uv, indices, block_size, tt, vec, impl)
    _check_values(cache, block_table, seq_lens, indices, block_size)
    if distinct:
        check_distinct(_OP, indices, padding=PADDING)
    return compute_paged_sparse_decode(q_nope, q_pe, cache, block_table, seq_lens, w_uk, w_uv, indices, scale,
                                       block_size, tt, vec, impl, zero_empty_rows, distinct)


@paged_sparse_decode.register_fake
def _(q_nope, q_pe, cache, block_table, seq_lens, w_uk, w_uv, indices, scale, block_size, tt, vec, impl="auto",
      zero_empty_rows=False, distinct=False):
    _check_args(q_nope, q_pe, cache, block_table, seq_lens, w_uk, w_uv, indices, block_size, tt, vec, impl)
    B, H, Sq, _ = q_nope.shape
    return q_nope.new_empty(B, H, Sq, w_uv.shape[1])
