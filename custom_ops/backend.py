"""The one interface every kernel backend implements (seed 004).

A backend is a class, never an instance: what lowering needs to know about it
(which devices it serves, later its head padding and cache layout) lives in class
variables and classmethods. Adding a platform means adding one subclass.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch


KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # what every kernel takes


class KernelBackend(ABC):
    name: ClassVar[str]
    # values of lowering.cache_layout.CacheLayout this backend reads (it picks one)
    cache_layouts: ClassVar[tuple] = ("normal",)

    @classmethod
    @abstractmethod
    def supports(cls, device: torch.device) -> bool:
        """Whether this backend can run kernels on tensors of `device`."""

    @classmethod
    @abstractmethod
    def rope(
        cls,
        xs: list[torch.Tensor],
        cos: torch.Tensor,
        sin: torch.Tensor,
        interleaved_in: bool,
        interleaved_out: bool,
        outs: list[torch.Tensor],
    ) -> None:
        """Rotate every x of `xs` into the matching preallocated `outs[i]`.

        Semantics are those of `reference.rope_reference`; inputs were validated
        by the op, and cos/sin broadcast against each x's leading dims.
        """

    @classmethod
    @abstractmethod
    def prefill_attention(
        cls,
        q_nope: torch.Tensor,
        q_pe: torch.Tensor,
        c_kv: torch.Tensor,
        k_pe: torch.Tensor,
        w_uk: torch.Tensor,
        w_uv: torch.Tensor,
        scale: float,
        causal: bool,
        form: str,
        mask: torch.Tensor | None,
        zero_empty_rows: bool,
        out: torch.Tensor,
        sinks: torch.Tensor | None = None,
        empty_row_fill: float | None = None,
    ) -> None:
        """MLA attention over the latent `c_kv` into the preallocated `out`
        (`mask`: optional additive mask broadcasting to [B, H, Sq, Sk];
        `zero_empty_rows`: a row with every score -inf gives 0, not NaN;
        `sinks`: optional [H] logits in every row's softmax denominator;
        `empty_row_fill`: with causal and a key-only mask ([.., 1, Sk]), a row with
        no visible key unmasked (every mask value at j <= i equal to it) attends
        every key, those above the diagonal at this fill).

        Semantics are those of `reference.prefill_attention_reference`; `form` is
        how to compute it ("decompressed" or "absorbed"), not what. Inputs were
        validated by the op.
        """

    @classmethod
    @abstractmethod
    def latent_attention(
        cls,
        q_lat: torch.Tensor,
        q_pe: torch.Tensor,
        c_kv: torch.Tensor,
        k_pe: torch.Tensor,
        scale: float,
        causal: bool,
        mask: torch.Tensor | None,
        zero_empty_rows: bool,
        out: torch.Tensor,
        sinks: torch.Tensor | None = None,
    ) -> None:
        """Attention over the latent itself into the preallocated `out` [B, H, Sq, R]:
        semantics of `reference.latent_attention_reference`; inputs were validated."""

    @classmethod
    @abstractmethod
    def rope_cache_write(cls, q_pe, k_pe, latent, cos, sin, slots, cache, block_size, tt, vec,
                         interleaved_in, interleaved_out, q_out, rope_first=False) -> None:
        """q_out = RoPE(q_pe) (a new tensor: q_pe is only read) and
        cache[slots] = [latent | RoPE(k_pe)] in the page layout (tt, vec) of
        `lowering.cache_layout`, or [RoPE(k_pe) | latent] with `rope_first` (the DSA
        indexer's key, `latent` its unrotated rest): semantics of
        `reference.rope_cache_write_reference`. Inputs were validated by the op (slots
        in range, in eager)."""

    @classmethod
    @abstractmethod
    def sparse_attention(
        cls,
        q_nope: torch.Tensor,
        q_pe: torch.Tensor,
        c_kv: torch.Tensor,
        k_pe: torch.Tensor,
        w_uk: torch.Tensor,
        w_uv: torch.Tensor,
        indices: torch.Tensor,
        scale: float,
        mask: torch.Tensor | None,
        zero_empty_rows: bool,
        out: torch.Tensor,
        distinct: bool = False,
        sinks: torch.Tensor | None = None,
    ) -> None:
        """MLA attention over the keys `indices` [B, Sq, K] chooses per query row, into
        the preallocated `out` [B, H, Sq, Dv]: semantics of
        `reference.sparse_attention_reference`; inputs were validated. `distinct`: no
        row repeats an index (the caller proved it; a kernel may skip deduplicating).
        `sinks`: optional [H] logits in every row's softmax denominator."""
