"""Triton backend: the ops' Triton kernels (CUDA, or CPU tensors under TRITON_INTERPRET=1).

The kernels live in their own modules (`triton_rope`, `triton_prefill`); this class
only routes each op to its kernel, plus the PyTorch glue around it.
"""
from __future__ import annotations

import os
from typing import ClassVar

import torch

from ..compat import same_storage, size_hint
from ..lowering.attention_form import choose_attention_form
from ..lowering.sparse_form import gather_chosen_keys
from .backend import KernelBackend
from .reference import empty_rows_mask, selection_mask
from .triton_decode import key_count, mla_decode_attention, split_rows_per_program
from .triton_decode_wide import mla_decode_attention_wide, wide_rows_per_program
from .triton_decode_wide import supports as wide_supports
from .triton_prefill import mla_prefill_attention
from .triton_rope import rope_triton
from .triton_rope_cache import rope_cache_write_triton
from .triton_sparse import mla_sparse_attention

try:
    import triton
except ImportError:  # Triton is optional on CPU: the reference runs instead
    triton = None


def decompress(c_kv: torch.Tensor, w_uk: torch.Tensor, w_uv: torch.Tensor):
    """k_nope [B, H, Sk, Dn] and v [B, H, Sk, Dv] in the input dtype, as [B, H, Sk, D]
    views of [B, Sk, H, D] GEMM results (the kernel takes any strides). When w_uk and
    w_uv are the two windows of one row-major [H, Dn + Dv, R] weight (kv_b_proj's, as
    the pass passes them), that is one GEMM with the whole weight, as the model's."""
    B, Sk, R = c_kv.shape
    H, Dn, _ = w_uk.shape
    Dv = w_uv.shape[1]
    D = Dn + Dv
    adjacent = (w_uk.stride() == w_uv.stride() == (D * R, R, 1) and same_storage(w_uk, w_uv)
                and w_uv.storage_offset() == w_uk.storage_offset() + Dn * R)
    if adjacent:
        weight = w_uk.as_strided((H * D, R), (R, 1))
        kv = torch.matmul(c_kv, weight.t()).view(B, Sk, H, D).transpose(1, 2)
        return kv[..., :Dn], kv[..., Dn:]
    return torch.einsum("bsr,hdr->bhsd", c_kv, w_uk), torch.einsum("bsr,hdr->bhsd", c_kv, w_uv)


class TritonBackend(KernelBackend):
    name: ClassVar[str] = "triton"
    cache_layouts: ClassVar[tuple] = ("normal", "shuffle")  # NORMAL: faster reads (H200)

    @classmethod
    def supports(cls, device: torch.device) -> bool:
        if triton is None:
            return False
        if device.type == "cuda":
            return True
        return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"

    @classmethod
    def decode_rows_per_program(cls, rows: int, on_gpu: bool, batch: int = 1, wide: bool = False,
                                itemsize: int = 2) -> int:
        """Query rows ((position, head) pairs) one decode program computes, for the split
        kernel (`triton_decode.split_rows_per_program`) or the wide one
        (`triton_decode_wide.wide_rows_per_program`): the one source of the head padding
        (seed 002). The kernels mask the rows past `rows` on load and store, and no
        buffer is sized from the padded count, so padded rows never reach the output."""
        if wide:
            return wide_rows_per_program(rows, on_gpu)
        return split_rows_per_program(rows, on_gpu, batch, itemsize)

    @classmethod
    def decode_is_wide(cls, q_lat: torch.Tensor, q_pe: torch.Tensor, keys: int) -> bool:
        """The wide kernel (each latent tile read once per 64 rows) from 512 (query, head)
        rows or 8192 keys on a GPU, else the split kernel. H200 (benchmarks/RESULTS.md,
        issue 12): at >= 512 rows wide is 1.06-1.45x faster (B >= 4, H 16-128); at batch
        1 it is 1.05-1.55x faster from 8192 keys (H 16-128) and 0.71-0.87x at 4096,
        where the split kernel's smaller programs win. 16-bit inputs only: its 64-row
        program does not fit shared memory in fp32. `keys`: the keys a row reads (the
        cache's capacity for a paged one), a size hint (no guard)."""
        B, H, Sq, _ = q_lat.shape
        on_gpu = q_lat.device.type == "cuda" and os.environ.get("TRITON_INTERPRET") != "1"
        return (on_gpu and wide_supports(q_lat, q_pe) and q_lat.element_size() == 2
                and (size_hint(B * H * Sq) >= 512 or size_hint(keys) >= 8192))

    @classmethod
    def decode_over_latent(cls, q_lat, q_pe, c_kv, k_pe, scale, causal, mask, zero_empty_rows, out,
                           paged=None, sinks=None) -> None:
        """The absorbed attention over the latent (or a paged cache): the kernel and its
        rows per program chosen here."""
        wide = cls.decode_is_wide(q_lat, q_pe, key_count(c_kv, paged))
        on_gpu = q_lat.device.type == "cuda" and os.environ.get("TRITON_INTERPRET") != "1"
        B, H, Sq, _ = q_lat.shape
        block_h = cls.decode_rows_per_program(size_hint(Sq * H), on_gpu, size_hint(B), wide=wide,
                                              itemsize=q_lat.element_size())
        run = mla_decode_attention_wide if wide else mla_decode_attention
        run(q_lat, q_pe, c_kv, k_pe, scale, causal, mask=mask, zero_empty_rows=zero_empty_rows,
            paged=paged, out=out, block_h=block_h, sinks=sinks)

    @classmethod
    def rope(cls, xs, cos, sin, interleaved_in, interleaved_out, outs) -> None:
        rope_triton(xs, cos, sin, interleaved_in, interleaved_out, outs)

    @classmethod
    def rope_cache_write(cls, q_pe, k_pe, latent, cos, sin, slots, cache, block_size, tt, vec,
                         interleaved_in, interleaved_out, q_out, rope_first=False) -> None:
        rope_cache_write_triton(q_pe, k_pe, latent, cos, sin, slots, cache, block_size, tt, vec,
                                interleaved_in, interleaved_out, q_out, rope_first)

    @classmethod
    def prefill_attention(cls, q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, scale, causal, form,
                          mask, zero_empty_rows, out, sinks=None, empty_row_fill=None) -> None:
        if form == "absorbed" and empty_row_fill is not None:
            # short queries (absorbed is chosen only for Sq < Sk): the rule as one
            # [.., Sq, Sk] mask, exactly the reference's
            mask, causal = empty_rows_mask(mask, empty_row_fill, q_nope.shape[2], c_kv.shape[1]), False
            empty_row_fill = None
        if form == "absorbed":  # q into latent space, attend over the latent, then w_uv
            q_lat = torch.einsum("bhqd,hdr->bhqr", q_nope, w_uk)
            o_lat = torch.empty_like(q_lat)
            cls.latent_attention(q_lat, q_pe, c_kv, k_pe, scale, causal, mask, zero_empty_rows, o_lat, sinks)
            out.copy_(torch.einsum("bhqr,hvr->bhqv", o_lat, w_uv))
            return
        k_nope, v = decompress(c_kv, w_uk, w_uv)
        mla_prefill_attention(q_nope, q_pe, k_nope, k_pe, v, scale, causal, mask=mask,
                              zero_empty_rows=zero_empty_rows, out=out, sinks=sinks,
                              empty_row_fill=empty_row_fill)

    @classmethod
    def latent_attention(cls, q_lat, q_pe, c_kv, k_pe, scale, causal, mask, zero_empty_rows, out,
                         sinks=None) -> None:
        cls.decode_over_latent(q_lat, q_pe, c_kv, k_pe, scale, causal, mask, zero_empty_rows, out, sinks=sinks)

    @classmethod
    def sparse_attention(cls, q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, indices, scale, mask, zero_empty_rows,
                         out, distinct=False, sinks=None) -> None:
        """Gathering (`lowering.sparse_form` decides): over the latent (absorbed), a
        query reads only its K chosen latent rows (decompressing would expand all Sk
        keys through kv_b_proj first). Else dense attention under the selection mask,
        in the form `lowering.attention_form` picks: the same function."""
        B, H, Sq, Dn = q_nope.shape
        Sk, R = c_kv.shape[1], c_kv.shape[2]
        on_gpu = q_nope.device.type == "cuda"
        if not gather_chosen_keys(B, Sq, Sk, H, indices.shape[-1], on_gpu, distinct):
            form = choose_attention_form(Sq, Sk, H, Dn, q_pe.shape[-1], w_uv.shape[1], R)
            sel = selection_mask(indices, mask, Sk).to(q_nope.dtype if mask is None else mask.dtype)  # exact:
            # its values are the base mask's and -inf
            cls.prefill_attention(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, scale, False, form, sel,
                                  zero_empty_rows, out, sinks)
            return
        q_lat = torch.einsum("bhqd,hdr->bhqr", q_nope, w_uk)
        o_lat = torch.empty_like(q_lat)
        mla_sparse_attention(q_lat, q_pe, c_kv, k_pe, indices, scale, mask=mask, zero_empty_rows=zero_empty_rows,
                             out=o_lat, distinct=distinct, sinks=sinks)
        out.copy_(torch.einsum("bhqr,hvr->bhqv", o_lat, w_uv))

    @classmethod
    def paged_sparse_over_latent(cls, q_lat, q_pe, paged, indices, scale, zero_empty_rows, out,
                                 distinct=False) -> None:
        """mla.paged_sparse_decode's kernel: the gather above over a paged cache,
        `paged=(cache, block_table, seq_lens int32, block_size, (tt, vec))`, into `out`
        [B, H, Sq, R]; -1 indices are padding (repeated even when `distinct`)."""
        mla_sparse_attention(q_lat, q_pe, None, None, indices, scale, zero_empty_rows=zero_empty_rows, out=out,
                             paged=paged, distinct=distinct)
