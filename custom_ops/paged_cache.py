"""A paged latent KV cache for MLA, and its two ops.

`PagedLatentCache.allocate(num_blocks, block_size, latent_dim, rope_dim, dtype, device)`
holds pages of `block_size` tokens, each token the latent (R) followed by the rotated
k_pe (Dr), laid out inside the page as `lowering.cache_layout` decides from the block
size (NORMAL or SHUFFLE). Sequences own pages through a block table [B, max_blocks]
(any page order) and have lengths seq_lens [B].

    cache.write(latent, k_pe, slots)          # torch.ops.mla.cache_write (mutates the cache)
    q_rot = cache.write_with_rope(latent, k_pe, q_pe, cos, sin, slots)
                                              # torch.ops.mla.rope_cache_write: RoPE on q_pe
                                              # and k_pe, then the write; q_rot is new
    out = cache.attend(q_nope, q_pe, w_uk, w_uv, scale, block_table, seq_lens)
                                              # torch.ops.mla.paged_decode (functional)

Both ops take the layout's (tt, vec) from the cache object, so writer and reader
agree by construction (seed 003a). They run the same in eager and under
torch.compile (opaque custom ops; the write is declared as mutating the cache, so
nothing can drop it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..lowering.cache_layout import CacheLayout, choose_cache_layout, element_offset, layout_params
from ..lowering.kernel_choice import select_backend
from .rope import new_output, validate_rope_args


def _error(msg: str) -> ValueError:
    return ValueError(f"mla paged cache: {msg}")


def _token_offsets(slots, width, block_size, tt, vec, dims):
    """Flat element offsets [T, len(dims)] of slots (block * block_size + token)."""
    blk, tok = slots // block_size, slots % block_size
    return blk[:, None] * (block_size * width) + element_offset(tok[:, None], dims[None, :], width, tt, vec)


@torch.library.custom_op("mla::cache_write", mutates_args=("cache",))
def cache_write(cache: torch.Tensor, latent: torch.Tensor, k_pe: torch.Tensor, slots: torch.Tensor,
                block_size: int, tt: int, vec: int) -> None:
    """cache[slot] = [latent | k_pe] for every token, in the cache's layout."""
    width = latent.shape[-1] + k_pe.shape[-1]
    if cache.dim() != 2 or cache.shape[1] != block_size * width:
        raise _error(f"cache must be [num_blocks, block_size * width] = [*, {block_size * width}], "
                     f"got {tuple(cache.shape)}")
    if latent.dim() != 2 or k_pe.dim() != 2 or latent.shape[0] != k_pe.shape[0] or slots.shape != latent.shape[:1]:
        raise _error(f"latent [T, R], k_pe [T, Dr] and slots [T] must agree, got {tuple(latent.shape)}, "
                     f"{tuple(k_pe.shape)}, {tuple(slots.shape)}")
    if latent.dtype != cache.dtype or k_pe.dtype != cache.dtype:
        raise _error(f"latent/k_pe dtype {latent.dtype}/{k_pe.dtype} differs from the cache's {cache.dtype}")
    dims = torch.arange(width, device=cache.device)
    offsets = _token_offsets(slots.long(), width, block_size, tt, vec, dims)
    cache.view(-1).index_copy_(0, offsets.reshape(-1), torch.cat([latent, k_pe], dim=-1).reshape(-1))


@cache_write.register_fake
def _(cache, latent, k_pe, slots, block_size, tt, vec):
    return None


@torch.library.custom_op("mla::rope_cache_write", mutates_args=("cache",))
def rope_cache_write(cache: torch.Tensor, latent: torch.Tensor, k_pe: torch.Tensor, q_pe: torch.Tensor,
                     cos: torch.Tensor, sin: torch.Tensor, slots: torch.Tensor, block_size: int,
                     tt: int, vec: int, interleaved_in: bool, interleaved_out: bool,
                     impl: str = "auto") -> torch.Tensor:
    """Rotate q_pe and k_pe in one RoPE launch (`mla.rope`'s semantics; k_pe [T, Dr] with
    cos/sin broadcasting to it), write [latent | rotated k_pe] into the cache at `slots`
    (a declared mutation: nothing can drop it), and return the rotated q_pe as a new
    tensor (q stays functional). `impl` is the other ops' `kernel` (Inductor reserves
    that name for mutating ops' fallbacks)."""
    validate_rope_args([q_pe, k_pe], cos, sin, impl)
    q_rot, k_rot = [new_output(x) for x in (q_pe, k_pe)]
    select_backend(q_pe.device, impl).rope([q_pe, k_pe], cos, sin, interleaved_in, interleaved_out,
                                             [q_rot, k_rot])
    cache_write(cache, latent, k_rot, slots, block_size, tt, vec)
    return q_rot


@rope_cache_write.register_fake
def _(cache, latent, k_pe, q_pe, cos, sin, slots, block_size, tt, vec, interleaved_in, interleaved_out,
      impl="auto"):
    validate_rope_args([q_pe, k_pe], cos, sin, impl)
    return new_output(q_pe)


def gather(cache, block_table, seq_lens, block_size, tt, vec, latent_dim, rope_dim):
    """Reference read: (c_kv [B, L, R], k_pe [B, L, Dr], valid [B, L]) with L the table's capacity."""
    width = latent_dim + rope_dim
    B, max_blocks = block_table.shape
    L = max_blocks * block_size
    t = torch.arange(L, device=cache.device)
    slots = block_table.long()[:, t // block_size] * block_size + t % block_size  # [B, L]
    dims = torch.arange(width, device=cache.device)
    rows = cache.view(-1)[_token_offsets(slots.reshape(-1), width, block_size, tt, vec, dims)]
    rows = rows.view(B, L, width)
    return rows[..., :latent_dim], rows[..., latent_dim:], t[None, :] < seq_lens.long()[:, None]


@torch.library.custom_op("mla::paged_decode", mutates_args=())
def paged_decode(q_nope: torch.Tensor, q_pe: torch.Tensor, cache: torch.Tensor, block_table: torch.Tensor,
                 seq_lens: torch.Tensor, w_uk: torch.Tensor, w_uv: torch.Tensor, scale: float,
                 block_size: int, tt: int, vec: int, kernel: str = "auto") -> torch.Tensor:
    """MLA attention of q ([B, H, Sq, Dn] / [B, H, Sq, Dr]) over each sequence's first
    seq_lens[b] cached tokens, absorbed form; -> [B, H, Sq, Dv] (no causal mask within
    the Sq queries: each sees the whole cached sequence)."""
    B, H, Sq, _ = q_nope.shape
    R, Dr = w_uk.shape[2], q_pe.shape[-1]
    if block_table.dim() != 2 or block_table.shape[0] != B or seq_lens.shape != (B,):
        raise _error(f"block_table must be [B, max_blocks] and seq_lens [B] with B = {B}, got "
                     f"{tuple(block_table.shape)} and {tuple(seq_lens.shape)}")
    if block_table.dtype not in (torch.int32, torch.int64) or seq_lens.dtype not in (torch.int32, torch.int64):
        raise _error("block_table and seq_lens must be int32 or int64")
    if cache.shape[1] != block_size * (R + Dr):
        raise _error(f"cache rows hold {cache.shape[1]} elements, expected block_size * (R + Dr) = "
                     f"{block_size * (R + Dr)}")
    q_lat = torch.einsum("bhqd,hdr->bhqr", q_nope, w_uk)
    if select_backend(q_nope.device, kernel).name == "triton":
        from .triton_decode import mla_decode_attention
        o_lat = mla_decode_attention(q_lat, q_pe, None, None, scale, False,
                                     paged=(cache, block_table, seq_lens.int(), block_size, (tt, vec)))
    else:
        c, kr, valid = gather(cache, block_table, seq_lens, block_size, tt, vec, R, Dr)
        s = (q_lat.float() @ c.float()[:, None].transpose(-1, -2)
             + q_pe.float() @ kr.float()[:, None].transpose(-1, -2)) * scale
        s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
        o_lat = (s.softmax(-1) @ c.float()[:, None]).to(q_nope.dtype)
    return torch.einsum("bhqr,hvr->bhqv", o_lat, w_uv)


@paged_decode.register_fake
def _(q_nope, q_pe, cache, block_table, seq_lens, w_uk, w_uv, scale, block_size, tt, vec, kernel="auto"):
    B, H, Sq, _ = q_nope.shape
    return q_nope.new_empty(B, H, Sq, w_uv.shape[1])


@dataclass
class PagedLatentCache:
    data: torch.Tensor           # [num_blocks, block_size * (latent_dim + rope_dim)]
    block_size: int
    latent_dim: int
    rope_dim: int
    layout: CacheLayout

    @classmethod
    def allocate(cls, num_blocks: int, block_size: int, latent_dim: int, rope_dim: int,
                 dtype: torch.dtype = torch.bfloat16, device="cpu", kernel: str = "auto",
                 layout: CacheLayout | None = None) -> "PagedLatentCache":
        """`layout`: None lets lowering choose (the backend's preference); NORMAL or
        SHUFFLE asks for one, checked against the block size and the backend."""
        for name, v in (("num_blocks", num_blocks), ("block_size", block_size),
                        ("latent_dim", latent_dim), ("rope_dim", rope_dim)):
            if not isinstance(v, int) or v < 1:
                raise _error(f"{name} must be a positive int, got {v!r}")
        device = torch.device(device)
        layout = choose_cache_layout(block_size, select_backend(device, kernel), layout)
        width = latent_dim + rope_dim
        layout_params(layout, width, dtype)  # raises for a width the layout cannot tile
        data = torch.zeros(num_blocks, block_size * width, dtype=dtype, device=device)
        return cls(data, block_size, latent_dim, rope_dim, layout)

    @property
    def params(self) -> tuple[int, int]:
        return layout_params(self.layout, self.latent_dim + self.rope_dim, self.data.dtype)

    def write(self, latent: torch.Tensor, k_pe: torch.Tensor, slots: torch.Tensor) -> None:
        torch.ops.mla.cache_write(self.data, latent, k_pe, slots, self.block_size, *self.params)

    def write_with_rope(self, latent, k_pe, q_pe, cos, sin, slots, interleaved_in: bool = False,
                        interleaved_out: bool = False, kernel: str = "auto") -> torch.Tensor:
        """Rotate q_pe and k_pe (one launch), cache [latent | rotated k_pe]; -> rotated q_pe."""
        return torch.ops.mla.rope_cache_write(self.data, latent, k_pe, q_pe, cos, sin, slots, self.block_size,
                                              *self.params, interleaved_in, interleaved_out, kernel)

    def read(self, block_table: torch.Tensor, seq_lens: torch.Tensor):
        """(c_kv [B, L, R], k_pe [B, L, Dr], valid [B, L]), for checks and references."""
        return gather(self.data, block_table, seq_lens, self.block_size, *self.params,
                      self.latent_dim, self.rope_dim)

    def attend(self, q_nope, q_pe, w_uk, w_uv, scale: float, block_table, seq_lens, kernel: str = "auto"):
        return torch.ops.mla.paged_decode(q_nope, q_pe, self.data, block_table, seq_lens, w_uk, w_uv,
                                          scale, self.block_size, *self.params, kernel)
