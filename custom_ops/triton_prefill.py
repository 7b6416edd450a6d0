"""MLA prefill attention (decompressed form): a Triton flash-attention forward.

Per head h the query is [q_nope | q_pe] and the key [k_nope | k_pe], where k_pe is
one tensor shared by every head. The kernel never builds either concatenation nor
the per-head copies of k_pe: the scores are two dots into one fp32 accumulator,

    s = (q_nope @ k_nope^T + q_pe @ k_pe^T) * scale

followed by an online softmax (exp2, log2(e) folded into the scale) and p @ v, with
fp32 accumulation. `scale` is used exactly as given (DeepSeek's yarn mscale makes it
differ from Dqk**-0.5).

Attention sinks (optional, one logit per head): the sink joins each row's softmax
denominator and has no value; the online softmax starts from it (m = sink, l = 1).

Causal masking is TOP-LEFT aligned, the convention of
`F.scaled_dot_product_attention(is_causal=True)`: query i attends keys j <= i whatever
Sq and Sk are (not the bottom-right alignment of decode-with-prefix). Each program
walks its key blocks in two stages: the blocks entirely at or below the diagonal
(and inside Sk) with no mask at all, then the few blocks that cross the diagonal or
the ragged end of Sk with the causal and bounds masks. Key blocks wholly above the
diagonal are never visited.

An optional additive float `mask` (fp32, bf16 or fp16, broadcastable to
[B, H, Sq, Sk], any strides: stride 0 over broadcast dims) follows transformers' eager
attention, s = (q k^T) * scale + mask in fp32, then softmax; `causal` may be combined
with it (both apply). With a mask, a pre-pass (mask_blocks.classify_blocks, one read of
the mask) classifies every (query tile, key tile) block: all -inf blocks are skipped,
all-zero blocks run without loading the mask, the others load their mask tile; the
online softmax runs in the natural-log domain (see _attend). Without one (MASK is a
constexpr) the kernel is the mask-less one above.

Shapes: q_nope [B, H, Sq, Dn], q_pe [B, H, Sq, Dr], k_nope [B, H, Sk, Dn],
k_pe [B, Sk, Dr], v [B, H, Sk, Dv] -> out [B, H, Sq, Dv]. Any strides (inputs are
usually transposed views of [B, S, H, D] projections); head dims need not be powers
of two (padded to one in registers, masked on load and store). Dr may be 0 (NoPE MLA):
the rope dot is then compiled out.
"""
from __future__ import annotations

import os

import torch

from ..compat import size_hint
from .checks import check_empty_row_fill, known_true
from .launch import is_traced, launch, sinks_pointer, tma_aligned

try:
    import triton
except ImportError:  # Triton is optional on CPU: mla_prefill_reference runs instead
    triton = None
try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # older triton: K/V tiles always come through pointer loads
    TensorDescriptor = None

from . import gluon_prefill
from .mask_blocks import block_strides, classify_blocks
from .reference import empty_rows_mask

if triton is not None:
    from .triton_prefill_kernel import _mla_prefill_fwd

_LOG2E = 1.4426950408889634  # the kernel's scores are in the log2 domain without a mask
_MASK_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def mla_prefill_reference(q_nope, q_pe, k_nope, k_pe, v, scale: float, causal: bool,
                          out: torch.Tensor | None = None, *,
                          mask: torch.Tensor | None = None,
                          empty_row_fill: float | None = None) -> torch.Tensor:
    """Plain PyTorch in fp32: concatenate q, broadcast k_pe, add the mask, softmax, matmul
    (`empty_row_fill`: the rule of `reference.empty_rows_mask`, as one mask)."""
    B, H, Sq, _ = q_nope.shape
    Sk = k_nope.shape[2]
    if empty_row_fill is not None:
        mask, causal = empty_rows_mask(mask, empty_row_fill, Sq, Sk), False
    q = torch.cat([q_nope, q_pe], dim=-1).float()
    k = torch.cat([k_nope, k_pe[:, None].expand(B, H, Sk, k_pe.shape[-1])], dim=-1).float()
    s = (q @ k.transpose(-1, -2)) * scale
    if mask is not None:  # eager attention: additive, upcast to fp32
        s = s + mask.float()
    if causal:  # top-left aligned, as SDPA's is_causal: key j visible to query i iff j <= i
        keep = torch.ones(Sq, Sk, dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~keep, float("-inf"))
    res = (torch.softmax(s, dim=-1) @ v.float()).to(q_nope.dtype)
    if out is None:
        return res
    out.copy_(res)
    return out


def first_unmasked_keys(mask: torch.Tensor, fill: float, kv_len) -> torch.Tensor:
    """int32 [Bm, Hm]: per (batch, head) of a key-only mask [.., 1, Sk], the first key
    whose value is not `fill` (in fp32, as `reference.empty_rows_mask` compares), or
    Sk when there is none. Query row i has no visible unmasked key iff i < it. One
    read of the [Bm, Hm, Sk] key vector, torch ops only (traceable)."""
    m = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape)) if mask.dim() < 4 else mask
    keys = m[:, :, 0, :].expand(m.shape[0], m.shape[1], kv_len)
    idx = torch.arange(kv_len, device=mask.device, dtype=torch.int32)
    at = torch.where(keys.float() != fill, idx, torch.full_like(idx, kv_len))
    return at.amin(-1).to(torch.int32)


# the kernel: triton_prefill_kernel.py

# ------------------------------------------------------------------------ host side

def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _pad(d: int) -> int:
    return max(16, triton.next_power_of_2(d))  # tl.dot needs every dim >= 16


def default_config(dn: int, dr: int, dv: int, dtype: torch.dtype, sq: int,
                   on_gpu: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) from the head dims and dtype.

    Fixed choices, no autotuning (CI runs the interpreter): 128 x 64 tiles with 8
    warps and 3 stages for 16-bit inputs up to Dqk = 256 (DeepSeek's 192/128 keeps
    Q, 3 stages of K/V and the fp32 accumulator within Hopper's shared memory and
    registers); half the tiles for fp32 or larger heads; 16 x 16 tiles under the
    interpreter, where every program costs host time.
    """
    if not on_gpu:
        return 16, 16, 1, 1
    dqk, dvp = _pad(dn) + _pad(dr), _pad(dv)
    if dtype == torch.float32 or dqk > 256 or dvp > 256:
        return 64, 32, 4, 2
    block_m = 128 if sq > 64 else 64
    return block_m, 64, 8, 3


def _tma_ok(ts, dims) -> bool:
    """Whether K/V tiles can come through TMA descriptors: unit last stride, 16-byte
    aligned base and other strides, box dims <= 256."""
    return TensorDescriptor is not None and max(dims) <= 256 and all(tma_aligned(t) for t in ts)


def _use_tma(ts, dims, on_gpu: bool) -> bool:
    # Hopper and later, 16-bit inputs, long key loops: faster than pointer loads at
    # S >= 4096 (H200); at S = 1024 building the descriptors costs more than it saves
    return (on_gpu and ts[0].dtype != torch.float32 and ts[0].shape[2] >= 2048 and ts[1].shape[-1] > 0
            and _tma_ok(ts, dims) and torch.cuda.get_device_capability(ts[0].device)[0] >= 9)


def mla_prefill_attention(q_nope, q_pe, k_nope, k_pe, v, scale: float, causal: bool, *,
                          out: torch.Tensor | None = None, block_m: int | None = None,
                          block_n: int | None = None, num_warps: int | None = None,
                          num_stages: int | None = None, tma: bool | None = None,
                          mask: torch.Tensor | None = None,
                          zero_empty_rows: bool = False,
                          block_skip: bool = False,
                          sinks: torch.Tensor | None = None,
                          empty_row_fill: float | None = None,
                          gluon: bool | None = None) -> torch.Tensor:
    """softmax((q_nope k_nope^T + q_pe k_pe^T) * scale + mask) @ v, per head, by the
    Triton kernel (`zero_empty_rows`: a row whose scores are all -inf gives 0, as
    SDPA's safe softmax, instead of NaN).

    Same semantics as `mla_prefill_reference` (causal is top-left aligned). `mask`, if
    given, is an additive float mask (fp32, bf16 or fp16) broadcastable to
    [B, H, Sq, Sk] (e.g. [B or 1, 1 or H, Sq, Sk], any strides), added in fp32 to the
    scaled scores as in transformers' eager attention (0: visible, finfo.min: masked; a
    row masked everywhere gets eager's uniform softmax); `causal` still applies on top
    of it. `out`, if
    given, is written in place (any strides, e.g. a transposed [B, Sq, H, Dv] buffer);
    otherwise a contiguous [B, H, Sq, Dv] tensor of q_nope's dtype is returned. The
    keyword-only config arguments override `default_config` (tests, benchmarks);
    `tma` forces K/V loads through tensor descriptors (True) or pointers (False);
    default: descriptors on Hopper+ for 16-bit inputs with Sk >= 2048 whose layout
    allows them (unit last stride, 16-byte aligned), pointer loads otherwise.
    `block_skip` (default off): classify the mask's blocks first and skip the all -inf
    ones, and load no mask for the all-zero ones (bit-exact). `sinks` ([H], optional):
    a logit per head in every row's softmax denominator (attention sinks). Off by default: on the
    H200 the per-block branch cost more than it saved (1.3-2.6x the time of the plain
    masked loop; benchmarks/RESULTS.md, issue 16), so every block loads its mask tile.
    `empty_row_fill` (needs causal and a key-only mask [.., 1, Sk]): the op's rule for
    rows with no visible unmasked key (`reference.empty_rows_mask`): such rows attend
    every key, those above the diagonal at this fill. Only the query tiles whose first
    row is empty walk past the diagonal (`first_unmasked_keys`); block_skip is then
    off (an all -inf mask block above the diagonal still holds fill scores).
    `gluon`: the warp-specialised Gluon program (gluon_prefill.py) where
    `gluon_prefill.applies` (True: required, else ValueError; False: never; None: by
    `gluon_prefill.DEFAULT_ON` when no config argument is given); a traced launch (a
    compiled graph's) calls `mla.prefill_gluon` where `gluon_prefill.traced_route` says so.
    """
    if triton is None:
        raise RuntimeError("mla_prefill_attention needs triton; use mla_prefill_reference")
    B, H, Sq, Dn = q_nope.shape
    Dr = q_pe.shape[-1]
    Sk = k_nope.shape[2]
    Dv = v.shape[-1]
    if (q_pe.shape != (B, H, Sq, Dr) or k_nope.shape != (B, H, Sk, Dn)
            or k_pe.shape != (B, Sk, Dr) or v.shape != (B, H, Sk, Dv)):
        raise ValueError(
            "mla_prefill_attention: expected q_nope [B,H,Sq,Dn], q_pe [B,H,Sq,Dr], "
            f"k_nope [B,H,Sk,Dn], k_pe [B,Sk,Dr], v [B,H,Sk,Dv]; got {tuple(q_nope.shape)}, "
            f"{tuple(q_pe.shape)}, {tuple(k_nope.shape)}, {tuple(k_pe.shape)}, {tuple(v.shape)}")
    ts = (q_nope, q_pe, k_nope, k_pe, v)
    if any(t.dtype != q_nope.dtype for t in ts) or q_nope.dtype not in (
            torch.float16, torch.bfloat16, torch.float32):
        raise ValueError("mla_prefill_attention: inputs must share one of fp16, bf16, fp32")
    if any(t.device != q_nope.device for t in ts):
        raise ValueError("mla_prefill_attention: inputs must be on one device")
    mask_strides = (0, 0, 0, 0)
    if mask is not None:
        if mask.dtype not in _MASK_DTYPES:
            raise ValueError("mla_prefill_attention: mask must be fp32, bf16 or fp16 "
                             f"(additive), got {mask.dtype}")
        if mask.device != q_nope.device:
            raise ValueError("mla_prefill_attention: mask must be on the inputs' device")
        try:
            ok = torch.broadcast_shapes(mask.shape, (B, H, Sq, Sk)) == (B, H, Sq, Sk)
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"mla_prefill_attention: mask {tuple(mask.shape)} does not "
                             f"broadcast to [B, H, Sq, Sk] = {(B, H, Sq, Sk)}")
        mask_strides = mask.expand(B, H, Sq, Sk).stride()  # 0 over broadcast dims
    check_empty_row_fill("prefill_attention", empty_row_fill, causal, mask)
    pad_rows = empty_row_fill is not None
    if out is None:
        out = torch.empty(B, H, Sq, Dv, device=q_nope.device, dtype=q_nope.dtype)
    elif out.shape != (B, H, Sq, Dv) or out.dtype != q_nope.dtype:
        raise ValueError("mla_prefill_attention: out must be [B, H, Sq, Dv] of q's dtype")
    if known_true(out.numel() == 0):
        return out
    if known_true(Sk == 0):  # softmax over no keys (or only the sink): zeros
        return out.zero_()
    config_given = any(x is not None for x in (block_m, block_n, num_warps, num_stages, tma))

    if gluon is not False and not config_given and gluon_prefill.traced_route(
            q_nope, q_pe, k_nope, k_pe, v, interpreting=_interpreting(), mask=mask, sinks=sinks):
        # a compiled graph's launch: Inductor cannot launch Gluon, so one op call (gluon_op.py)
        return out.copy_(torch.ops.mla.prefill_gluon(q_nope, q_pe, k_nope, k_pe, v, float(scale), bool(causal)))
    if gluon or (gluon is None and gluon_prefill.DEFAULT_ON and not config_given):
        if gluon_prefill.applies(q_nope, q_pe, k_nope, k_pe, v, interpreting=_interpreting(), mask=mask, sinks=sinks):
            return gluon_prefill.gluon_prefill_attention(q_nope, q_pe, k_nope, k_pe, v, scale, causal, out)
        if gluon:
            raise ValueError("mla_prefill_attention(gluon=True): the Gluon program does not apply here")
    on_gpu = q_nope.device.type == "cuda" and not _interpreting()
    cfg = default_config(Dn, Dr, Dv, q_nope.dtype, size_hint(Sq), on_gpu)  # speed only: no guard
    bm = block_m or cfg[0]
    bn = block_n or cfg[1]
    nw = num_warps or cfg[2]
    ns = num_stages or cfg[3]
    if on_gpu and mask is not None and mask.element_size() > q_nope.element_size():
        ns = num_stages or min(ns, 2)  # an fp32 mask tile per stage beside 16-bit K/V: 3 overflow (H200)
    bdn, bdr, bdv = _pad(Dn), _pad(Dr), _pad(Dv)
    if tma is None:  # a traced launch has no data pointer to check the alignment of
        tma = not is_traced(k_nope) and _use_tma((k_nope, k_pe, v), (bn, bdn, bdr, bdv), on_gpu)
    elif tma and (Dr == 0 or not _tma_ok((k_nope, k_pe, v), (bn, bdn, bdr, bdv))):
        raise ValueError("mla_prefill_attention: tma=True needs triton's TensorDescriptor, "
                         "unit last strides and 16-byte aligned K/V")
    kn_src, kr_src, v_src = k_nope, k_pe, v
    if tma:  # zero padding: rows past Sk and columns past D read as 0
        def desc(t, block):
            return TensorDescriptor(t, list(t.shape), list(t.stride()), block)
        kn_src = desc(k_nope, [1, 1, bn, bdn])
        kr_src = desc(k_pe, [1, bn, bdr])
        v_src = desc(v, [1, 1, bn, bdv])
    skip = mask is not None and block_skip and not pad_rows
    # per (b, h) of the mask: its first key not at the fill; rows before it are empty
    fv = first_unmasked_keys(mask, empty_row_fill, Sk) if pad_rows else None
    # the mask's block table, on device, for the kernel's own tiles (mask_blocks)
    table = classify_blocks(mask, Sq, Sk, bm, bn) if skip else None
    grid = (triton.cdiv(Sq, bm), B * H)
    launch(
        _mla_prefill_fwd, grid, q_nope, q_pe, kn_src, kr_src, v_src, out, q_nope if mask is None else mask,
        q_nope if table is None else table, sinks_pointer(sinks, q_nope), q_nope if fv is None else fv,
        *q_nope.stride(), *q_pe.stride(), *k_nope.stride(), *k_pe.stride(),
        *v.stride(), *out.stride(), *mask_strides,
        *(block_strides(table) if skip else (0, 0, 0, 0)),
        *((0 if fv.shape[0] == 1 else fv.stride(0), 0 if fv.shape[1] == 1 else fv.stride(1)) if pad_rows
          else (0, 0)),
        # the mask path keeps its scores in the natural-log domain (see _attend)
        H, Sq, Sk, float(scale) * (_LOG2E if mask is None else 1.0),
        float(empty_row_fill) if pad_rows else 0.0,
        DN=Dn, DR=Dr, DV=Dv, BDN=bdn, BDR=bdr, BDV=bdv,
        BLOCK_M=bm, BLOCK_N=bn, CAUSAL=bool(causal),
        MASK_D=(bdn, bdr, bdv) != (Dn, Dr, Dv), TMA=bool(tma), POS_SCALE=float(scale) >= 0,
        PREC="ieee" if q_nope.dtype == torch.float32 else "tf32",
        UPCAST=_interpreting() and q_nope.dtype == torch.bfloat16, MASK=mask is not None,
        ZERO_EMPTY=bool(zero_empty_rows), SKIP=skip, ROPE=Dr > 0, SINK=sinks is not None, PAD_ROWS=pad_rows,
        num_warps=nw, num_stages=ns,
    )
    return out


__all__ = ["mla_prefill_attention", "mla_prefill_reference", "default_config", "first_unmasked_keys"]
