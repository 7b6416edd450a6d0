"""Which form computes MLA attention: decided here and nowhere else.

Both forms give the same function (`mla.prefill_attention`); they differ in where
the up-projections w_uk [H, Dn, R] and w_uv [H, Dv, R] are applied. Per batch row,
with Sq queries, Sk keys, H heads (multiply-adds count 2 FLOPs):

    decompressed = 2*H*Sk*R*(Dn + Dv)          expand c_kv into K_nope and V
                 + 2*H*Sq*Sk*(Dn + Dr + Dv)    attend: q/k dim Dn+Dr, v dim Dv
    absorbed     = 2*H*Sq*R*(Dn + Dv)          q_nope @ w_uk, o_lat @ w_uv^T
                 + 2*H*Sq*Sk*(R + Dr + R)      attend over the latent: q/k dim R+Dr, v dim R

Decompression scales with the keys, absorption with the queries, while absorbed
attention is wider (R+Dr and R against Dn+Dr and Dv). With DeepSeek's dims (Dn=128,
Dr=64, Dv=128, R=512) absorbed wins only when Sq < 171, and then only for enough
keys: at Sq = 1 (decode) from Sk = 2, for Sq = 100 from Sk = 242; never at Sq == Sk.
Causal masking halves the attention terms of both alike, so it is left out. Bytes
point the same way where they dominate (short queries): decompressing writes and
reads H*Sk*(Dn+Dv) elements, absorbing reads the Sk*(R+Dr) latent once per query tile.
"""
from __future__ import annotations

from ..compat import statically_known_true

FORMS = ("decompressed", "absorbed")  # the values of mla.prefill_attention's `form`


def decompressed_flops(q_len, kv_len, heads, nope_dim, rope_dim, v_dim, latent_dim):
    """FLOPs of the decompressed form per batch row (see the module docstring)."""
    return 2 * heads * (kv_len * latent_dim * (nope_dim + v_dim)
                        + q_len * kv_len * (nope_dim + rope_dim + v_dim))


def absorbed_flops(q_len, kv_len, heads, nope_dim, rope_dim, v_dim, latent_dim):
    """FLOPs of the absorbed form per batch row (see the module docstring)."""
    return 2 * heads * (q_len * latent_dim * (nope_dim + v_dim)
                        + q_len * kv_len * (2 * latent_dim + rope_dim))


def choose_attention_form(q_len, kv_len, heads, nope_dim, rope_dim, v_dim, latent_dim) -> str:
    """The absorbed form when it takes fewer FLOPs, else decompressed (ties too).

    Sizes may be SymInts: the comparison must then hold for every value the shape
    environment allows (no guard is added); when it cannot be decided statically the
    answer is "decompressed", the form that is never far off for long queries.
    """
    dims = (q_len, kv_len, heads, nope_dim, rope_dim, v_dim, latent_dim)
    cheaper = absorbed_flops(*dims) < decompressed_flops(*dims)
    if isinstance(cheaper, bool):  # all sizes static: the common case
        return FORMS[1] if cheaper else FORMS[0]
    return FORMS[1] if statically_known_true(cheaper) else FORMS[0]
