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
from .checks import known_true
from .launch import is_traced, launch

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional on CPU: mla_prefill_reference runs instead
    triton = None
try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # older triton: K/V tiles always come through pointer loads
    TensorDescriptor = None

from .mask_blocks import block_strides, classify_blocks

if triton is not None:
    from .mask_blocks import K_EMPTY, K_PARTIAL

_LOG2E = 1.4426950408889634
_MASK_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def mla_prefill_reference(q_nope, q_pe, k_nope, k_pe, v, scale: float, causal: bool,
                          out: torch.Tensor | None = None, *,
                          mask: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch in fp32: concatenate q, broadcast k_pe, add the mask, softmax, matmul."""
    B, H, Sq, _ = q_nope.shape
    Sk = k_nope.shape[2]
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


# --------------------------------------------------------------------------- kernel

if triton is not None:

    LOG2E: tl.constexpr = tl.constexpr(_LOG2E)

    @triton.jit
    def _dot(a, b, acc, PREC: tl.constexpr, UPCAST: tl.constexpr):
        if UPCAST:  # interpreter only: its tl.dot multiplies bf16 bit patterns (triton 3.8)
            r = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            r = tl.dot(a, b, acc, input_precision=PREC)
        return r

    @triton.jit
    def _attend(acc, l_i, m_i, qn, qr, kn_src, kr_src, v_src, mk_src, bk_src, b32, h32,
                skn_n, skr_n, sv_n, smk_n, sbk_n, lo, hi, Sk, offs_m, offs_n, m_ok, dn_ok,
                dr_ok, dv_ok, qk_scale, BDN: tl.constexpr, BDR: tl.constexpr,
                BDV: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
                CAUSAL: tl.constexpr, MASK_D: tl.constexpr, TMA: tl.constexpr,
                POS_SCALE: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                MASK: tl.constexpr, SKIP: tl.constexpr, ROPE: tl.constexpr):
        # key blocks [lo, hi): MASKED applies the causal and the j < Sk masks.
        # K tiles come transposed ([D, BLOCK_N]) to the dots. *_src are tensor
        # descriptors (TMA: out-of-range rows and columns read as zeros) or pointer
        # tiles at key 0, moved to `lo` (the unmasked stage always starts at 0; the
        # masked one gets a run-time lo, multiplied in int64 for long sequences).
        # MASK: mk_src is the additive mask's pointer tile, always pointer loads.
        # SKIP: bk_src points at this (b, h, query tile)'s row of the mask's block
        # table (mask_blocks): an EMPTY block (all -inf) is skipped, which leaves
        # acc, l_i, m_i exactly as visiting it would (p == 0, alpha == 1, or a state
        # still all zero); a FULL block (all 0) runs without loading the mask
        if MASKED and not TMA:
            kn_src += lo.to(tl.int64) * skn_n
            kr_src += lo.to(tl.int64) * skr_n
            v_src += lo.to(tl.int64) * sv_n
        if MASKED and MASK:
            mk_src += lo.to(tl.int64) * smk_n
        for start_n in range(lo, hi, BLOCK_N):
            if SKIP:
                kind = tl.load(bk_src + (start_n // BLOCK_N) * sbk_n)
            else:
                kind = K_PARTIAL  # load the mask (or there is none): a constexpr, no branch
            if kind != K_EMPTY:
                cols = start_n + offs_n
                n_ok = cols < Sk
                if TMA:
                    kn = kn_src.load([b32, h32, start_n, 0]).reshape(BLOCK_N, BDN).T
                    kr = kr_src.load([b32, start_n, 0]).reshape(BLOCK_N, BDR).T
                    vv = v_src.load([b32, h32, start_n, 0]).reshape(BLOCK_N, BDV)
                elif MASKED and MASK_D:
                    kn = tl.load(kn_src, mask=n_ok[None, :] & dn_ok[:, None], other=0.0)
                    kr = tl.load(kr_src, mask=n_ok[None, :] & dr_ok[:, None], other=0.0)
                    vv = tl.load(v_src, mask=n_ok[:, None] & dv_ok[None, :], other=0.0)
                elif MASKED:
                    kn = tl.load(kn_src, mask=n_ok[None, :], other=0.0)
                    kr = tl.load(kr_src, mask=n_ok[None, :], other=0.0)
                    vv = tl.load(v_src, mask=n_ok[:, None], other=0.0)
                elif MASK_D:
                    kn = tl.load(kn_src, mask=dn_ok[:, None], other=0.0)
                    kr = tl.load(kr_src, mask=dr_ok[:, None], other=0.0)
                    vv = tl.load(v_src, mask=dv_ok[None, :], other=0.0)
                else:
                    kn = tl.load(kn_src)
                    kr = tl.load(kr_src)
                    vv = tl.load(v_src)
                qk = _dot(qn, kn, None, PREC, UPCAST)
                if ROPE:  # NoPE (Dr = 0): no rope dot, its (masked, unused) loads dropped
                    qk = _dot(qr, kr, qk, PREC, UPCAST)
                if MASK:
                    # additive mask: s = qk * scale + mask in fp32 as eager attention, and
                    # m_i, the row max, in the natural-log domain (qk_scale is the plain
                    # scale here): p = exp(s - m) is taken as exp2((s - m) * log2(e)), the
                    # difference formed BEFORE the log2(e) factor. finfo.min masks then stay
                    # exact: a row whose visible keys are all masked has s == finfo.min on
                    # each of them (fp32 absorbs the small qk * scale), so s - m == 0 and
                    # the softmax is uniform over them, as eager's; a masked key in a row
                    # with a larger max gets exp2(-huge or -inf) == 0, as eager's. A row
                    # with only -inf so far (a -inf mask) subtracts 0 instead of -inf:
                    # p == 0 and alpha == 0, no NaN unless the whole row is -inf (eager:
                    # NaN as well)
                    if kind == K_PARTIAL:
                        if MASKED:
                            mk = tl.load(mk_src, mask=m_ok[:, None] & n_ok[None, :], other=0.0)
                        else:
                            mk = tl.load(mk_src, mask=m_ok[:, None], other=0.0)
                        s = qk * qk_scale + mk.to(tl.float32)
                    else:  # FULL: every entry is 0 and s + 0 == s (an FMA with 0 too)
                        s = qk * qk_scale
                    if MASKED:
                        ok = n_ok[None, :]
                        if CAUSAL:
                            ok = ok & (cols[None, :] <= offs_m[:, None])
                        s = tl.where(ok, s, float("-inf"))
                    m_new = tl.maximum(m_i, tl.max(s, 1))
                    m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
                    p = tl.math.exp2((s - m_sub[:, None]) * LOG2E)
                    alpha = tl.math.exp2((m_i - m_sub) * LOG2E)
                # no mask: scores in the log2 domain. Every row sees a finite score in its
                # first visited block (key 0 or an earlier full block): m_new stays finite
                elif MASKED:
                    qk = qk * qk_scale
                    ok = n_ok[None, :]
                    if CAUSAL:
                        ok = ok & (cols[None, :] <= offs_m[:, None])
                    qk = tl.where(ok, qk, float("-inf"))
                    m_new = tl.maximum(m_i, tl.max(qk, 1))
                    p = tl.math.exp2(qk - m_new[:, None])
                    alpha = tl.math.exp2(m_i - m_new)
                else:
                    # the row max of qk * scale is (max or min of qk) * scale, exactly
                    # (rounding is monotonic); then scale and subtract are one FMA
                    if POS_SCALE:
                        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
                    else:
                        m_new = tl.maximum(m_i, tl.min(qk, 1) * qk_scale)
                    p = tl.math.exp2(qk * qk_scale - m_new[:, None])
                    alpha = tl.math.exp2(m_i - m_new)
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None]
                acc = _dot(p.to(vv.dtype), vv, acc, PREC, UPCAST)
                m_i = m_new
            if MASK:
                mk_src += BLOCK_N * smk_n
            if not TMA:
                kn_src += BLOCK_N * skn_n
                kr_src += BLOCK_N * skr_n
                v_src += BLOCK_N * sv_n
        return acc, l_i, m_i

    # Sq, Sk never specialized (a length of 1 would become a constexpr): full_end
    # must stay a run-time value for its int64 product in _attend
    @triton.jit(do_not_specialize=["Sq", "Sk"])
    def _mla_prefill_fwd(
        Qn, Qr, Kn, Kr, V, O, Mk, Bk, Sinks,
        sqn_b, sqn_h, sqn_m, sqn_d,
        sqr_b, sqr_h, sqr_m, sqr_d,
        skn_b, skn_h, skn_n, skn_d,
        skr_b, skr_n, skr_d,
        sv_b, sv_h, sv_n, sv_d,
        so_b, so_h, so_m, so_d,
        smk_b, smk_h, smk_m, smk_n,
        sbk_b, sbk_h, sbk_m, sbk_n,
        H, Sq, Sk, qk_scale,
        DN: tl.constexpr, DR: tl.constexpr, DV: tl.constexpr,
        BDN: tl.constexpr, BDR: tl.constexpr, BDV: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        CAUSAL: tl.constexpr, MASK_D: tl.constexpr, TMA: tl.constexpr,
        POS_SCALE: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
        MASK: tl.constexpr, ZERO_EMPTY: tl.constexpr, SKIP: tl.constexpr,
        ROPE: tl.constexpr, SINK: tl.constexpr,
    ):
        # heavy (late) query blocks first: the causal triangle then ends in small blocks
        # a float argument may arrive as fp64 (Inductor's launcher types Python floats so):
        # the softmax runs in fp32 whoever launches
        qk_scale = tl.cast(qk_scale, tl.float32)
        pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
        pid_bh = tl.program_id(1)
        b32 = pid_bh // H
        h32 = pid_bh % H
        b = b32.to(tl.int64)  # (b, h) bases and query rows in int64; key offsets
        h = h32.to(tl.int64)  # advance block by block
        start_m = pid_m * BLOCK_M

        offs_m = start_m + tl.arange(0, BLOCK_M)
        rows = offs_m.to(tl.int64)
        offs_n = tl.arange(0, BLOCK_N)
        offs_dn = tl.arange(0, BDN)
        offs_dr = tl.arange(0, BDR)
        offs_dv = tl.arange(0, BDV)
        dn_ok = offs_dn < DN
        dr_ok = offs_dr < DR
        dv_ok = offs_dv < DV
        m_ok = offs_m < Sq

        qn_ptrs = Qn + b * sqn_b + h * sqn_h + rows[:, None] * sqn_m + offs_dn[None, :] * sqn_d
        qr_ptrs = Qr + b * sqr_b + h * sqr_h + rows[:, None] * sqr_m + offs_dr[None, :] * sqr_d
        qn = tl.load(qn_ptrs, mask=m_ok[:, None] & dn_ok[None, :], other=0.0)
        qr = tl.load(qr_ptrs, mask=m_ok[:, None] & dr_ok[None, :], other=0.0)
        if TMA:
            kn_src = Kn
            kr_src = Kr
            v_src = V
        else:
            kn_src = Kn + b * skn_b + h * skn_h + offs_n[None, :] * skn_n + offs_dn[:, None] * skn_d
            kr_src = Kr + b * skr_b + offs_n[None, :] * skr_n + offs_dr[:, None] * skr_d
            v_src = V + b * sv_b + h * sv_h + offs_n[:, None] * sv_n + offs_dv[None, :] * sv_d
        if MASK:
            mk_src = Mk + b * smk_b + h * smk_h + rows[:, None] * smk_m + offs_n[None, :] * smk_n
        else:
            mk_src = Mk
        if SKIP:  # the block table's row of this (b, h, query tile); strides 0 if broadcast
            bk_src = Bk + b * sbk_b + h * sbk_h + pid_m.to(tl.int64) * sbk_m
        else:
            bk_src = Bk

        if SINK:  # the head's sink logit as a key already seen, with no value: m = sink,
            # l = exp(0) = 1, in the scores' domain (log2 without a mask: qk_scale has log2(e))
            sink = tl.load(Sinks + h).to(tl.float32)
            if not MASK:
                sink = sink * LOG2E
            m_i = tl.full([BLOCK_M], 0.0, tl.float32) + sink
            l_i = tl.full([BLOCK_M], 1.0, tl.float32)
        else:
            m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BDV], tl.float32)

        if CAUSAL:
            # keys < full_end are visible to every row of the block and inside Sk
            hi = tl.minimum(start_m + BLOCK_M, Sk)
            full_end = (tl.minimum(start_m + 1, Sk) // BLOCK_N) * BLOCK_N
        else:
            hi = Sk
            full_end = (Sk // BLOCK_N) * BLOCK_N
        acc, l_i, m_i = _attend(
            acc, l_i, m_i, qn, qr, kn_src, kr_src, v_src, mk_src, bk_src, b32, h32,
            skn_n, skr_n, sv_n, smk_n, sbk_n, 0, full_end, Sk, offs_m, offs_n, m_ok,
            dn_ok, dr_ok, dv_ok, qk_scale, BDN, BDR, BDV, BLOCK_N,
            False, CAUSAL, MASK_D, TMA, POS_SCALE, PREC, UPCAST, MASK, SKIP, ROPE)
        acc, l_i, m_i = _attend(
            acc, l_i, m_i, qn, qr, kn_src, kr_src, v_src, mk_src, bk_src, b32, h32,
            skn_n, skr_n, sv_n, smk_n, sbk_n, full_end, hi, Sk, offs_m, offs_n, m_ok,
            dn_ok, dr_ok, dv_ok, qk_scale, BDN, BDR, BDV, BLOCK_N,
            True, CAUSAL, MASK_D, TMA, POS_SCALE, PREC, UPCAST, MASK, SKIP, ROPE)

        if ZERO_EMPTY:  # SDPA's safe softmax: a row with no visible key (all -inf) is 0
            out = tl.where(l_i[:, None] > 0, acc / l_i[:, None], 0.0)
        else:
            out = acc / l_i[:, None]
        o_ptrs = O + b * so_b + h * so_h + rows[:, None] * so_m + offs_dv[None, :] * so_d
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=m_ok[:, None] & dv_ok[None, :])


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
    if TensorDescriptor is None or max(dims) > 256:
        return False
    for t in ts:
        el = t.element_size()
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any(s * el % 16 for s in t.stride()[:-1]):
            return False
    return True


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
                          sinks: torch.Tensor | None = None) -> torch.Tensor:
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
    if out is None:
        out = torch.empty(B, H, Sq, Dv, device=q_nope.device, dtype=q_nope.dtype)
    elif out.shape != (B, H, Sq, Dv) or out.dtype != q_nope.dtype:
        raise ValueError("mla_prefill_attention: out must be [B, H, Sq, Dv] of q's dtype")
    if known_true(out.numel() == 0):
        return out
    if known_true(Sk == 0):  # softmax over no keys (or only the sink): zeros
        return out.zero_()

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
    skip = mask is not None and block_skip
    # the mask's block table, on device, for the kernel's own tiles (mask_blocks)
    table = classify_blocks(mask, Sq, Sk, bm, bn) if skip else None
    grid = (triton.cdiv(Sq, bm), B * H)
    launch(
        _mla_prefill_fwd, grid, q_nope, q_pe, kn_src, kr_src, v_src, out, q_nope if mask is None else mask,
        q_nope if table is None else table, q_nope if sinks is None else sinks,
        *q_nope.stride(), *q_pe.stride(), *k_nope.stride(), *k_pe.stride(),
        *v.stride(), *out.stride(), *mask_strides,
        *(block_strides(table) if skip else (0, 0, 0, 0)),
        # the mask path keeps its scores in the natural-log domain (see _attend)
        H, Sq, Sk, float(scale) * (_LOG2E if mask is None else 1.0),
        DN=Dn, DR=Dr, DV=Dv, BDN=bdn, BDR=bdr, BDV=bdv,
        BLOCK_M=bm, BLOCK_N=bn, CAUSAL=bool(causal),
        MASK_D=(bdn, bdr, bdv) != (Dn, Dr, Dv), TMA=bool(tma), POS_SCALE=float(scale) >= 0,
        PREC="ieee" if q_nope.dtype == torch.float32 else "tf32",
        UPCAST=_interpreting() and q_nope.dtype == torch.bfloat16, MASK=mask is not None,
        ZERO_EMPTY=bool(zero_empty_rows), SKIP=skip, ROPE=Dr > 0, SINK=sinks is not None,
        num_warps=nw, num_stages=ns,
    )
    return out


__all__ = ["mla_prefill_attention", "mla_prefill_reference", "default_config"]
