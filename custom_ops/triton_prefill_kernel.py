"""The MLA prefill attention kernel (Triton): `_mla_prefill_fwd` and its key-block loop.

Launched by `triton_prefill.mla_prefill_attention`, which states the semantics, checks
the arguments and chooses tiles. Per program: one query tile of one (batch, head); the
scores are two dots (nope, rope) into one fp32 accumulator, an online softmax (exp2,
log2(e) folded into the scale), and p @ v with fp32 accumulation. Causal programs walk
the key blocks fully below the diagonal without masks, then the few that cross it (or
the ragged end of Sk) with the causal and bounds masks; blocks above it are never
visited. With an additive mask the softmax runs in the natural-log domain (`_attend`),
and with a block table (mask_blocks) empty blocks are skipped and full ones run without
loading the mask. With PAD_ROWS (the op's empty_row_fill, a key-only mask) a query
tile whose first row has no visible unmasked key walks every key block, its empty
rows scoring the keys above the diagonal at the fill.
"""
from __future__ import annotations

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional on CPU: the reference runs instead
    triton = None

_LOG2E = 1.4426950408889634

if triton is not None:
    from .mask_blocks import K_EMPTY, K_PARTIAL
    from .triton_decode import _dot  # the interpreter's bf16 workaround, one copy

if triton is not None:

    LOG2E: tl.constexpr = tl.constexpr(_LOG2E)

    @triton.jit
    def _attend(acc, l_i, m_i, qn, qr, kn_src, kr_src, v_src, mk_src, bk_src, b32, h32,
                skn_n, skr_n, sv_n, smk_n, sbk_n, lo, hi, Sk, offs_m, offs_n, m_ok, dn_ok,
                dr_ok, dv_ok, qk_scale, row_empty, row_fill, BDN: tl.constexpr, BDR: tl.constexpr,
                BDV: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
                CAUSAL: tl.constexpr, MASK_D: tl.constexpr, TMA: tl.constexpr,
                POS_SCALE: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                MASK: tl.constexpr, SKIP: tl.constexpr, ROPE: tl.constexpr,
                PAD_ROWS: tl.constexpr):
        # key blocks [lo, hi): MASKED applies the causal and the j < Sk masks.
        # K tiles come transposed ([D, BLOCK_N]) to the dots. *_src are tensor
        # descriptors (TMA: out-of-range rows and columns read as zeros) or pointer
        # tiles at key 0, moved to `lo` (the unmasked stage always starts at 0; the
        # masked one gets a run-time lo, multiplied in int64 for long sequences).
        # MASK: mk_src is the additive mask's pointer tile, always pointer loads.
        # SKIP: bk_src points at this (b, h, query tile)'s row of the mask's block
        # table (mask_blocks): an EMPTY block (all -inf) is skipped, which leaves
        # acc, l_i, m_i exactly as visiting it would (p == 0, alpha == 1, or a state
        # still all zero); a FULL block (all 0) runs without loading the mask.
        # PAD_ROWS: a row with row_empty set scores the keys above the diagonal at
        # qk * scale + row_fill instead of -inf (the op's empty_row_fill rule)
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
                        if CAUSAL and PAD_ROWS:
                            above = cols[None, :] > offs_m[:, None]
                            s = tl.where(above, qk * qk_scale + row_fill, s)
                            ok = ok & (row_empty[:, None] | (cols[None, :] <= offs_m[:, None]))
                        elif CAUSAL:
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
        Qn, Qr, Kn, Kr, V, O, Mk, Bk, Sinks, Fv,
        sqn_b, sqn_h, sqn_m, sqn_d,
        sqr_b, sqr_h, sqr_m, sqr_d,
        skn_b, skn_h, skn_n, skn_d,
        skr_b, skr_n, skr_d,
        sv_b, sv_h, sv_n, sv_d,
        so_b, so_h, so_m, so_d,
        smk_b, smk_h, smk_m, smk_n,
        sbk_b, sbk_h, sbk_m, sbk_n,
        sfv_b, sfv_h,
        H, Sq, Sk, qk_scale, row_fill,
        DN: tl.constexpr, DR: tl.constexpr, DV: tl.constexpr,
        BDN: tl.constexpr, BDR: tl.constexpr, BDV: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        CAUSAL: tl.constexpr, MASK_D: tl.constexpr, TMA: tl.constexpr,
        POS_SCALE: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
        MASK: tl.constexpr, ZERO_EMPTY: tl.constexpr, SKIP: tl.constexpr,
        ROPE: tl.constexpr, SINK: tl.constexpr, PAD_ROWS: tl.constexpr,
    ):
        # heavy (late) query blocks first: the causal triangle then ends in small blocks
        # a float argument may arrive as fp64 (Inductor's launcher types Python floats so):
        # the softmax runs in fp32 whoever launches
        qk_scale = tl.cast(qk_scale, tl.float32)
        row_fill = tl.cast(row_fill, tl.float32)
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
            if PAD_ROWS:
                # Fv: this (b, h)'s first key whose mask is not the fill (Sk if none).
                # Row i is empty iff i < fv (a key-only mask), so the rows of a tile
                # are empty up to some row: a tile whose FIRST row is empty walks
                # every key (its masked stage reaches Sk), any other tile is causal
                fv = tl.load(Fv + b * sfv_b + h * sfv_h)
                row_empty = offs_m < fv
                hi = tl.where(fv > start_m, Sk, hi)
            else:
                row_empty = offs_m < 0
        else:
            row_empty = offs_m < 0
            hi = Sk
            full_end = (Sk // BLOCK_N) * BLOCK_N
        acc, l_i, m_i = _attend(
            acc, l_i, m_i, qn, qr, kn_src, kr_src, v_src, mk_src, bk_src, b32, h32,
            skn_n, skr_n, sv_n, smk_n, sbk_n, 0, full_end, Sk, offs_m, offs_n, m_ok,
            dn_ok, dr_ok, dv_ok, qk_scale, row_empty, row_fill, BDN, BDR, BDV, BLOCK_N,
            False, CAUSAL, MASK_D, TMA, POS_SCALE, PREC, UPCAST, MASK, SKIP, ROPE, PAD_ROWS)
        acc, l_i, m_i = _attend(
            acc, l_i, m_i, qn, qr, kn_src, kr_src, v_src, mk_src, bk_src, b32, h32,
            skn_n, skr_n, sv_n, smk_n, sbk_n, full_end, hi, Sk, offs_m, offs_n, m_ok,
            dn_ok, dr_ok, dv_ok, qk_scale, row_empty, row_fill, BDN, BDR, BDV, BLOCK_N,
            True, CAUSAL, MASK_D, TMA, POS_SCALE, PREC, UPCAST, MASK, SKIP, ROPE, PAD_ROWS)

        if ZERO_EMPTY:  # SDPA's safe softmax: a row with no visible key (all -inf) is 0
            out = tl.where(l_i[:, None] > 0, acc / l_i[:, None], 0.0)
        else:
            out = acc / l_i[:, None]
        o_ptrs = O + b * so_b + h * so_h + rows[:, None] * so_m + offs_dv[None, :] * so_d
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=m_ok[:, None] & dv_ok[None, :])
