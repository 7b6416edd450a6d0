"""A paged latent KV cache for MLA, and its two ops.

`PagedLatentCache.allocate(num_blocks, block_size, latent_dim, rope_dim, dtype, device)`
holds pages of `block_size` tokens, each token the latent (R) followed by the rotated
k_pe (Dr), laid out inside the page as `lowering.cache_layout` decides from the block
size (NORMAL or SHUFFLE). Sequences own pages through a block table [B, max_blocks]
(any page order) and have lengths seq_lens [B].

    cache.write(latent, k_pe, slots)          # torch.ops.mla.cache_write (mutates the cache)
    q_rot = cache.write_with_rope(latent, k_pe, q_pe, cos, sin, slots)
                                              # torch.ops.mla.rope_cache_write: RoPE on q_pe
                                              # and k_pe and the write in one launch
                                              # (Triton); q_rot is new
    out = cache.attend(q_nope, q_pe, w_uk, w_uv, scale, block_table, seq_lens)
                                              # torch.ops.mla.paged_decode (functional)
    out = cache.attend_sparse(q_nope, q_pe, w_uk, w_uv, scale, block_table, seq_lens, indices)
                                              # torch.ops.mla.paged_sparse_decode (DSA: only
                                              # the top-k tokens; paged_sparse.py)

Both ops take the layout's (tt, vec) from the cache object, so writer and reader
agree by construction (seed 003a). They run the same in eager and under
torch.compile (opaque custom ops; the write is declared as mutating the cache, so
nothing can drop it).

Every op and method checks its arguments (ValueError naming the argument): shapes,
dtypes and devices at trace time and in eager; slot, block-table and length ranges in
eager only (one host sync per call, skipped during CUDA graph capture).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..lowering.cache_layout import CacheLayout, choose_cache_layout, layout_params, slot_offsets
from ..lowering.kernel_choice import KERNEL_CHOICES, select_backend
from .backend import KERNEL_DTYPES
from .checks import (check_index, check_like, check_rank, check_sizes, first_bad, known_true, op_error,
                     value_checks_off)
from .reference import cache_write_reference
from .rope import new_output, validate_rope_args


# ------------------------------------------------------------------------ checks
# Shapes, dtypes and devices are checked in the fake and the eager impls alike;
# index ranges (slots, block table, seq_lens) only in the eager impls, outside CUDA
# graph capture (see checks.py). Queries, weights, latent and k_pe may have any
# strides (einsum, torch.cat and the kernel's strided loads take them); the cache
# may not (pages are addressed by flat offset), and the block table and lengths are
# made contiguous where the kernel reads them with unit stride.

def _check_cache(op, cache, block_size, tt, vec, width, what: str = "R + Dr") -> None:
    """The cache against the page geometry: [num_blocks, block_size * width] with
    (tt, vec) tiling a page (`cache_layout.element_offset` is then a permutation of it).
    `what`: how the token width reads in messages (the latent's R + Dr, the indexer's D)."""
    check_rank(op, "cache", cache, 2, f"[num_blocks, block_size * ({what})]")
    if cache.dtype not in KERNEL_DTYPES:
        raise op_error(op, f"cache dtype must be one of {KERNEL_DTYPES}, got {cache.dtype}")
    if known_true(block_size < 1):
        raise op_error(op, f"block_size must be a positive int, got {block_size!r}")
    if known_true(cache.shape[1] != block_size * width):
        raise op_error(op, f"cache must be [num_blocks, block_size * ({what})] = [*, {block_size * width}] "
                           f"(block_size {block_size}, {what} = {width}), got {tuple(cache.shape)}")
    if (known_true(tt < 1) or known_true(vec < 1) or known_true(block_size % tt != 0)
            or known_true(width % vec != 0)):
        raise op_error(op, f"tt, vec must tile a page (block_size % tt == 0, ({what}) % vec == 0; see "
                           f"lowering.cache_layout), got tt={tt}, vec={vec} for block_size {block_size}, "
                           f"{what} = {width}")
    if not cache.is_contiguous():
        raise op_error(op, f"cache must be contiguous (pages are addressed by flat offset), "
                           f"got strides {cache.stride()}")


def _check_write(op, cache, latent, k_pe, slots, block_size, tt, vec) -> None:
    check_rank(op, "latent", latent, 2, "[T, R]")
    check_rank(op, "k_pe", k_pe, 2, "[T, Dr]")
    check_index(op, "slots", slots, 1, "[T]", cache.device)
    T = latent.shape[0]
    check_sizes(op, "k_pe", k_pe, (T, None), "[T, Dr]")
    check_sizes(op, "slots", slots, (T,), "[T]")
    _check_cache(op, cache, block_size, tt, vec, latent.shape[1] + k_pe.shape[1])
    check_like(op, "latent", latent, cache, "the cache")
    check_like(op, "k_pe", k_pe, cache, "the cache")


def _check_slot_values(op, cache, slots, block_size) -> None:
    """Eager only: every slot addresses a token of the cache."""
    if value_checks_off(cache.device):
        return
    n = cache.shape[0] * block_size
    bad = (slots < 0) | (slots >= n)
    if bad.any():  # the one host sync
        where, v = first_bad(slots, bad)
        raise op_error(op, f"slots{where} must be in [0, num_blocks * block_size) = [0, {n}), got {v}")


def _check_table(op, block_table, seq_lens, B, device) -> None:
    check_index(op, "block_table", block_table, 2, "[B, max_blocks]", device)
    check_index(op, "seq_lens", seq_lens, 1, "[B]", device)
    check_sizes(op, "block_table", block_table, (B, None), "[B, max_blocks]")
    check_sizes(op, "seq_lens", seq_lens, (B,), "[B]")


def _check_table_values(op, cache, block_table, seq_lens, block_size, more=None) -> None:
    """Eager only: 0 <= seq_lens[b] <= capacity, and every block a sequence uses (its
    first ceil(seq_lens[b] / block_size) entries) is a block of the cache. Entries past
    that are never read: padding may hold anything (-1, say). `more`: (values, bad,
    message(where, value)) of another index tensor, checked in the same host sync, last."""
    if value_checks_off(cache.device):
        return
    num_blocks, max_blocks = cache.shape[0], block_table.shape[1]
    capacity = max_blocks * block_size
    bad_len = (seq_lens < 0) | (seq_lens > capacity)
    n_used = (seq_lens.clamp(0, capacity) + block_size - 1) // block_size
    used = torch.arange(max_blocks, device=cache.device) < n_used[:, None]
    bad_block = used & ((block_table < 0) | (block_table >= num_blocks))
    flags = [bad_len.any(), bad_block.any()] + ([more[1].any()] if more is not None else [])
    len_bad, block_bad, *more_bad = torch.stack(flags).tolist()  # the one host sync
    if len_bad:
        where, v = first_bad(seq_lens, bad_len)
        raise op_error(op, f"seq_lens{where} must be in [0, block_table.shape[1] * block_size] = "
                           f"[0, {capacity}] (the table's capacity), got {v}")
    if block_bad:
        where, v = first_bad(block_table, bad_block)
        raise op_error(op, f"block_table{where} must be a block of the cache, in [0, num_blocks) = "
                           f"[0, {num_blocks}), got {v}")
    if more_bad and more_bad[0]:
        where, v = first_bad(more[0], more[1])
        raise op_error(op, more[2](where, v))


def _check_decode(op, q_nope, q_pe, cache, block_table, seq_lens, w_uk, w_uv, block_size, tt, vec,
                  kernel) -> None:
    if kernel not in KERNEL_CHOICES:
        raise op_error(op, f"kernel must be one of {KERNEL_CHOICES}, got {kernel!r}")
    for name, t, rank, layout in (("q_nope", q_nope, 4, "[B, H, Sq, Dn]"), ("q_pe", q_pe, 4, "[B, H, Sq, Dr]"),
                                  ("w_uk", w_uk, 3, "[H, Dn, R]"), ("w_uv", w_uv, 3, "[H, Dv, R]")):
        check_rank(op, name, t, rank, layout)
    B, H, Sq, Dn = q_nope.shape
    R = w_uk.shape[2]
    check_sizes(op, "q_pe", q_pe, (B, H, Sq, None), "[B, H, Sq, Dr]")
    check_sizes(op, "w_uk", w_uk, (H, Dn, None), "[H, Dn, R]")
    check_sizes(op, "w_uv", w_uv, (H, None, R), "[H, Dv, R]")
    _check_cache(op, cache, block_size, tt, vec, R + q_pe.shape[3])
    for name, t in (("q_nope", q_nope), ("q_pe", q_pe), ("w_uk", w_uk), ("w_uv", w_uv)):
        check_like(op, name, t, cache, "the cache")
    _check_table(op, block_table, seq_lens, B, cache.device)


# ------------------------------------------------------------------------ ops

def _write(cache, latent, k_pe, slots, block_size, tt, vec) -> None:
    """cache[slot] = [latent | k_pe] (arguments already checked)."""
    cache_write_reference(cache, torch.cat([latent, k_pe], dim=-1), slots, block_size, tt, vec)


@torch.library.custom_op("mla::cache_write", mutates_args=("cache",))
def cache_write(cache: torch.Tensor, latent: torch.Tensor, k_pe: torch.Tensor, slots: torch.Tensor,
                block_size: int, tt: int, vec: int) -> None:
    """cache[slot] = [latent | k_pe] for every token, in the cache's layout. Raises
    ValueError naming the argument for a bad shape, dtype or device and (eager, outside
    CUDA graph capture: one host sync) for a slot outside [0, num_blocks * block_size)."""
    _check_write("cache_write", cache, latent, k_pe, slots, block_size, tt, vec)
    _check_slot_values("cache_write", cache, slots, block_size)
    _write(cache, latent, k_pe, slots, block_size, tt, vec)


@cache_write.register_fake
def _(cache, latent, k_pe, slots, block_size, tt, vec):
    _check_write("cache_write", cache, latent, k_pe, slots, block_size, tt, vec)
    return None


def _check_rope_write(cache, latent, k_pe, q_pe, cos, sin, slots, block_size, tt, vec, impl) -> None:
    validate_rope_args([q_pe, k_pe], cos, sin, impl, "rope_cache_write", ("q_pe", "k_pe"), "impl")
    _check_write("rope_cache_write", cache, latent, k_pe, slots, block_size, tt, vec)


@torch.library.custom_op("mla::rope_cache_write", mutates_args=("cache",))
def rope_cache_write(cache: torch.Tensor, latent: torch.Tensor, k_pe: torch.Tensor, q_pe: torch.Tensor,
                     cos: torch.Tensor, sin: torch.Tensor, slots: torch.Tensor, block_size: int,
                     tt: int, vec: int, interleaved_in: bool, interleaved_out: bool,
                     impl: str = "auto") -> torch.Tensor:
    """Rotate q_pe and k_pe (`mla.rope`'s semantics; k_pe [T, Dr] with cos/sin
    broadcasting to it), write [latent | rotated k_pe] into the cache at `slots` (a
    declared mutation: nothing can drop it), and return the rotated q_pe as a new tensor
    (q stays functional). On the Triton backend all of it is one kernel launch
    (`triton_rope_cache.py`); the rotated k_pe goes straight into the pages. `impl` is
    the other ops' `kernel` (Inductor reserves that name for mutating ops' fallbacks).
    Checks: those of mla.rope and mla.cache_write, all before anything runs."""
    _check_rope_write(cache, latent, k_pe, q_pe, cos, sin, slots, block_size, tt, vec, impl)
    _check_slot_values("rope_cache_write", cache, slots, block_size)
    q_rot = new_output(q_pe)
    select_backend(q_pe.device, impl).rope_cache_write(q_pe, k_pe, latent, cos, sin, slots, cache, block_size,
                                                       tt, vec, interleaved_in, interleaved_out, q_rot)
    return q_rot


@rope_cache_write.register_fake
def _(cache, latent, k_pe, q_pe, cos, sin, slots, block_size, tt, vec, interleaved_in, interleaved_out,
      impl="auto"):
    _check_rope_write(cache, latent, k_pe, q_pe, cos, sin, slots, block_size, tt, vec, impl)
    return new_output(q_pe)


def gather_rows(cache, block_table, seq_lens, block_size, tt, vec, width):
    """Reference read of whole token rows: (rows [B, L, width], valid [B, L]), L the
    table's capacity. Every paged cache's reader (latent, indexer keys) is this one."""
    B, max_blocks = block_table.shape
    L = max_blocks * block_size
    t = torch.arange(L, device=cache.device)
    # entries past a sequence's length are padding (unchecked, maybe out of range):
    # clamp them to some block; `valid` masks what they read
    blocks = block_table.long().clamp(0, max(cache.shape[0] - 1, 0))
    slots = blocks[:, t // block_size] * block_size + t % block_size  # [B, L]
    dims = torch.arange(width, device=cache.device)
    rows = cache.view(-1)[slot_offsets(slots.reshape(-1), dims, width, block_size, tt, vec)]
    return rows.view(B, L, width), t[None, :] < seq_lens.long()[:, None]


def gather(cache, block_table, seq_lens, block_size, tt, vec, latent_dim, rope_dim):
    """Reference read: (c_kv [B, L, R], k_pe [B, L, Dr], valid [B, L]) with L the table's capacity."""
    rows, valid = gather_rows(cache, block_table, seq_lens, block_size, tt, vec, latent_dim + rope_dim)
    return rows[..., :latent_dim], rows[..., latent_dim:], valid


@torch.library.custom_op("mla::paged_decode", mutates_args=())
def paged_decode(q_nope: torch.Tensor, q_pe: torch.Tensor, cache: torch.Tensor, block_table: torch.Tensor,
                 seq_lens: torch.Tensor, w_uk: torch.Tensor, w_uv: torch.Tensor, scale: float,
                 block_size: int, tt: int, vec: int, impl: str = "auto") -> torch.Tensor:
    """MLA attention of q ([B, H, Sq, Dn] / [B, H, Sq, Dr]) over each sequence's first
    seq_lens[b] cached tokens, absorbed form; -> [B, H, Sq, Dv] (no causal mask within
    the Sq queries: each sees the whole cached sequence). Raises ValueError naming the
    argument for a bad shape, dtype or device (q and w must match the cache) and (eager,
    outside CUDA graph capture: one host sync) for seq_lens outside [0, capacity] or a
    used block_table entry outside [0, num_blocks)."""
    _check_decode("paged_decode", q_nope, q_pe, cache, block_table, seq_lens, w_uk, w_uv, block_size, tt, vec,
                  impl)
    _check_table_values("paged_decode", cache, block_table, seq_lens, block_size)
    return compute_paged_decode(q_nope, q_pe, cache, block_table, seq_lens, w_uk, w_uv, scale,
                                block_size, tt, vec, impl)


def compute_paged_decode(q_nope, q_pe, cache, block_table, seq_lens, w_uk, w_uv, scale, block_size,
                         tt, vec, impl="auto") -> torch.Tensor:
    """mla.paged_decode's computation without its checks: torch ops and kernel launches
    only, so that lowering can trace it into the graph (passes/inline_launches.py)."""
    R, Dr = w_uk.shape[2], q_pe.shape[-1]
    q_lat = torch.einsum("bhqd,hdr->bhqr", q_nope, w_uk)
    backend = select_backend(q_nope.device, impl)
    if backend.name == "triton":
        # the kernel steps through a table row and through seq_lens with unit stride
        table = block_table if block_table.stride(-1) == 1 else block_table.contiguous()
        lens = seq_lens.to(torch.int32).contiguous()
        B, H, Sq, _ = q_lat.shape
        o_lat = q_lat.new_empty(B, H, Sq, R)
        backend.decode_over_latent(q_lat, q_pe, None, None, scale, False, None, False, o_lat,
                                   paged=(cache, table, lens, block_size, (tt, vec)))
    else:
        c, kr, valid = gather(cache, block_table, seq_lens, block_size, tt, vec, R, Dr)
        s = (q_lat.float() @ c.float()[:, None].transpose(-1, -2)
             + q_pe.float() @ kr.float()[:, None].transpose(-1, -2)) * scale
        s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
        o_lat = (s.softmax(-1) @ c.float()[:, None]).to(q_nope.dtype)
    # contiguous, as the fake impl's (Inductor asserts the strides): einsum's result is
    # laid out [H, B, Sq, Dv]
    return torch.einsum("bhqr,hvr->bhqv", o_lat, w_uv).contiguous()


@paged_decode.register_fake
def _(q_nope, q_pe, cache, block_table, seq_lens, w_uk, w_uv, scale, block_size, tt, vec, impl="auto"):
    _check_decode("paged_decode", q_nope, q_pe, cache, block_table, seq_lens, w_uk, w_uv, block_size, tt, vec,
                  impl)
    B, H, Sq, _ = q_nope.shape
    return q_nope.new_empty(B, H, Sq, w_uv.shape[1])


def allocate_pages(op: str, num_blocks, block_size, widths: dict, dtype, device, kernel, layout):
    """(zeroed pages [num_blocks, block_size * sum(widths)], layout) for a paged cache:
    the layout is `lowering.cache_layout`'s choice for this block size and backend (or
    the requested one, checked), as for every paged cache of the package (seed 003a)."""
    for name, v in (("num_blocks", num_blocks), ("block_size", block_size), *widths.items()):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise op_error(op, f"{name} must be a positive int, got {v!r}")
    if dtype not in KERNEL_DTYPES:
        raise op_error(op, f"dtype must be one of {KERNEL_DTYPES}, got {dtype}")
    if kernel not in KERNEL_CHOICES:
        raise op_error(op, f"kernel must be one of {KERNEL_CHOICES}, got {kernel!r}")
    device = torch.device(device)
    layout = choose_cache_layout(block_size, select_backend(device, kernel), layout)
    width = sum(widths.values())
    layout_params(layout, width, dtype)  # raises for a width the layout cannot tile
    return torch.zeros(num_blocks, block_size * width, dtype=dtype, device=device), layout


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
        data, layout = allocate_pages("PagedLatentCache.allocate", num_blocks, block_size,
                                      dict(latent_dim=latent_dim, rope_dim=rope_dim), dtype, device, kernel, layout)
        return cls(data, block_size, latent_dim, rope_dim, layout)

    @property
    def params(self) -> tuple[int, int]:
        return layout_params(self.layout, self.latent_dim + self.rope_dim, self.data.dtype)

    def _check_widths(self, op: str, **named) -> None:
        """Last dims against the cache's own widths (the ops only see their sum)."""
        want = {"latent": "latent_dim", "k_pe": "rope_dim", "q_pe": "rope_dim", "w_uk": "latent_dim",
                "w_uv": "latent_dim"}
        for name, t in named.items():
            size = getattr(self, want[name])
            if t.dim() == 0 or t.shape[-1] != size:
                raise op_error(op, f"{name} last dim must be the cache's {want[name]} = {size}, "
                                   f"got shape {tuple(t.shape)}")

    def write(self, latent: torch.Tensor, k_pe: torch.Tensor, slots: torch.Tensor) -> None:
        """cache[slots] = [latent | k_pe]: latent [T, latent_dim], k_pe [T, rope_dim],
        slots [T] int in [0, num_blocks * block_size) (see mla.cache_write's checks)."""
        self._check_widths("PagedLatentCache.write", latent=latent, k_pe=k_pe)
        torch.ops.mla.cache_write(self.data, latent, k_pe, slots, self.block_size, *self.params)

    def write_with_rope(self, latent, k_pe, q_pe, cos, sin, slots, interleaved_in: bool = False,
                        interleaved_out: bool = False, kernel: str = "auto") -> torch.Tensor:
        """Rotate q_pe and k_pe (one launch), cache [latent | rotated k_pe]; -> rotated q_pe."""
        self._check_widths("PagedLatentCache.write_with_rope", latent=latent, k_pe=k_pe, q_pe=q_pe)
        return torch.ops.mla.rope_cache_write(self.data, latent, k_pe, q_pe, cos, sin, slots, self.block_size,
                                              *self.params, interleaved_in, interleaved_out, kernel)

    def read(self, block_table: torch.Tensor, seq_lens: torch.Tensor):
        """(c_kv [B, L, R], k_pe [B, L, Dr], valid [B, L]), for checks and references.
        block_table [B, max_blocks] and seq_lens [B] are checked as by mla.paged_decode."""
        op = "PagedLatentCache.read"
        _check_table(op, block_table, seq_lens, block_table.shape[0] if block_table.dim() else 0,
                     self.data.device)
        _check_table_values(op, self.data, block_table, seq_lens, self.block_size)
        return gather(self.data, block_table, seq_lens, self.block_size, *self.params,
                      self.latent_dim, self.rope_dim)

    def attend(self, q_nope, q_pe, w_uk, w_uv, scale: float, block_table, seq_lens, kernel: str = "auto"):
        """mla.paged_decode over this cache (see its checks); q_pe [B, H, Sq, rope_dim],
        w_uk [H, Dn, latent_dim], w_uv [H, Dv, latent_dim] in the cache's dtype and device."""
        self._check_widths("PagedLatentCache.attend", q_pe=q_pe, w_uk=w_uk, w_uv=w_uv)
        return torch.ops.mla.paged_decode(q_nope, q_pe, self.data, block_table, seq_lens, w_uk, w_uv,
                                          scale, self.block_size, *self.params, kernel)

    def attend_sparse(self, q_nope, q_pe, w_uk, w_uv, scale: float, block_table, seq_lens, indices,
                      kernel: str = "auto", zero_empty_rows: bool = False, distinct: bool = False):
        """mla.paged_sparse_decode over this cache: `attend` restricted to the tokens
        `indices` [B, Sq, K] names per query (logical positions, as mla.sparse_attention
        takes them; -1 is padding), each gathered through the block table. `distinct`:
        no row repeats an index but -1 (top-k's): no sort (checked in eager)."""
        self._check_widths("PagedLatentCache.attend_sparse", q_pe=q_pe, w_uk=w_uk, w_uv=w_uv)
        return torch.ops.mla.paged_sparse_decode(q_nope, q_pe, self.data, block_table, seq_lens, w_uk, w_uv,
                                                 indices, scale, self.block_size, *self.params, kernel,
                                                 zero_empty_rows, distinct)
