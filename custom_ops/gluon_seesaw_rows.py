"""The seesaw's per-row math (gluon_decode_seesaw.py), each warpgroup on its own half:
the scores' scale, mask and visibility, the online-softmax step, and the store of a half
of the output columns (the output, or a normalised partial with its max and sum). The
formulas are gluon_split's (gluon_decode.py): the programs' numbers agree.
"""
from __future__ import annotations

from .gluon_decode import gluon

if gluon is not None:
    from triton.experimental.gluon import language as gl

    from .decode_schedule import gluon_partial_slot

    @gluon.jit
    def masked_scores(s, n0, hi_key, b, rows, MK, smk_b, smk_h, smk_q, smk_n, scale, H, Sq,
                       SL: gl.constexpr, CAUSAL: gl.constexpr, MASK: gl.constexpr):
        """scale, additive mask, visibility (gluon_split's): invisible scores are -inf."""
        row_ok = rows < Sq * H
        qi = rows // H
        hi = rows % H
        s = s * scale
        t = n0 + gl.arange(0, 64, layout=gl.SliceLayout(0, SL))
        if MASK:  # additive, fp32, before any exp: finfo.min stays exact
            mk = gl.load(MK + b * smk_b + hi[:, None] * smk_h + qi[:, None] * smk_q + t[None, :] * smk_n,
                         mask=row_ok[:, None] & (t < hi_key)[None, :], other=0.0)
            s = s + mk.to(gl.float32)
        ok = (t < hi_key)[None, :] & row_ok[:, None]
        if CAUSAL:
            ok = ok & (t[None, :] <= qi[:, None])
        return gl.where(ok, s, float("-inf"))

    @gluon.jit
    def online_step(s, m_i):
        """gluon_split's step: -> p, alpha, m_new (m_sub = 0 while nothing is visible)."""
        m_new = gl.maximum(m_i, gl.max(s, 1))
        m_sub = gl.where(m_new == float("-inf"), 0.0, m_new)
        p = gl.exp2((s - m_sub[:, None]) * 1.4426950408889634)
        alpha = gl.exp2((m_i - m_sub) * 1.4426950408889634)
        return p, alpha, m_new

    @gluon.jit
    def store_half(acc, l_i, m_i, O, OP, ST, SCHED, b, pid, slot, H, Sq, so_b, so_h, so_q, so_r,
                   COL0: gl.constexpr, WRITE_STATS: gl.constexpr, SL: gl.constexpr, AL: gl.constexpr,
                   R: gl.constexpr, DIRECT: gl.constexpr, ZERO_EMPTY: gl.constexpr, BALANCED: gl.constexpr):
        """gluon_split's epilogue for output columns [COL0, COL0 + R/2)."""
        ra = pid * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, AL))
        ca = COL0 + gl.arange(0, R // 2, layout=gl.SliceLayout(0, AL))
        ra_ok = ra < Sq * H
        l_a = gl.convert_layout(l_i, gl.SliceLayout(1, AL))
        inv = 1.0 / gl.where(l_a > 0, l_a, 1.0)
        pb, pn, ps, n_items = gluon_partial_slot(SCHED, b, slot, BALANCED)
        if BALANCED:
            direct = n_items == 1
        else:
            direct: gl.constexpr = DIRECT  # static: the old schedule compiles one store
        if direct:  # one split (a request's only item): the final output, in out's dtype
            if ZERO_EMPTY:
                inv = gl.where(l_a > 0, inv, 0.0)
            else:  # eager softmax over no visible key: 0 / 0
                inv = gl.where(l_a > 0, inv, float("nan"))
            o_rows = b * so_b + (ra % H)[:, None] * so_h + (ra // H)[:, None] * so_q
            gl.store(O + o_rows + ca[None, :] * so_r, (acc * inv[:, None]).to(O.dtype.element_ty),
                     mask=ra_ok[:, None] & (ca < R)[None, :])
        else:  # normalised partial, its running max and sum kept apart (as gluon_split)
            base = ((pb * H + ra % H) * Sq + ra // H) * pn + ps
            gl.store(OP + base.to(gl.int64)[:, None] * R + ca[None, :], acc * inv[:, None],
                     mask=ra_ok[:, None] & (ca < R)[None, :])
            if WRITE_STATS:
                rows = pid * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, SL))
                row_ok = rows < Sq * H
                sbase = ((pb * H + rows % H) * Sq + rows // H) * pn + ps
                gl.store(ST + 2 * sbase, m_i, mask=row_ok)
                gl.store(ST + 2 * sbase + 1, l_i, mask=row_ok)


__all__ = ["masked_scores", "online_step", "store_half"]
