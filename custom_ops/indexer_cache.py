"""The DSA indexer's paged key cache (seed 003a), beside the latent cache.

What DeepSeek-V3.2-style attention (transformers 5.23: deepseek_v32, glm_moe_dsa, axk2,
dots3_note, mistral_large4, hy_v4) caches for its sparse indexer is one key per token:
the indexer's k after its LayerNorm and its RoPE, `index_head_dim` wide (128 in the
released models), one head, in the model's dtype (`DynamicIndexedLayer.indexer_keys`
[B, T, D], `StaticIndexedLayer` likewise). Nothing else is stored per token for
these families (`indexer_position_ids` is filled by qwen4_exp only). vLLM stores an fp8
key plus a scale instead; this cache keeps the model's dtype, so reads equal eager.

    cache = PagedIndexerKeyCache.allocate(num_blocks, block_size, head_dim, dtype, device)
    cache.write(k, slots)                      # torch.ops.mla.indexer_cache_write (mutates)
    q_rot = cache.write_with_rope(k, q_pe, cos, sin, slots, rope_dim)
                                               # torch.ops.mla.indexer_rope_cache_write: the
                                               # indexer's RoPE (rope dims FIRST) on q_pe and
                                               # k, and the write, in one launch; q_rot is new
    keys, valid = cache.read(block_table, seq_lens)

Pages hold `block_size` tokens of `head_dim` elements laid out as
`lowering.cache_layout` decides, by the same function as the latent cache's (block_size
1 is NORMAL: SHUFFLE needs whole 16-token tiles). The writer and the reader take (tt,
vec) from this object's one layout and share the latent cache's page addressing
(`cache_layout.slot_offsets`), so they cannot disagree: the bug of seed 003a, a writer
hard-coding SHUFFLE under a NORMAL reader, has no place to live.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..lowering.cache_layout import CacheLayout, layout_params
from ..lowering.kernel_choice import select_backend
from .checks import check_index, check_like, check_rank, check_sizes, known_true, op_error
from .paged_cache import (_check_cache, _check_slot_values, _check_table, _check_table_values, allocate_pages,
                          gather_rows)
from .reference import cache_write_reference
from .rope import new_output, validate_rope_args

_WIDTH = "D"  # how the token width reads in messages


def _check_write(op, cache, k, slots, block_size, tt, vec) -> None:
    check_rank(op, "k", k, 2, "[T, D]")
    check_index(op, "slots", slots, 1, "[T]", cache.device)
    check_sizes(op, "slots", slots, (k.shape[0],), "[T]")
    _check_cache(op, cache, block_size, tt, vec, k.shape[1], _WIDTH)
    check_like(op, "k", k, cache, "the cache")


@torch.library.custom_op("mla::indexer_cache_write", mutates_args=("cache",))
def indexer_cache_write(cache: torch.Tensor, k: torch.Tensor, slots: torch.Tensor, block_size: int,
                        tt: int, vec: int) -> None:
    """cache[slot] = k[t] for every token t (k [T, D], the indexer's rotated key), in the
    cache's layout. A declared mutation: nothing can drop it. Raises ValueError naming
    the argument for a bad shape, dtype or device and (eager, outside CUDA graph
    capture: one host sync) for a slot outside [0, num_blocks * block_size)."""
    _check_write("indexer_cache_write", cache, k, slots, block_size, tt, vec)
    _check_slot_values("indexer_cache_write", cache, slots, block_size)
    cache_write_reference(cache, k, slots, block_size, tt, vec)


@indexer_cache_write.register_fake
def _(cache, k, slots, block_size, tt, vec):
    _check_write("indexer_cache_write", cache, k, slots, block_size, tt, vec)
    return None


def _check_rope_write(cache, k, q_pe, cos, sin, slots, rope_dim, block_size, tt, vec, impl) -> None:
    op = "indexer_rope_cache_write"
    _check_write(op, cache, k, slots, block_size, tt, vec)
    if known_true(rope_dim < 2) or known_true(rope_dim > k.shape[1]):
        raise op_error(op, f"rope_dim must be in [2, D] = [2, {k.shape[1]}] (the rotated first dims of k), "
                           f"got {rope_dim}")
    validate_rope_args([q_pe, k[:, :rope_dim]], cos, sin, impl, op, ("q_pe", "k[:, :rope_dim]"), "impl")


@torch.library.custom_op("mla::indexer_rope_cache_write", mutates_args=("cache",))
def indexer_rope_cache_write(cache: torch.Tensor, k: torch.Tensor, q_pe: torch.Tensor, cos: torch.Tensor,
                             sin: torch.Tensor, slots: torch.Tensor, rope_dim: int, block_size: int, tt: int,
                             vec: int, interleaved_in: bool, interleaved_out: bool,
                             impl: str = "auto") -> torch.Tensor:
    """The DSA indexer's RoPE and key write: its rope dims come FIRST. Rotates q_pe (the
    query's first rope_dim dims) and k[:, :rope_dim] (`mla.rope`'s semantics; cos/sin
    broadcast to both), writes [rotated k[:, :rope_dim] | k[:, rope_dim:]] at `slots`
    (a declared mutation), and returns the rotated q_pe as a new tensor: neither q_pe
    nor k is written (seed 003b). One kernel launch on the Triton backend. Checks:
    those of mla.rope and mla.indexer_cache_write, all before anything runs."""
    _check_rope_write(cache, k, q_pe, cos, sin, slots, rope_dim, block_size, tt, vec, impl)
    _check_slot_values("indexer_rope_cache_write", cache, slots, block_size)
    q_rot = new_output(q_pe)
    select_backend(q_pe.device, impl).rope_cache_write(
        q_pe, k[:, :rope_dim], k[:, rope_dim:], cos, sin, slots, cache, block_size, tt, vec, interleaved_in,
        interleaved_out, q_rot, rope_first=True)
    return q_rot


@indexer_rope_cache_write.register_fake
def _(cache, k, q_pe, cos, sin, slots, rope_dim, block_size, tt, vec, interleaved_in, interleaved_out,
      impl="auto"):
    _check_rope_write(cache, k, q_pe, cos, sin, slots, rope_dim, block_size, tt, vec, impl)
    return new_output(q_pe)


@dataclass
class PagedIndexerKeyCache:
    data: torch.Tensor  # [num_blocks, block_size * head_dim]
    block_size: int
    head_dim: int
    layout: CacheLayout

    @classmethod
    def allocate(cls, num_blocks: int, block_size: int, head_dim: int, dtype: torch.dtype = torch.bfloat16,
                 device="cpu", kernel: str = "auto", layout: CacheLayout | None = None) -> "PagedIndexerKeyCache":
        """`layout`: None lets lowering choose (as for the latent cache); NORMAL or
        SHUFFLE asks for one, checked against the block size and the backend."""
        data, layout = allocate_pages("PagedIndexerKeyCache.allocate", num_blocks, block_size,
                                      dict(head_dim=head_dim), dtype, device, kernel, layout)
        return cls(data, block_size, head_dim, layout)

    @property
    def params(self) -> tuple[int, int]:
        return layout_params(self.layout, self.head_dim, self.data.dtype)

    def write(self, k: torch.Tensor, slots: torch.Tensor) -> None:
        """cache[slots] = k: k [T, head_dim], slots [T] int in [0, num_blocks * block_size)."""
        if k.dim() == 0 or k.shape[-1] != self.head_dim:
            raise op_error("PagedIndexerKeyCache.write", f"k last dim must be the cache's head_dim = "
                                                         f"{self.head_dim}, got shape {tuple(k.shape)}")
        torch.ops.mla.indexer_cache_write(self.data, k, slots, self.block_size, *self.params)

    def write_with_rope(self, k, q_pe, cos, sin, slots, rope_dim: int, interleaved_in: bool = False,
                        interleaved_out: bool = False, kernel: str = "auto") -> torch.Tensor:
        """The indexer's RoPE on q_pe and on k's first rope_dim dims, and the write of the
        rotated key (one launch); -> the rotated q_pe. Styles: deepseek_v32's neox
        (False, False), glm_moe_dsa's interleaved pairs (interleaved_in=True)."""
        if k.dim() == 0 or k.shape[-1] != self.head_dim:
            raise op_error("PagedIndexerKeyCache.write_with_rope", f"k last dim must be the cache's head_dim = "
                                                                   f"{self.head_dim}, got shape {tuple(k.shape)}")
        return torch.ops.mla.indexer_rope_cache_write(self.data, k, q_pe, cos, sin, slots, rope_dim,
                                                      self.block_size, *self.params, interleaved_in,
                                                      interleaved_out, kernel)

    def read(self, block_table: torch.Tensor, seq_lens: torch.Tensor):
        """(keys [B, L, head_dim], valid [B, L]), L the table's capacity: each sequence's
        keys in token order through its block table (checked as by mla.paged_decode)."""
        op = "PagedIndexerKeyCache.read"
        _check_table(op, block_table, seq_lens, block_table.shape[0] if block_table.dim() else 0,
                     self.data.device)
        _check_table_values(op, self.data, block_table, seq_lens, self.block_size)
        return gather_rows(self.data, block_table, seq_lens, self.block_size, *self.params, self.head_dim)
