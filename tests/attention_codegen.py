"""Property-based generator of MLA attention model code, for tests/test_fuzz_attention.py.

A `Program` is one MLA attention layer (or two, side by side) described by its choices
and rendered as real Python source for an `nn.Module` (`Program.source`, shown on
failure). `Program.build()` execs the source and returns the module with deterministic
random weights (matrices N(0, 1/fan_in)) in the drawn dtype; `Program.make_inputs(seed)`
returns fresh random inputs. The program knows what the report must say: `expect` is
"match" (exactly `expected_matches` attention.mla rewrites, no attention.mla near miss),
"leave" (no rewrite; `near_miss_required`: a near miss with a reason) or "either"
(numbers only; `either_why` says why).

Two hypothesis strategies draw programs through the same `generate(chooser, seed)`:
`seeded_programs()` (one hypothesis integer seeds random.Random, every choice from it:
each example an independent program; the default of the test) and `programs()` (every
choice a hypothesis draw: shrinkable, but hypothesis' mutation repeats near-duplicates).

Vocabulary (README "MLA attention" is what the pass claims):
  dims       B 1..3, S (keys) 1..9, Sq = S or a tail of it (the query is the last Sq
             tokens: chunked prefill, where the absorbed form wins), H 1..8 (sometimes 16),
             nope N (odd sometimes), rope Dr (even 2..16), v V (sometimes N + Dr), latent
             L, q LoRA on/off, RMSNorm on the latent or not; fp32 / bf16
  rope       neox (rotate_half) | pairs (even/odd) | complex (DeepSeek view_as_complex) |
             none (then q may also be used whole, never split or concatenated)
  layout     BHSD (view + transpose) | BSHD | THD (tokens flattened, attention over T)
  key        cat_expand | copy (new_empty + copy_) | assign (new_empty + slice assignment,
             k_pe broadcast by the assignment) | cat_expand_bsh (BSHD: k_pe [B,S,Dr]
             .unsqueeze(2).expand(B, S, H, Dr)); expand(-1, ..) or explicit sizes
  query      cat | assign | whole (no rope)
  kv         split | slice | two_proj (k_b_proj and v_b_proj of one latent); kv_order kv |
             vk (V's rows first in each head) | overlap (V's window starts inside
             k_nope's); latent4d (BHSD: kv_b_proj on c_kv.view(B, 1, S, L)); v_is_k (V is
             k_nope itself); kv_einsum (einsum with W.view(H, D, L): not claimed, "either")
  attention  eager: matmul | einsum | einsum_hb (scores [H, B, Sq, Sk]); the scale on the
             scores (* c, / math.sqrt(d), * -c), on q, on q and k, or none, YaRN mscale^2
             or not; mask none | causal | padded (right) | padded_left (rows with no
             visible key: finfo.min, eager gives the mean of V there) | keypad ([B,1,1,Sk])
             | bias (random per-head float) | built (-inf triu made in forward), of shapes
             [B,1,Sq,Sk], [Sq,Sk], [1,1,Sq,Sk], [B,H,Sq,Sk], [B,Sq,Sk][:, None], ...,
             filled with finfo.min or -inf; added by +, reversed + or +=; softmax fp32 or
             not; dropout(p) in eval; P @ V in fp32 rounded back (pv_upcast)
             sdpa: is_causal | float mask | bool mask (causal, padded, left-padded with
             empty rows, key padding) | none; scale= given or default; V zero-padded to
             N + Dr and the output cropped
  extras     q_nope / q_pe / latent multiplied by a constant (must stay in the math);
             pre-RoPE q_pe, k_pe, probabilities, latent, key returned too; o_proj or the
             raw attention output in its layout
  look-alikes (LOOKALIKES): "leave" (it would be wrong to fuse, or the op cannot express
             it) or "either" (fusing would be right but is not claimed, or a size where the
             look-alike degenerates into MLA). KNOWN_ISSUES: pass bugs this fuzzer found.
"""
from __future__ import annotations

import math
import random
import textwrap
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from hypothesis import strategies as st

HIDDEN = 16
MAX_POS = 16

# name: (expect, near miss required, description). expect may be refined per program
# (see Program.expect): e.g. order_q_swap with N == Dr is still the same arithmetic.
LOOKALIKES = {
    "sink": ("match", False, "attention sinks: an extra logit column in the softmax, dropped after "
                             "(fused: the op's sinks)"),
    "softcap": ("leave", True, "tanh soft-capping of the scores"),
    "per_head_kpe": ("leave", True, "k_pe projected per head (not shared)"),
    "v_other": ("leave", True, "V from its own projection of x, not from the latent"),
    "v_latent_scaled": ("leave", True, "V from kv_b_proj(c_kv * 2), keys from kv_b_proj(c_kv)"),
    "v_latent_flip": ("leave", True, "V from the latent with its token order flipped"),
    "kv_bias": ("leave", True, "a bias on the kv up-projection"),
    "mask_before_scale": ("leave", True, "(scores + mask) * scale"),
    "v_scaled": ("leave", True, "V multiplied by a constant after the up-projection"),
    "order_q_swap": ("leave", True, "q = [q_pe, q_nope] with k = [k_nope, k_pe]"),
    "order_k_swap": ("leave", True, "q = [q_nope, q_pe] with k = [k_pe, k_nope]"),
    "order_both_swap": ("either", False, "q = [q_pe, q_nope], k = [k_pe, k_nope] (same math, other order)"),
    "head_minor": ("leave", True, "kv up-projection rows feature-major (view(..., N+V, H).transpose)"),
    "softmax_dim": ("leave", False, "softmax over the query axis (dim=-2): not attention"),
    "mult_mask": ("leave", True, "scores multiplied by a 0/1 tensor instead of an additive mask"),
    "k_nope_scaled": ("either", False, "only k_nope multiplied by a constant"),
    "tensor_scale": ("leave", True, "scale is a 0-d tensor buffer (a runtime value)"),
    "masked_fill": ("either", False, "mask by scores.masked_fill(~keep, finfo.min) (gap)"),
    "scores_kq": ("either", False, "scores = (k @ q^T)^T (gap)"),
    "no_transpose_view": ("either", False, "q/kv viewed [B, H, S, D] without the transpose (a model bug, "
                                           "still a computation)"),
    "pv_fp32_noround": ("either", False, "bf16: P @ V in fp32 and returned in fp32"),
    "two_masks": ("either", False, "scores * c + mask + bias (two additive tensors)"),
    "kpe_batch0": ("either", False, "k_pe of batch row 0 broadcast over the batch"),
    "gqa_kv": ("either", False, "k_nope and V from H/2 kv heads, repeated to H (HF repeat_kv: expand + "
                                "reshape): grouped heads, not one kv head per q head"),
    "heads_permuted": ("either", False, "kv heads reordered through views (view(.., 2, H/2, ..).transpose"
                                        ".reshape): q head h meets another kv head"),
}

# Pass bugs found by this fuzzer (a minimal repro script for each went with the report
# that introduced them). name: (kind, description). kind "gap": a fusable program the pass
# leaves alone: expect "either" (numbers only). There is no kind for a look-alike left
# alone without a near miss (every attention left alone has one: passes/softmax_reach.py)
# nor for a wrong result: a miscompile always fails. MLA_FUZZ_STRICT=1 (tests/test_fuzz_attention.py) ignores this
# table: use it to check a fix, then delete the entry.
KNOWN_ISSUES = {
    "iadd_on_bmm_view": ("gap", "an fp32 mask += into bf16 matmul/einsum scores (a cast between the add "
                                "and the view back): left alone (same-dtype += matches, on matmul and einsum)"),
    "sdpa_math_pad_v": ("gap", "SDPA reaching the pass as its CPU math decomposition (3-D [H, T, D] "
                               "inputs) with V zero-padded: search_eager does not strip the padding"),
}
STRICT_ISSUES = False  # set by the test from MLA_FUZZ_STRICT

EAGER_ONLY = {"sink", "softcap", "mask_before_scale", "softmax_dim", "mult_mask", "tensor_scale",
              "masked_fill", "scores_kq", "pv_fp32_noround", "two_masks"}


@dataclass
class Program:
    layout: str                 # BHSD | BSHD | THD
    B: int
    S: int                      # key length (tokens of x)
    Sq: int                     # query length (the last Sq tokens)
    H: int
    N: int                      # qk nope dim
    Dr: int                     # qk rope dim
    V: int                      # v dim
    L: int                      # latent (kv_lora_rank)
    q_lora: int                 # 0: q_proj
    kv_norm: bool               # RMSNorm on the latent
    rope: str                   # neox | pairs | complex | none
    dtype: torch.dtype
    q_split: str                # split | method | slice | whole
    q_asm: str                  # cat | assign | whole
    key: str                    # cat_expand | copy | assign | cat_expand_bsh
    expand: str                 # neg (-1s) | explicit sizes
    kpe_view: str               # view | unsqueeze
    latent4d: bool
    kv_src: str                 # split | slice | two_proj
    kv_order: str               # kv | vk | overlap
    v_is_k: bool
    kv_einsum: bool             # kv = einsum(c_kv, W.view(H, D, L)) instead of a linear + view (not claimed)
    heads_spell: str            # literal | minus1 (view(..., -1, D))
    attn: str                   # eager | sdpa
    call: str                   # matmul | einsum | einsum_hb (eager)
    scale_where: str            # scores_mul | scores_div | scores_neg | q | qk | none (eager); sdpa: given | default
    yarn: bool
    mask: str                   # none | causal | padded | padded_left | keypad | bias | built (eager);
                                # sdpa also is_causal | bool | bool_padded | bool_padded_left | bool_keypad
    mask_shape: str             # b1qk | b11k | qk | 11qk | bhqk | bqk | 1hqk (THD: tt | 1tt | htt)
    mask_fill: str              # min (finfo.min) | inf (-inf) for the additive masks
    mask_add: str               # add | radd | iadd
    softmax: str                # f32 | plain | method | float
    dropout: bool
    pv_upcast: bool
    pad_v: bool
    q_nope_mul: float           # 0.0: none
    q_pe_mul: float
    latent_mul: float
    o_proj: bool
    ret_q_pe_pre: bool
    ret_k_pe: bool
    ret_probs: bool
    ret_latent: bool
    ret_k: bool
    n_layers: int
    lookalike: str | None
    seed: int
    source: str = field(default="", repr=False)

    def __repr__(self) -> str:
        return f"Program<{self.describe()}, seed={self.seed}>"

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self))

    # ------------------------------------------------------------ knowledge
    @property
    def T(self) -> int:
        return self.B * self.S

    @property
    def q_len(self) -> int:
        return self.T if self.layout == "THD" else self.Sq

    @property
    def k_len(self) -> int:
        return self.T if self.layout == "THD" else self.S

    @property
    def degenerate(self) -> bool:
        """Sq = Sk = 1: on CPU Inductor rewrites that bmm before the pass runs."""
        return self.q_len == 1 and self.k_len == 1

    @property
    def known_issues(self) -> list[str]:
        """The KNOWN_ISSUES entries this program may hit (none under STRICT_ISSUES)."""
        return [] if STRICT_ISSUES else self._known_issues()

    def _kind(self, kind: str) -> str | None:
        return next((k for k in self.known_issues if KNOWN_ISSUES[k][0] == kind), None)

    @property
    def known_gap(self) -> str | None:
        return self._kind("gap")

    def _known_issues(self) -> list[str]:
        look, out = self.lookalike, []
        fresh_scores = (self.scale_where in ("scores_mul", "scores_div", "scores_neg")
                        or look in ("tensor_scale", "softcap", "mult_mask", "masked_fill", "mask_before_scale"))
        if (self.attn == "eager" and self.mask != "none" and self.mask_add == "iadd" and not fresh_scores
                and self.mask == "built" and self.dtype != torch.float32):
            out.append("iadd_on_bmm_view")
        if self.attn == "sdpa" and self.pad_v and self.layout == "THD":
            out.append("sdpa_math_pad_v")
        return out

    @property
    def expect(self) -> str:
        if self.lookalike is None:
            return "either" if self.degenerate or self.known_gap or self.kv_einsum else "match"
        expect = LOOKALIKES[self.lookalike][0]
        look = self.lookalike
        if look in ("order_q_swap", "order_k_swap") and self.N == self.Dr:
            return "either"       # the same arithmetic with the halves renamed
        if look in ("per_head_kpe", "head_minor") and self.H == 1:
            return "either"       # one head: shared and per-head are the same
        if look == "kpe_batch0" and self.B == 1:
            return "either"
        if look == "softmax_dim" and self.q_len == 1:
            return "either"
        if self.degenerate and expect == "match":
            return "either"
        return expect

    @property
    def near_miss_required(self) -> bool:
        if self.lookalike is None or self.expect != "leave" or self.degenerate or self.known_issues:
            return False
        return LOOKALIKES[self.lookalike][1]

    @property
    def either_why(self) -> str:
        if self.lookalike is None and self.known_gap and not self.degenerate:
            return f"known issue {self.known_gap}"
        if self.lookalike is None and self.kv_einsum and not self.degenerate:
            return "kv up-projection by einsum with W.view(H, D, L) (not claimed)"
        if self.lookalike:
            return self.lookalike + (" (degenerate size)" if LOOKALIKES[self.lookalike][0] == "leave" else "")
        return "Sq = Sk = 1 (CPU bmm rewrite)"

    @property
    def expected_matches(self) -> int:
        return self.n_layers

    @property
    def tol(self) -> float:
        return 1e-4 if self.dtype == torch.float32 else 2e-2

    @property
    def _mask_input(self) -> bool:
        return self.mask not in ("none", "built", "is_causal") or self.lookalike in ("mult_mask", "masked_fill")

    def variants(self) -> list[str]:
        v = [f"layout {self.layout} / {self.attn}" + (f" {self.call}" if self.attn == "eager" else ""),
             f"mask {self.mask}" + (f" {self.mask_shape}" if self._mask_input else ""),
             f"rope {self.rope}", f"key {self.key}", f"query {self.q_asm}", f"kv {self.kv_src}/{self.kv_order}",
             f"scale {self.scale_where}{' yarn' if self.yarn else ''}"]
        if self.Sq < self.S:
            v.append("query tail (Sq < Sk)")
        if self.latent4d:
            v.append("latent4d")
        if self.v_is_k:
            v.append("v is k_nope")
        if self.kv_einsum:
            v.append("kv by einsum")
        if self.pad_v:
            v.append("V padded + cropped")
        if self.pv_upcast:
            v.append("P @ V in fp32")
        if self.q_nope_mul or self.q_pe_mul or self.latent_mul:
            v.append("extra scalar multiply")
        if self.ret_probs:
            v.append("probabilities returned")
        if self.n_layers == 2:
            v.append("two layers")
        if self.V == self.N + self.Dr:
            v.append("V == N + Dr")
        return v

    def describe(self) -> str:
        dt = str(self.dtype).replace("torch.", "")
        look = f"/{self.lookalike}" if self.lookalike else ""
        return (f"{self.attn}{look} {self.layout} B{self.B}S{self.S}Sq{self.Sq}H{self.H}N{self.N}R{self.Dr}"
                f"V{self.V}L{self.L}{'Q' + str(self.q_lora) if self.q_lora else ''} {dt} rope={self.rope} "
                f"q={self.q_split}/{self.q_asm} k={self.key} kv={self.kv_src}/{self.kv_order}"
                f"{' latent4d' if self.latent4d else ''}{' kv_einsum' if self.kv_einsum else ''} "
                f"call={self.call} scale={self.scale_where}"
                f"{'+yarn' if self.yarn else ''} mask={self.mask}/{self.mask_shape} sm={self.softmax}"
                f"{' pad_v' if self.pad_v else ''}{' pv32' if self.pv_upcast else ''} layers={self.n_layers}")

    # ------------------------------------------------------------ inputs
    def input_specs(self) -> list[tuple[str, tuple]]:
        specs = []
        if self.layout == "THD":
            specs += [("x", (self.T, HIDDEN)), ("pos", (self.T,))]
        else:
            specs += [("x", (self.B, self.S, HIDDEN)), ("pos", (self.B, self.S))]
        if self._mask_input:
            specs.append(("attention_mask", self.mask_tensor_shape()))
        if self.lookalike == "two_masks":
            specs.append(("attn_bias", self.bias_shape()))
        return specs

    def mask_tensor_shape(self) -> tuple:
        B, H, q, k = self.B, self.H, self.q_len, self.k_len
        return {"b1qk": (B, 1, q, k), "b11k": (B, 1, 1, k), "qk": (q, k), "11qk": (1, 1, q, k), "bhqk": (B, H, q, k),
                "bqk": (B, q, k), "1hqk": (1, H, q, k), "tt": (q, k), "1tt": (1, q, k),
                "htt": (H, q, k)}[self.mask_shape]

    def bias_shape(self) -> tuple:
        return (self.H, self.q_len, self.k_len) if self.layout == "THD" else (1, self.H, self.q_len, self.k_len)

    def keep(self) -> torch.Tensor:
        """bool [q, k], or [B, q, k] for padded masks: True = attend."""
        q, k = self.q_len, self.k_len
        if self.layout == "THD":
            i = torch.arange(q)[:, None]
            j = torch.arange(k)[None, :]
            keep = j <= i
            if self.mask in ("padded", "bool_padded"):   # varlen: block-diagonal causal
                keep = keep & (i // self.S == j // self.S)
            return keep
        i = torch.arange(q)[:, None] + (k - q)          # query i is token k - q + i
        j = torch.arange(k)[None, :]
        causal = j <= i
        if self.mask in ("keypad", "bool_keypad"):      # [B, 1, 1, k]: row b keeps max(1, k - 2b) keys
            lens = [max(1, k - 2 * b) for b in range(self.B)]
            return torch.stack([torch.arange(k) < n for n in lens])[:, None, None, :]
        if self.mask in ("padded", "bool_padded"):       # right padding: row b keeps max(1, k - 2b) keys
            lens = [max(1, k - 2 * b) for b in range(self.B)]
            return torch.stack([causal & (j < n) for n in lens])
        if self.mask in ("padded_left", "bool_padded_left"):  # left padding: row b drops its first
            # min(b, k - 1) keys, so its first queries see no key at all (SDPA: 0; eager: finfo.min
            # gives the mean of V there)
            pads = [min(b, k - 1) for b in range(self.B)]
            return torch.stack([causal & (j >= p) for p in pads])
        return causal

    def mask_value(self, gen: torch.Generator) -> torch.Tensor:
        shape = self.mask_tensor_shape()
        if self.mask == "bias" or self.lookalike == "mult_mask":
            if self.lookalike == "mult_mask":
                t = (torch.rand(shape, generator=gen) > 0.3).to(self.dtype)
            else:
                t = torch.randn(shape, generator=gen).to(self.dtype)
            return t
        keep = self.keep()
        if self.mask_shape == "b11k":                    # key padding only: [B, 1, 1, k]
            want = keep
        elif keep.dim() == 3:                            # [B, q, k]
            keep4 = keep[:, None]
        else:
            keep4 = keep[None, None] if keep.dim() == 2 else keep
        full = (keep4.expand(self.B, self.H, self.q_len, self.k_len)
                if self.layout != "THD" and self.mask_shape != "b11k" else None)
        if self.mask_shape == "b11k":
            pass
        elif self.layout == "THD":
            k2 = keep
            want = {"tt": k2, "1tt": k2[None], "htt": k2[None].expand(self.H, -1, -1)}[self.mask_shape]
        else:
            want = {"b1qk": full[:, :1], "qk": full[0, 0], "11qk": full[:1, :1], "bhqk": full,
                    "bqk": full[:, 0], "1hqk": full[:1]}[self.mask_shape]
        want = want.contiguous()
        if self.mask.startswith("bool") or self.lookalike == "masked_fill":
            return want
        fill = torch.finfo(self.dtype).min if self.mask_fill == "min" else float("-inf")
        return torch.zeros(want.shape, dtype=self.dtype).masked_fill(~want, fill)

    def make_inputs(self, seed: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        out = []
        for name, shape in self.input_specs():
            if name == "x":
                out.append(torch.randn(shape, generator=g).to(self.dtype))
            elif name == "pos":
                if self.layout == "THD":
                    start = torch.randint(0, MAX_POS - self.S + 1, (self.B, 1), generator=g)
                    out.append((start + torch.arange(self.S)).flatten())
                else:
                    start = torch.randint(0, MAX_POS - self.S + 1, (self.B, 1), generator=g)
                    out.append(start + torch.arange(self.S))
            elif name == "attention_mask":
                out.append(self.mask_value(g))
            else:
                out.append(torch.randn(shape, generator=g).to(self.dtype))
        return out

    # ------------------------------------------------------------ module
    def build(self) -> nn.Module:
        if not self.source:
            self.source = render(self)
        namespace: dict = {}
        exec(compile(self.source, f"<attention program {self.seed}>", "exec"), namespace)
        model = namespace["Model"]()
        init_weights(model, self.seed, self.dtype)
        return model.eval()


def init_weights(model: nn.Module, seed: int, dtype: torch.dtype) -> None:
    """Deterministic weights: matrices N(0, 1/fan_in), norm weights ~1, biases and sinks
    N(0, 0.1..1), rotary caches cos/sin of random angles, freqs_cis polar(1, random)."""
    g = torch.Generator().manual_seed(seed ^ 0x5EED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.dim() == 2:
                w = torch.randn(p.shape, generator=g) * p.shape[1] ** -0.5
            elif name.endswith("norm.weight"):
                w = 1 + 0.1 * torch.randn(p.shape, generator=g)
            elif name.endswith("sinks"):
                w = torch.randn(p.shape, generator=g)
            else:  # biases
                w = 0.3 * torch.randn(p.shape, generator=g)
            p.data = w.to(dtype)
        for name, b in sorted(model.named_buffers()):
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "freqs_cis":
                theta = torch.rand(b.shape, generator=g) * (2 * math.pi)
                b.data = torch.polar(torch.ones(b.shape), theta)
            elif leaf not in ("cos_cached", "sin_cached"):  # a 0-d scale buffer keeps its value
                b.data = b.data.to(dtype)
        for mod in model.modules():  # cos and sin of one random angle per entry
            if hasattr(mod, "cos_cached"):
                theta = torch.rand(mod.cos_cached.shape, generator=g) * (2 * math.pi)
                mod.cos_cached.data = theta.cos().to(dtype)
                mod.sin_cached.data = theta.sin().to(dtype)


# ---------------------------------------------------------------- rendering

def _rope_funcs(p: Program) -> str:
    if p.rope == "neox":
        return ("def rotate_half(x):\n    x1 = x[..., : x.shape[-1] // 2]\n    x2 = x[..., x.shape[-1] // 2 :]\n"
                "    return torch.cat((-x2, x1), dim=-1)\n\n\n"
                "def apply_rope(x, cos, sin):\n    return x * cos + rotate_half(x) * sin\n")
    if p.rope == "pairs":
        return ("def apply_rope(x, cos, sin):\n    x1 = x[..., 0::2]\n    x2 = x[..., 1::2]\n"
                "    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)\n")
    if p.rope == "complex":
        return ("def apply_rope(x, freqs_cis, _unused=None):\n"
                "    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))\n"
                "    return torch.view_as_real(xc * freqs_cis).flatten(-2).type_as(x)\n")
    return ""


RMSNORM = '''class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)
'''


def _init_lines(p: Program) -> list[str]:
    H, N, Dr, V, L = p.H, p.N, p.Dr, p.V, p.L
    look = p.lookalike
    lines = ["super().__init__()", f"self.num_heads = {H}", f"self.qk_nope_head_dim = {N}",
             f"self.qk_rope_head_dim = {Dr}", f"self.v_head_dim = {V}", f"self.kv_lora_rank = {L}",
             "self.qk_head_dim = self.qk_nope_head_dim + self.qk_rope_head_dim",
             "self.attention_dropout = 0.1"]
    if p.yarn:
        lines += ["mscale = 0.1 * math.log(40) + 1.0",
                  "self.scaling = self.qk_head_dim ** -0.5 * mscale * mscale"]
    else:
        lines.append("self.scaling = self.qk_head_dim ** -0.5")
    if p.q_lora:
        lines += [f"self.q_a_proj = nn.Linear({HIDDEN}, {p.q_lora}, bias=False)",
                  f"self.q_a_layernorm = RMSNorm({p.q_lora})",
                  f"self.q_b_proj = nn.Linear({p.q_lora}, {H} * self.qk_head_dim, bias=False)"]
    else:
        lines.append(f"self.q_proj = nn.Linear({HIDDEN}, {H} * self.qk_head_dim, bias=False)")
    lines.append(f"self.kv_a_proj_with_mqa = nn.Linear({HIDDEN}, {L} + {Dr}, bias=False)")
    if p.kv_norm:
        lines.append(f"self.kv_a_layernorm = RMSNorm({L})")
    bias = "True" if look == "kv_bias" else "False"
    Hkv = H // 2 if look == "gqa_kv" else H
    if p.kv_src == "two_proj":
        lines.append(f"self.k_b_proj = nn.Linear({L}, {Hkv} * {N}, bias={bias})")
        if not p.v_is_k:
            lines.append(f"self.v_b_proj = nn.Linear({L}, {Hkv} * {V}, bias=False)")
    else:
        width = f"{N}" if p.v_is_k else f"({N} + {V})"
        lines.append(f"self.kv_b_proj = nn.Linear({L}, {Hkv} * {width}, bias={bias})")
    if p.o_proj:
        lines.append(f"self.o_proj = nn.Linear({H} * {V}, {HIDDEN}, bias=False)")
    if look == "per_head_kpe":
        lines.append(f"self.k_rope_proj = nn.Linear({HIDDEN}, {H} * {Dr}, bias=False)")
    if look == "v_other":
        lines.append(f"self.v_proj = nn.Linear({HIDDEN}, {H} * {V}, bias=False)")
    if look == "sink":
        lines.append(f"self.sinks = nn.Parameter(torch.zeros({H}))")
    if look == "tensor_scale":
        lines.append("self.register_buffer('scale_t', torch.tensor(self.scaling), persistent=False)")
    if p.rope == "complex":
        lines.append(f"self.register_buffer('freqs_cis', torch.zeros({MAX_POS}, {Dr // 2}, "
                     "dtype=torch.complex64), persistent=False)")
    elif p.rope != "none":
        w = Dr if p.rope == "neox" else Dr // 2
        lines += [f"self.register_buffer('cos_cached', torch.zeros({MAX_POS}, {w}), persistent=False)",
                  f"self.register_buffer('sin_cached', torch.zeros({MAX_POS}, {w}), persistent=False)"]
    return lines


def _heads_view(p: Program, y: str, n: str, w: str, minor: bool = False, perm: bool = False,
                kv: bool = False) -> str:
    """y [.., tokens, H * w] -> the layout's per-head view (kv: the kv heads)."""
    if kv and p.lookalike == "gqa_kv":
        b = {"BHSD": f"{y}.view(bsz, {n}, {p.H // 2}, {w}).transpose(1, 2)",
             "BSHD": f"{y}.view(bsz, {n}, {p.H // 2}, {w})", "THD": f"{y}.view(T, {p.H // 2}, {w})"}[p.layout]
        return f"repeat_kv({b})"
    if kv and p.kv_einsum:
        W = y.split("(")[0] + ".weight"
        lat = y[y.index("(") + 1:-1]
        spec = {"BHSD": "bsl,hdl->bhsd", "BSHD": "bsl,hdl->bshd", "THD": "tl,hdl->thd"}[p.layout]
        return f'torch.einsum("{spec}", {lat}, {W}.view({p.H}, {w}, {p.L}))'
    H = "-1" if p.heads_spell == "minus1" and not minor else str(p.H)
    if p.lookalike == "no_transpose_view":
        return f"{y}.view(bsz, {p.H}, {n}, {w})"
    if perm and p.lookalike == "heads_permuted":
        if p.layout == "THD":
            return f"{y}.view(T, 2, {p.H // 2}, {w}).transpose(1, 2).reshape(T, {p.H}, {w})"
        return (f"{y}.view(bsz, {n}, 2, {p.H // 2}, {w}).transpose(2, 3).reshape(bsz, {n}, {p.H}, {w})"
                + (".transpose(1, 2)" if p.layout == "BHSD" else ""))
    if p.layout == "THD":
        return f"{y}.view(T, {w}, {p.H}).transpose(1, 2)" if minor else f"{y}.view(T, {H}, {w})"
    base = f"{y}.view(bsz, {n}, {w}, {p.H}).transpose(2, 3)" if minor else f"{y}.view(bsz, {n}, {H}, {w})"
    return base + (".transpose(1, 2)" if p.layout == "BHSD" else "")


def _head_axis(p: Program) -> int:
    return {"BHSD": 1, "BSHD": 2, "THD": 1}[p.layout]


def _expand(p: Program, t: str) -> str:
    """A one-head tensor broadcast over the heads for the key concatenation."""
    H, Dr = p.H, p.Dr
    if p.key == "cat_expand_bsh" and p.lookalike != "per_head_kpe":
        return f"{t}.unsqueeze(2).expand(bsz, seqlen, {H}, {Dr})"
    if p.expand == "explicit":
        return {"BHSD": f"{t}.expand(bsz, {H}, seqlen, {Dr})", "BSHD": f"{t}.expand(bsz, seqlen, {H}, {Dr})",
                "THD": f"{t}.expand(T, {H}, {Dr})"}[p.layout]
    return {"BHSD": f"{t}.expand(-1, {H}, -1, -1)", "BSHD": f"{t}.expand(-1, -1, {H}, -1)",
            "THD": f"{t}.expand(-1, {H}, -1)"}[p.layout]


def _forward_lines(p: Program) -> tuple[list[str], list[str]]:
    """(arguments, body) of forward."""
    H, N, Dr, V, L = p.H, p.N, p.Dr, p.V, p.L
    look = p.lookalike
    thd = p.layout == "THD"
    args = ["x", "pos"] + (["attention_mask"] if p._mask_input else []) + (["attn_bias"] if look == "two_masks" else [])
    b: list[str] = []
    outs: list[str] = []
    if thd:
        b += ["T = x.shape[0]", "x_q, pos_q, qlen, seqlen = x, pos, T, T"]
    else:
        b.append("bsz, seqlen, _ = x.shape")
        if p.Sq < p.S:
            b.append(f"x_q, pos_q = x[:, {p.S - p.Sq}:], pos[:, {p.S - p.Sq}:]")
        else:
            b.append("x_q, pos_q = x, pos")
        b.append("qlen = x_q.shape[1]")
    # ---- query
    qproj = "self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x_q)))" if p.q_lora else "self.q_proj(x_q)"
    b.append(f"q = {_heads_view(p, qproj, 'qlen', 'self.qk_head_dim')}")
    if p.q_split == "split":
        b.append(f"q_nope, q_pe = torch.split(q, [{N}, {Dr}], dim=-1)")
    elif p.q_split == "method":
        b.append("q_nope, q_pe = q.split([self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)")
    elif p.q_split == "slice":
        b.append(f"q_nope, q_pe = q[..., :{N}], q[..., {N}:]")
    if p.q_split != "whole":
        if p.q_nope_mul:
            b.append(f"q_nope = q_nope * {p.q_nope_mul}")
        if p.ret_q_pe_pre:
            b.append("q_pe_pre = q_pe")
            outs.append("q_pe_pre")
    # ---- latent and k_pe
    b.append("compressed = self.kv_a_proj_with_mqa(x)")
    b.append(f"c_kv, k_pe = torch.split(compressed, [{L}, {Dr}], dim=-1)" if p.seed % 2 else
             f"c_kv, k_pe = compressed[..., :{L}], compressed[..., {L}:]")
    if p.kv_norm:
        b.append("c_kv = self.kv_a_layernorm(c_kv)")
    if p.latent_mul:
        b.append(f"c_kv = c_kv * {p.latent_mul}")
    if p.ret_latent:
        b.append("latent = c_kv")
        outs.append("latent")
    if p.latent4d:
        b.append(f"c_kv = c_kv.view(bsz, 1, seqlen, {L})")
    c_v = "c_kv"
    if look == "v_latent_scaled":
        c_v = "(c_kv * 2.0)"
    elif look == "v_latent_flip":
        c_v = "c_kv.flip(-2)"
    minor = look == "head_minor"
    if p.kv_src == "two_proj":
        b.append(f"k_nope = {_heads_view(p, 'self.k_b_proj(c_kv)', 'seqlen', str(N), minor, True, True)}")
        if p.v_is_k:
            b.append("v = k_nope")
        else:
            b.append(f"v = {_heads_view(p, f'self.v_b_proj({c_v})', 'seqlen', str(V), minor, True, True)}")
    else:
        w = str(N) if p.v_is_k else f"{N + V}"
        b.append(f"kv = {_heads_view(p, 'self.kv_b_proj(c_kv)', 'seqlen', w, minor, True, True)}")
        if p.v_is_k:
            b += ["k_nope = kv", "v = kv"]
        elif p.kv_src == "split":
            if p.kv_order == "kv":
                b.append(f"k_nope, v = torch.split(kv, [{N}, {V}], dim=-1)")
            else:
                b.append(f"v, k_nope = torch.split(kv, [{V}, {N}], dim=-1)")
        elif p.kv_order == "overlap":  # V's window starts inside k_nope's: the rows are shared
            o = max(0, N - 2)
            b.append(f"k_nope, v = kv[..., :{N}], kv[..., {o}:{o + V}]")
        else:
            if p.kv_order == "kv":
                b.append(f"k_nope, v = kv[..., :{N}], kv[..., {N}:]")
            else:
                b.append(f"v, k_nope = kv[..., :{V}], kv[..., {V}:]")
        if look in ("v_latent_scaled", "v_latent_flip"):  # V from its own projection of another latent
            b.append(f"v = {_heads_view(p, f'self.kv_b_proj({c_v})', 'seqlen', w, minor, kv=True)}[..., "
                     f"{':' + str(N) if p.v_is_k else (str(N) + ':' if p.kv_order == 'kv' else ':' + str(V))}]")
    if look == "v_other":
        b.append(f"v = {_heads_view(p, 'self.v_proj(x)', 'seqlen', str(V))}")
    if look == "v_scaled":
        b.append("v = v * 0.5")
    if look == "k_nope_scaled":
        b.append("k_nope = k_nope * 0.5")
    bsh = p.key == "cat_expand_bsh" and look != "per_head_kpe"
    if look == "per_head_kpe":
        b.append(f"k_pe = {_heads_view(p, 'self.k_rope_proj(x)', 'seqlen', str(Dr))}")
    elif bsh:
        pass  # k_pe stays [B, S, Dr]
    elif look == "no_transpose_view":
        b.append(f"k_pe = k_pe.view(bsz, 1, seqlen, {Dr})")
    elif p.kpe_view == "view":
        b.append({"BHSD": f"k_pe = k_pe.view(bsz, 1, seqlen, {Dr})", "BSHD": f"k_pe = k_pe.view(bsz, seqlen, 1, {Dr})",
                  "THD": f"k_pe = k_pe.view(T, 1, {Dr})"}[p.layout])
    else:
        b.append(f"k_pe = k_pe.unsqueeze({_head_axis(p)})")
    # ---- rope
    if p.rope != "none":
        ax = 1 if look == "no_transpose_view" else _head_axis(p)
        if p.rope == "complex":
            b += ["freqs_k = self.freqs_cis[pos]", "freqs_q = self.freqs_cis[pos_q]"]
            k_args, q_args = ("freqs_k" if bsh else f"freqs_k.unsqueeze({ax})"), f"freqs_q.unsqueeze({ax})"
        else:
            b += ["cos_k, sin_k = self.cos_cached[pos], self.sin_cached[pos]",
                  "cos_q, sin_q = self.cos_cached[pos_q], self.sin_cached[pos_q]"]
            if bsh:
                k_args = "cos_k, sin_k"
            else:
                k_args = f"cos_k.unsqueeze({ax}), sin_k.unsqueeze({ax})"
            q_args = f"cos_q.unsqueeze({ax}), sin_q.unsqueeze({ax})"
        if p.q_split != "whole":
            b.append(f"q_pe = apply_rope(q_pe, {q_args})")
        b.append(f"k_pe = apply_rope(k_pe, {k_args})")
    if p.q_pe_mul and p.q_split != "whole":
        b.append(f"q_pe = q_pe * {p.q_pe_mul}")
    if look == "kpe_batch0":
        b.append("k_pe = k_pe[:1]")
    if p.ret_k_pe:
        outs.append("k_pe")
    # ---- query assembly
    q_first, q_second = ("q_pe", "q_nope") if look in ("order_q_swap", "order_both_swap") else ("q_nope", "q_pe")
    wq1 = Dr if q_first == "q_pe" else N
    if p.q_asm == "cat":
        b.append(f"q = torch.cat([{q_first}, {q_second}], dim=-1)")
    elif p.q_asm == "assign":
        b += [f"q = q_pe.new_empty(*q_pe.shape[:-1], {N + Dr})", f"q[..., :{wq1}] = {q_first}",
              f"q[..., {wq1}:] = {q_second}"]
    # ---- key assembly
    k_swap = look in ("order_k_swap", "order_both_swap")
    kpe_b = _expand(p, "k_pe")
    if look == "kpe_batch0" and p.expand == "neg" and not bsh:
        kpe_b = {"BHSD": f"k_pe.expand(bsz, {H}, -1, -1)", "BSHD": f"k_pe.expand(bsz, -1, {H}, -1)",
                 "THD": f"k_pe.expand(-1, {H}, -1)"}[p.layout]
    parts = [("k_nope", N, "k_nope"), ("k_pe", Dr, kpe_b)]
    if k_swap:
        parts.reverse()
    if p.key in ("cat_expand", "cat_expand_bsh"):
        b.append(f"k = torch.cat([{parts[0][2]}, {parts[1][2]}], dim=-1)")
    else:
        b.append(f"k = k_pe.new_empty(*k_nope.shape[:-1], {N + Dr})")
        w0 = parts[0][1]
        for (name, _, expanded), sl in zip(parts, (f":{w0}", f"{w0}:")):
            if p.key == "copy":
                b.append(f"k[..., {sl}].copy_({expanded})")
            else:
                plain = name if not (bsh and name == "k_pe") else "k_pe.unsqueeze(2)"
                if look == "kpe_batch0" and name == "k_pe":
                    plain = expanded
                b.append(f"k[..., {sl}] = {plain}")
    if p.ret_k:
        outs.append("k")
    # ---- attention
    if p.attn == "eager":
        body, out_dtype_f32 = _eager_lines(p)
        b += body
    else:
        b += _sdpa_lines(p)
        out_dtype_f32 = False
    if p.ret_probs and p.attn == "eager":
        outs.append("probs")
    # ---- output
    if p.o_proj and not out_dtype_f32:
        if thd:
            b.append(f"out = self.o_proj(out.reshape(T, {H * V}))")
        elif p.layout == "BHSD" and look != "no_transpose_view":
            b.append(f"out = self.o_proj(out.transpose(1, 2).reshape(bsz, qlen, {H * V}))")
        elif look == "no_transpose_view":
            b.append(f"out = self.o_proj(out.reshape(bsz, qlen, {H * V}))")
        else:
            b.append("out = self.o_proj(out.flatten(2))")
    b.append(f"return ({', '.join(['out'] + outs)},)")
    return args, b


def _scores_expr(p: Program, q: str, k: str) -> str:
    look = p.lookalike
    if p.call == "einsum_hb":  # scores [H, B, Sq, Sk]: heads before the batch
        return f'torch.einsum("{"bhsd,bhtd" if p.layout == "BHSD" else "bshd,bthd"}->hbst", {q}, {k})'
    if p.layout == "BHSD":
        if look == "scores_kq":
            return f"torch.matmul({k}, {q}.transpose(-1, -2)).transpose(-1, -2)"
        if p.call == "einsum":
            return f'torch.einsum("bhsd,bhtd->bhst", {q}, {k})'
        return f"torch.matmul({q}, {k}.transpose(2, 3))" if p.seed % 3 else f"{q} @ {k}.transpose(-1, -2)"
    if p.layout == "BSHD":
        if p.call == "einsum":
            return f'torch.einsum("bshd,bthd->bhst", {q}, {k})'
        return f"torch.matmul({q}.transpose(1, 2), {k}.permute(0, 2, 3, 1))"
    if p.call == "einsum":
        return f'torch.einsum("thd,shd->hts", {q}, {k})'
    return f"torch.matmul({q}.transpose(0, 1), {k}.permute(1, 2, 0))"


def _pv_expr(p: Program, probs: str, v: str) -> str:
    if p.call == "einsum_hb":
        return f'torch.einsum("hbst,{"bhtd->bhsd" if p.layout == "BHSD" else "bthd->bshd"}", {probs}, {v})'
    if p.layout == "BHSD":
        if p.call == "einsum":
            return f'torch.einsum("bhst,bhtd->bhsd", {probs}, {v})'
        return f"torch.matmul({probs}, {v})"
    if p.layout == "BSHD":
        if p.call == "einsum":
            return f'torch.einsum("bhst,bthd->bshd", {probs}, {v})'
        return f"torch.matmul({probs}, {v}.transpose(1, 2)).transpose(1, 2)"
    if p.call == "einsum":
        return f'torch.einsum("hts,shd->thd", {probs}, {v})'
    return f"torch.matmul({probs}, {v}.transpose(0, 1)).transpose(0, 1)"


def _built_mask(p: Program) -> str:
    diag = p.k_len - p.q_len + 1
    dt = ", dtype=x.dtype" if p.mask_add == "radd" else ""
    return f'mask = torch.full((qlen, seqlen), float("-inf"), device=x.device{dt}).triu({diag})'


def _eager_lines(p: Program) -> tuple[list[str], bool]:
    look = p.lookalike
    b = []
    q, k = "q", "k"
    if p.scale_where == "q":
        b.append("q = q * self.scaling")
    elif p.scale_where == "qk":
        b += ["q = q * self.scaling ** 0.5", "k = k * self.scaling ** 0.5"]
    qk = _scores_expr(p, q, k)
    has_mask = p.mask != "none"
    mask_name = "mask" if p.mask == "built" else "attention_mask"
    if p.mask == "built":
        b.append(_built_mask(p))
    if p._mask_input and p.mask_shape == "bqk":
        b.append("attention_mask = attention_mask[:, None]")
    if p.call == "einsum_hb" and p._mask_input and p.mask_shape != "qk":
        b.append("attention_mask = attention_mask.transpose(0, 1)  # scores are [H, B, Sq, Sk]")
    promoted = False  # bf16 scores + fp32 built mask -> fp32 (out of place)
    if look == "mask_before_scale":
        b.append(f"scores = ({qk} + {mask_name}) * self.scaling")
        has_mask = False
    else:
        if p.scale_where == "scores_mul":
            b.append(f"scores = {qk} * self.scaling")
        elif p.scale_where == "scores_neg":
            b.append(f"scores = {qk} * -self.scaling")
        elif p.scale_where == "scores_div":
            b.append(f"scores = {qk} / math.sqrt(self.qk_head_dim)")
            if p.yarn:
                b.append("scores = scores * (self.scaling * math.sqrt(self.qk_head_dim))")
        else:
            b.append(f"scores = {qk}")
        if look == "tensor_scale":
            b.append("scores = scores * self.scale_t")
        if look == "softcap":
            b.append("scores = torch.tanh(scores / 5.0) * 5.0")
        if look == "mult_mask":
            b.append("scores = scores * attention_mask")
            has_mask = False
        if look == "masked_fill":
            b.append("scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)")
            has_mask = False
    if has_mask:
        if p.mask_add == "iadd":
            b.append(f"scores += {mask_name}")
        elif p.mask_add == "radd":
            b.append(f"scores = {mask_name} + scores")
        else:
            b.append(f"scores = scores + {mask_name}")
        promoted = p.mask == "built" and p.mask_add == "add" and p.dtype != torch.float32
    if look == "two_masks":
        b.append("scores = scores + attn_bias")
    back = ".to(q.dtype)"
    dim = -2 if look == "softmax_dim" else -1
    upcast = (p.pv_upcast and look != "sink") or look == "pv_fp32_noround"
    if look == "sink":
        sinks = (f"self.sinks.reshape({p.H}, 1, 1).expand(-1, scores.shape[1], 1)" if p.layout == "THD" else
                 f"self.sinks.reshape(1, {p.H}, 1, 1).expand(scores.shape[0], -1, scores.shape[2], 1)")
        b += [f"sinks = {sinks}.to(scores.dtype)",
              "probs = torch.cat([scores, sinks], dim=-1)",
              f"probs = F.softmax(probs, dim=-1, dtype=torch.float32)[..., :-1]{back}"]
    elif upcast:
        b.append(f"probs = F.softmax(scores, dim={dim}, dtype=torch.float32)")
    elif p.softmax == "f32":
        b.append(f"probs = F.softmax(scores, dim={dim}, dtype=torch.float32){back}")
    elif p.softmax == "method":
        b.append(f"probs = scores.softmax(dim={dim}, dtype=torch.float32).type_as(x)")
    elif p.softmax == "float":
        b.append(f"probs = torch.softmax(scores.float(), dim={dim}).type_as(x)")
    else:
        b.append(f"probs = F.softmax(scores, dim={dim})" + (".type_as(x)" if promoted else ""))
    if p.dropout:
        b.append("probs = F.dropout(probs, p=self.attention_dropout, training=self.training)")
    if upcast:
        pv = _pv_expr(p, "probs", "v.float()")
        if look == "pv_fp32_noround":
            b.append(f"out = {pv}")
            return b, True
        b.append(f"out = {pv}.to(x.dtype)")
    else:
        b.append(f"out = {_pv_expr(p, 'probs', 'v')}")
    return b, False


def _sdpa_lines(p: Program) -> list[str]:
    b = []
    if p.layout == "BHSD":
        qs, ks, vs = "q", "k", "v"
    elif p.layout == "BSHD":
        qs, ks, vs = "q.transpose(1, 2)", "k.transpose(1, 2)", "v.transpose(1, 2)"
    else:
        qs, ks, vs = "q.transpose(0, 1)", "k.transpose(0, 1)", "v.transpose(0, 1)"
    if p.pad_v:
        b.append(f"v_in = F.pad({vs}, [0, {p.N + p.Dr - p.V}])")
        vs = "v_in"
    if p.mask_shape == "bqk" and p._mask_input:
        b.append("attention_mask = attention_mask[:, None]")
    kw = []
    if p._mask_input:
        kw.append("attn_mask=attention_mask")
    kw.append("dropout_p=self.attention_dropout if self.training else 0.0" if p.dropout else "dropout_p=0.0")
    if p.mask == "is_causal":
        kw.append("is_causal=True")
    if p.scale_where == "given":
        kw.append("scale=self.scaling")
    b.append(f"out = F.scaled_dot_product_attention({qs}, {ks}, {vs}, {', '.join(kw)})")
    if p.pad_v:
        b.append(f"out = out[..., :{p.V}]")
    if p.layout == "BSHD":
        b.append("out = out.transpose(1, 2)")
    elif p.layout == "THD":
        b.append("out = out.transpose(0, 1)")
    return b


def render(p: Program) -> str:
    parts = ["import math\n\nimport torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"]
    if p.q_lora or p.kv_norm:
        parts.append(RMSNORM)
    if p.rope != "none":
        parts.append(_rope_funcs(p))
    if p.lookalike == "gqa_kv":
        e = {"BHSD": ("[:, :, None]", "b, h, s, d", "b, h, 2, s, d", "b, h * 2, s, d"),
             "BSHD": ("[:, :, :, None]", "b, s, h, d", "b, s, h, 2, d", "b, s, h * 2, d"),
             "THD": ("[:, :, None]", "t, h, d", "t, h, 2, d", "t, h * 2, d")}[p.layout]
        parts.append(f"def repeat_kv(x):  # transformers' repeat_kv, n_rep = 2\n"
                     f"    {e[1]} = x.shape\n    return x{e[0]}.expand({e[2]}).reshape({e[3]})\n")
    init = textwrap.indent("\n".join(_init_lines(p)), " " * 8)
    args, body = _forward_lines(p)
    fwd = textwrap.indent("\n".join(body), " " * 8)
    parts.append(f"class Attention(nn.Module):\n    def __init__(self):\n{init}\n\n"
                 f"    def forward(self, {', '.join(args)}):\n{fwd}\n")
    call = ", ".join(args)
    if p.n_layers == 1:
        parts.append(f"class Model(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                     f"        self.attn = Attention()\n\n    def forward(self, {call}):\n"
                     f"        return self.attn({call})\n")
    else:
        parts.append(f"class Model(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                     f"        self.layer0 = Attention()\n        self.layer1 = Attention()\n\n"
                     f"    def forward(self, {call}):\n"
                     f"        return (*self.layer0({call}), *self.layer1({call}))\n")
    return "\n\n".join(parts)


# ---------------------------------------------------------------- the strategy

def _applies(look: str, layout: str, attn: str, dtype) -> bool:
    if look in EAGER_ONLY and attn != "eager":
        return False
    if look in ("scores_kq", "no_transpose_view") and layout != "BHSD":
        return False
    if look == "pv_fp32_noround" and dtype != torch.bfloat16:
        return False
    if look == "kpe_batch0" and layout == "THD":
        return False
    return True


class _Draws:
    """Choices drawn from hypothesis (shrinkable)."""

    def __init__(self, draw):
        self.draw = draw

    def choice(self, seq):
        return self.draw(st.sampled_from(list(seq)))

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def boolean(self) -> bool:
        return self.draw(st.booleans())


class _Rng:
    """Choices from a seeded random.Random: every seed an independent program."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def choice(self, seq):
        return self.rng.choice(list(seq))

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def boolean(self) -> bool:
        return self.rng.random() < 0.5


def generate(c, seed: int, lookalike_pct: int = 30) -> Program:
    """One program from the chooser `c` (a look-alike first, "leave" ones twice as likely as "either" ones, then
    a layout, call and dtype it applies to, then everything else)."""
    # "leave" look-alikes (the ones a wrong fusion would break) twice as likely as "either" ones
    weighted = sorted(LOOKALIKES) + sorted(k for k, v in LOOKALIKES.items() if v[0] == "leave")
    lookalike = c.choice(weighted) if c.integer(0, 99) < lookalike_pct else None
    while True:
        layout = c.choice(["BHSD", "BHSD", "BSHD", "THD"])
        attn = c.choice(["eager", "eager", "sdpa"])
        dtype = c.choice([torch.float32, torch.float32, torch.bfloat16])
        if lookalike is None or _applies(lookalike, layout, attn, dtype):
            break
    B = c.integer(1, 3)
    S = c.integer(1, 9)
    if layout == "THD":
        S = min(S, 5)  # T = B * S tokens attend to each other
    Sq = S
    if layout != "THD" and S > 1 and c.integer(0, 3) == 0:
        Sq = c.integer(1, S - 1)
    H = c.choice([1, 2, 3, 4, 5, 8, 16]) if c.integer(0, 7) == 0 else c.integer(1, 8)
    N = c.choice([2, 4, 4, 6, 8, 8, 12, 16, 3, 5])
    rope = c.choice(["neox", "neox", "pairs", "complex", "none"])
    if rope == "complex" and N % 2:
        N += 1  # view_as_complex needs even strides: q = [N | Dr] per head
    Dr = c.choice([2, 4, 6, 8, 8, 12, 16])
    if lookalike in ("order_q_swap", "order_k_swap") and N % 2 == 0 and c.boolean():
        Dr = N
    V = N + Dr if c.integer(0, 4) == 0 else c.choice([2, 4, 5, 8, 12, 16])
    L = c.choice([4, 8, 12, 16, 24, 32])
    q_lora = c.choice([0, 0, 8, 12])
    kv_norm = c.boolean()
    q_split = c.choice(["split", "method", "slice"] + (["whole"] if rope == "none" else []))
    if lookalike in ("order_q_swap", "order_both_swap") and q_split == "whole":
        q_split = "split"
    q_asm = "whole" if q_split == "whole" else c.choice(["cat", "cat", "assign"])
    key = c.choice(["cat_expand", "copy", "assign"] + (["cat_expand_bsh"] if layout == "BSHD" else []))
    if lookalike == "per_head_kpe" and key == "cat_expand_bsh":
        key = "cat_expand"
    latent4d = layout == "BHSD" and lookalike != "no_transpose_view" and c.boolean()
    kv_src = c.choice(["split", "split", "slice", "two_proj"])
    kv_order = c.choice(["kv", "kv", "vk"] + (["overlap"] if kv_src == "slice" else []))
    if lookalike in ("heads_permuted", "gqa_kv") and H % 2:
        H = H + 1 if H < 16 else 2
    v_is_k = lookalike is None and c.integer(0, 9) == 0
    kv_einsum = lookalike is None and not latent4d and c.integer(0, 19) == 0
    if v_is_k:
        V = N
    if lookalike in ("v_latent_scaled", "v_latent_flip") and c.boolean():
        kv_src = "two_proj"
    mask_fill = c.choice(["min", "min", "inf"])
    if lookalike == "softmax_dim":  # a softmax over the queries of a -inf key column is NaN in eager too
        mask_fill = "min"
    if attn == "eager":
        call = c.choice(["matmul", "einsum"] * 5 + (["einsum_hb"] if layout != "THD" and lookalike is None else []))
        scale_where = c.choice(["scores_mul", "scores_mul", "scores_div", "q", "qk", "none", "scores_neg"])
        if lookalike in ("mask_before_scale", "tensor_scale"):
            scale_where = "scores_mul" if lookalike == "mask_before_scale" else "none"
        mask = c.choice(["none", "causal", "padded", "padded_left", "bias", "built", "keypad"])
        if lookalike in ("mask_before_scale", "two_masks") and mask == "none":
            mask = "causal"
        if lookalike in ("mult_mask", "masked_fill"):
            mask = "none" if lookalike == "mult_mask" else "causal"
        if mask == "padded_left":
            mask_fill = "min"  # eager softmax of an all -inf row is NaN
        pad_v = False
    else:
        call = "matmul"
        scale_where = c.choice(["given", "given", "default"])
        mask = c.choice(["none", "is_causal", "causal", "padded", "padded_left", "bias",
                         "bool", "bool_padded", "bool_padded_left", "keypad", "bool_keypad"])
        pad_v = V < N + Dr and c.boolean()
    yarn = scale_where not in ("none", "default") and c.boolean()
    if layout == "THD" and mask in ("padded_left", "bool_padded_left", "keypad", "bool_keypad"):
        mask = {"padded_left": "padded", "bool_padded_left": "bool_padded", "keypad": "padded",
                "bool_keypad": "bool_padded"}[mask]
    if layout == "THD":
        shapes = ["htt"] if mask == "bias" else ["tt", "1tt"]
    elif mask == "bias":
        shapes = ["1hqk", "bhqk"]
    elif mask in ("keypad", "bool_keypad"):
        shapes = ["b11k"]
    elif mask in ("padded", "padded_left", "bool_padded", "bool_padded_left"):
        shapes = ["b1qk", "bhqk", "bqk"]
    else:
        shapes = ["b1qk", "qk", "11qk", "bhqk", "bqk"]
    if lookalike == "masked_fill":
        shapes = [s for s in shapes if s != "bqk"]
    mask_shape = c.choice(shapes)
    mul = [0.0, 0.0, 0.0, 0.5, 1.25, -0.75]
    p = Program(
        layout=layout, B=B, S=S, Sq=Sq, H=H, N=N, Dr=Dr, V=V, L=L, q_lora=q_lora, kv_norm=kv_norm,
        rope=rope, dtype=dtype, q_split=q_split, q_asm=q_asm, key=key,
        expand=c.choice(["neg", "explicit"]), kpe_view=c.choice(["view", "unsqueeze"]),
        latent4d=latent4d, kv_src=kv_src, kv_order=kv_order, v_is_k=v_is_k, kv_einsum=kv_einsum,
        heads_spell=c.choice(["literal", "minus1"]), attn=attn, call=call,
        scale_where=scale_where, yarn=yarn, mask=mask, mask_shape=mask_shape, mask_fill=mask_fill,
        mask_add=c.choice(["add", "add", "add", "radd", "radd", "iadd"]),
        softmax=c.choice(["f32", "f32", "plain", "method", "float"]),
        dropout=c.boolean(), pv_upcast=attn == "eager" and c.integer(0, 5) == 0, pad_v=pad_v,
        q_nope_mul=c.choice(mul), q_pe_mul=c.choice(mul), latent_mul=c.choice(mul),
        o_proj=c.choice([True, True, False]),
        ret_q_pe_pre=c.integer(0, 4) == 0, ret_k_pe=c.integer(0, 4) == 0,
        ret_probs=attn == "eager" and c.integer(0, 4) == 0,
        ret_latent=c.integer(0, 4) == 0, ret_k=c.integer(0, 6) == 0,
        n_layers=2 if lookalike is None and c.integer(0, 9) == 0 else 1,
        lookalike=lookalike, seed=seed,
    )
    p.source = render(p)
    return p


@st.composite
def programs(draw, lookalike_pct: int = 30) -> Program:
    """Every choice a hypothesis draw: shrinks towards simpler programs, but hypothesis'
    mutation makes runs of near-duplicates (fewer distinct programs per example)."""
    return generate(_Draws(draw), draw(st.integers(0, 2**31 - 1)), lookalike_pct)


def seeded_programs(lookalike_pct: int = 30):
    """One hypothesis integer per program, every choice from random.Random(it): each
    example an independent program (the diverse default for CI and scans). Shrinking
    the integer gives unrelated programs, so run it without the shrink phase."""
    return st.integers(0, 2**31 - 1).map(lambda s: generate(_Rng(s), s, lookalike_pct))
