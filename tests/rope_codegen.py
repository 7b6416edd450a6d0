"""Property-based generator of RoPE model code, for tests/test_fuzz_rope.py.

`programs()` is a hypothesis strategy that draws a `Program`: a small RoPE
computation described by its choices (layout, sizes, dtype, the RoPE style and
how the code spells it, where q_pe/k_pe/cos/sin come from, extra consumers, and
optionally one deliberate look-alike that must not be fused). `Program.source`
is real Python source text (shown on failure); `Program.build()` execs it and
returns the function `fn`; `Program.make_inputs(seed)` returns fresh random
inputs for it. The program also knows what the report must say: `expect`
("fuse", "leave" or "either"), the pattern, form and how many RoPEs it holds.

Vocabulary (see passes/rope_forms.py for the recognised shapes):
  styles   neox            x*cos + rotate_half(x)*sin, full-width cos/sin
           deinterleave    x.view(..., d/2, 2).transpose(-1, -2).reshape(...), then neox
           interleave_halves  x.view(..., 2, d/2).transpose(...).reshape(...), then neox:
                           a plain neox of the permuted tensor (fusable as neox)
           even_odd        x[..., 0::2], x[..., 1::2], cat((a*c - b*s, b*c + a*s)), half-width cos
           halves          the same with the two halves of x
           complex         view_as_complex(x.float().reshape(..., -1, 2)) * freqs_cis
           gptj_stack      even/odd pairs stacked back interleaved (stack + flatten): a real
                           RoPE the passes do not recognise (yet): "either"
  look-alikes (expect "leave"; `near_miss_required` says whether the report must hold
           a near miss; about a quarter of the programs are look-alikes, each name equally
           likely, then a style and dtype it applies to)
           other_tensor    rotate_half(other) / the second pair element from another tensor
           not_half        rotate_half slicing at k != d/2
           alpha           add(..., alpha=2)
           sign_flip       x*cos - rotate_half(x)*sin (no candidate: no near miss required)
           promote         bf16 x with fp32 cos/sin (result fp32: type promotion)
           wrong_hi        pairs: hi = a*cos + b*sin
           swapped_slices  even/odd: a = x[1::2], b = x[0::2]
           no_type_as      complex on bf16 x without the cast back (result fp32)
  fusable variants worth naming
           lower           fp32 x with bf16 cos/sin (result fp32 = x's dtype)
           partial         only x[..., :R] is rotated, cat'ed with x[..., R:]
           conj            complex with freqs.conj() ("either")

Inputs are random (randn activations; cos/sin the cos and sin of an independent random
angle per entry, so a full-width cos does not repeat its halves and any mixup of halves,
cos/sin or pair order changes the numbers; complex freqs = polar(1, random angle)).
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field

import torch
from hypothesis import strategies as st

MAX_POS = 8          # rotary cache length (S <= 4, offsets up to MAX_POS - S)
HIDDEN = 8           # width of the hidden state a projection reads
LATENT = 4           # kv latent width in front of k_pe

PATTERN = {
    "neox": "rope.neox", "deinterleave": "rope.neox", "interleave_halves": "rope.neox",
    "even_odd": "rope.pairs", "halves": "rope.pairs", "complex": "rope.complex",
    "gptj_stack": None,
}
FORMS = {
    "neox": {"neox"}, "deinterleave": {"neox_deinterleave"},
    # with d == 4, view(..., 2, 2) is also view(..., d/2, 2): the same permutation
    "interleave_halves": {"neox", "neox_deinterleave"},
    "even_odd": {"even_odd"}, "halves": {"halves"}, "complex": {"complex"}, "gptj_stack": set(),
}
HALF_WIDTH = {"even_odd", "halves", "complex", "gptj_stack"}
NEOX_FAMILY = {"neox", "deinterleave", "interleave_halves"}
PAIRS_FAMILY = {"even_odd", "halves", "gptj_stack"}

LOOKALIKES = {
    # name: (styles it applies to, dtype it needs or None, near miss required)
    "other_tensor": (NEOX_FAMILY | {"even_odd", "halves"}, None, True),
    "not_half": (NEOX_FAMILY, None, True),
    "alpha": (NEOX_FAMILY | {"even_odd", "halves"}, None, True),
    "sign_flip": (NEOX_FAMILY | {"even_odd", "halves"}, None, False),
    "promote": (NEOX_FAMILY | {"even_odd", "halves"}, torch.bfloat16, True),
    "wrong_hi": ({"even_odd", "halves"}, None, True),
    "swapped_slices": ({"even_odd"}, None, True),
    "no_type_as": ({"complex"}, torch.bfloat16, True),
}


@dataclass
class Program:
    # sizes and layout
    layout: str                 # "BHSD" | "BSHD" | "THD"
    B: int
    S: int
    H: int
    R: int                      # rotary dim
    dtype: torch.dtype
    # where q_pe comes from
    q_src: str                  # "input" | "split" | "split_method" | "slice"
    q_base: str                 # "input" | "input_t" (transposed storage) | "proj"
    nope: int                   # width in front of q_pe (0 when q_src == "input")
    partial: int                # pass-through width after the rotated part (0: none)
    partial_where: str          # "outside" (sliced before any RoPE) | "inside" (in apply_rope)
    # k_pe
    k_src: str                  # "none" | "input" | "latent_split" | "latent_slice"
    k_view: str                 # "unsqueeze" | "view"
    k_use: str                  # "return" | "add" (added to q's result)
    # cos/sin
    cos_src: str                # "slice" | "gather"
    cos_off: int                # start of the cache slice
    cos_bcast: str              # how cos gets its broadcast shape (layout-specific spelling)
    cos_where: str              # "outside" | "inside" (unsqueezed in apply_rope, per call)
    cos_build: str              # "cache" | "cat_half" (neox: cat((c, c), -1) of a half-width cache)
    cos_dtype: str              # "same" | "promote" (fp32 cos, bf16 x) | "lower" (bf16 cos, fp32 x)
    # the style and how the code spells it
    style: str
    spell: dict                 # style-specific spelling choices
    lookalike: str | None
    conj: bool                  # complex: freqs.conj()
    # extra consumers
    pre_read: bool              # the pre-RoPE q_pe read again after RoPE (added to the result)
    twice: bool                 # the rotated q used twice
    cat_nope: bool              # torch.cat((q_nope, q_pe_rotated), -1) as MLA does
    return_k_pre: bool          # the pre-RoPE k_pe returned too
    seed: int
    source: str = field(default="", repr=False)

    def __repr__(self) -> str:  # what hypothesis prints for a failing example; the source comes with it
        return f"Program<{self.describe()}, seed={self.seed}>"

    def _repr_pretty_(self, printer, cycle) -> None:  # hypothesis' pretty printer
        printer.text(repr(self))

    # ------------------------------------------------------------ knowledge
    @property
    def n_ropes(self) -> int:
        return 2 if self.k_src != "none" else 1

    @property
    def pattern(self) -> str | None:
        return PATTERN[self.style]

    @property
    def forms(self) -> set:
        return FORMS[self.style]

    @property
    def expect(self) -> str:
        """"fuse": every RoPE matched; "leave": none matched; "either": numbers only."""
        if self.lookalike is not None:
            return "leave"
        if self.style == "gptj_stack" or self.conj:
            return "either"
        return "fuse"

    @property
    def near_miss_required(self) -> bool:
        return self.lookalike is not None and LOOKALIKES[self.lookalike][2]

    @property
    def one_launch(self) -> set:
        """Allowed counts of rope.one_launch when every RoPE is fused."""
        if self.n_ropes < 2:
            return {0}
        if self.partial and self.partial_where == "inside":
            # k's slice is made after q's RoPE and q's cat reads it first: no merge point
            # without reordering (a limitation of _merge_point, not a bug)
            return {0, 1}
        if self.conj:
            # freqs.conj() is made once per apply_rope call: q and k get different freqs
            # nodes (conj is not a view that dedupe_views merges), so no shared launch
            return {0, 1}
        return {1}

    def expected_counts(self) -> dict:
        if self.pattern is None:
            return {}
        return {self.pattern: self.n_ropes}

    def variants(self) -> list[str]:
        """The less common fusable choices this program makes, for the summary."""
        v = []
        if self.partial:
            v.append(f"partial rotary ({self.partial_where})")
        if self.cos_dtype == "lower":
            v.append("bf16 cos/sin with fp32 x")
        if self.cos_build == "cat_half":
            v.append("cos = cat((c, c), -1)")
        if self.cos_where == "inside":
            v.append("cos unsqueezed per call")
        if self.q_src != "input" and self.nope % 2:
            v.append("odd nope offset")
        if self.q_base != "input":
            v.append(f"q from {self.q_base}")
        if self.k_src != "none":
            v.append(f"k_pe from {self.k_src}")
        return v

    @property
    def width(self) -> int:
        """Width of q_pe / k_pe as the RoPE code receives it."""
        return self.R + self.partial

    @property
    def cos_width(self) -> int:
        return self.R // 2 if self.style in HALF_WIDTH else self.R

    @property
    def tol(self) -> float:
        return 1e-5 if self.dtype == torch.float32 else 1e-2

    def describe(self) -> str:
        dt = str(self.dtype).replace("torch.", "")
        return (f"{self.style}{'/' + self.lookalike if self.lookalike else ''} {self.layout} B{self.B}S{self.S}"
                f"H{self.H}R{self.R} {dt} q={self.q_src}/{self.q_base} k={self.k_src} cos={self.cos_src}"
                f"/{self.cos_bcast}/{self.cos_where}/{self.cos_build}/{self.cos_dtype}"
                f"{' partial=' + str(self.partial) + '/' + self.partial_where if self.partial else ''}")

    # ------------------------------------------------------------ inputs
    def input_specs(self) -> list[tuple[str, tuple, str]]:
        """(name, shape, kind) for each argument of fn, in order."""
        B, S, H, T = self.B, self.S, self.H, self.B * self.S
        specs = []
        qw = self.nope + self.width
        lead = {"BHSD": (B, H, S), "BSHD": (B, S, H), "THD": (T, H)}[self.layout]
        lead_t = {"BHSD": (B, S, H), "BSHD": (B, H, S), "THD": (H, T)}[self.layout]
        k_lead = {"BHSD": (B, 1, S), "BSHD": (B, S, 1), "THD": (T, 1)}[self.layout]
        tok = (T,) if self.layout == "THD" else (B, S)
        if self.q_base == "proj":
            specs += [("hidden", (*tok, HIDDEN), "x"), ("w_q", (HIDDEN, H * qw), "w")]
        elif self.q_base == "input_t":
            specs.append(("q_in", (*lead_t, qw), "x"))
        else:
            specs.append(("q_in", (*lead, qw), "x"))
        if self.lookalike == "other_tensor":
            specs.append(("other_q", (*lead, self.width), "x"))
        if self.k_src == "input":
            specs.append(("k_in", (*k_lead, self.width), "x"))
        elif self.k_src != "none":
            specs.append(("latent", (*tok, LATENT + self.width), "x"))
        if self.k_src != "none" and self.lookalike == "other_tensor":
            specs.append(("other_k", (*k_lead, self.width), "x"))
        if self.style == "complex":
            specs.append(("freqs_cache", (MAX_POS, self.R // 2), "freqs"))
        else:
            w = self.cos_width // 2 if self.cos_build == "cat_half" else self.cos_width
            specs += [("cos_cache", (MAX_POS, w), "cos"), ("sin_cache", (MAX_POS, w), "sin")]
        if self.cos_src == "gather":
            specs.append(("pos", tok, "pos"))
        return specs

    def make_inputs(self, seed: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        cos_dtype = {"same": self.dtype, "promote": torch.float32, "lower": torch.bfloat16}[self.cos_dtype]
        out = []
        for name, shape, kind in self.input_specs():
            if kind == "x":
                t = torch.randn(shape, generator=g).to(self.dtype)
            elif kind == "w":
                t = (torch.randn(shape, generator=g) * shape[0] ** -0.5).to(self.dtype)
            elif kind in ("cos", "sin"):
                # independent random angles per entry: a full-width cos need not repeat its halves
                theta = torch.rand(shape, generator=g) * (2 * math.pi)
                t = (theta.cos() if kind == "cos" else theta.sin()).to(cos_dtype)
            elif kind == "freqs":
                theta = torch.rand(shape, generator=g) * (2 * math.pi)
                t = torch.polar(torch.ones(shape), theta)
            else:  # positions
                t = torch.randint(0, MAX_POS, shape, generator=g)
            out.append(t)
        return out

    # ------------------------------------------------------------ code
    def build(self):
        if not self.source:
            self.source = render(self)
        namespace: dict = {}
        exec(compile(self.source, f"<rope program {self.seed}>", "exec"), namespace)
        return namespace["fn"]


# ---------------------------------------------------------------- rendering

def _ndim(p: Program) -> int:
    return 3 if p.layout == "THD" else 4


def _rotate_half(p: Program) -> str:
    sp = p.spell
    h = p.R // 2
    neg = {"minus": "-x2", "method": "x2.neg()", "func": "torch.neg(x2)"}[sp["neg"]]
    cat_dim = -1 if sp["cat_dim"] == "neg" else _ndim(p) - 1
    if p.lookalike == "not_half":
        k = sp["not_half_at"]
        halves = f"x1 = x[..., :{k}]\n    x2 = x[..., {k}:]"
    else:
        halves = {
            "slice": f"x1 = x[..., :{h}]\n    x2 = x[..., {h}:]",
            "slice_shape": "x1 = x[..., : x.shape[-1] // 2]\n    x2 = x[..., x.shape[-1] // 2 :]",
            "chunk": "x1, x2 = x.chunk(2, dim=-1)",
            "split_int": "x1, x2 = x.split(x.shape[-1] // 2, dim=-1)",
            "split_list": f"x1, x2 = torch.split(x, [{h}, {h}], dim=-1)",
        }[sp["rotate"]]
    return f"def rotate_half(x):\n    {halves}\n    return torch.cat(({neg}, x1), dim={cat_dim})\n"


def _deinterleave(p: Program, name: str) -> list[str]:
    sp = p.spell
    n = _ndim(p)
    shape_names = {"BHSD": "b, h, s, d", "BSHD": "b, s, h, d", "THD": "t, h, d"}[p.layout]
    lead = shape_names.rsplit(", ", 1)[0]
    pair = "2, d // 2" if p.style == "interleave_halves" else "d // 2, 2"
    lines = [f"{shape_names} = {name}.shape"]
    first = {"view": f"{name}.view({lead}, {pair})", "reshape": f"{name}.reshape({lead}, {pair})",
             "view_star": f"{name}.view(*{name}.shape[:-1], {pair})"}[sp["deint_first"]]
    swap = {"neg": ".transpose(-1, -2)", "pos": f".transpose({n}, {n - 1})",
            "permute": f".permute({', '.join(map(str, [*range(n - 1), n, n - 1]))})"}[sp["deint_swap"]]
    back = {"reshape": f".reshape({lead}, d)", "flatten": ".flatten(-2)",
            "reshape_shape": f".reshape({name}.shape)"}[sp["deint_back"]]
    lines.append(f"{name} = {first}{swap}{back}")
    return lines


def _mul(a: str, b: str, swap: bool) -> str:
    return f"{b} * {a}" if swap else f"{a} * {b}"


def _apply_body(p: Program) -> list[str]:
    """Body of apply_rope(x, cos, sin, other): returns the rotated x."""
    sp, look = p.spell, p.lookalike
    lines = []
    if p.partial and p.partial_where == "inside":
        lines += [f"x_pass = x[..., {p.R}:]", f"x = x[..., :{p.R}]"]
        if look == "other_tensor":
            lines.append(f"other = other[..., :{p.R}]")
    if p.cos_where == "inside":
        d = _cos_unsqueeze_dim(p)
        if p.style == "complex":
            lines.append(f"cos = cos.unsqueeze({d})")
        else:
            lines += [f"cos = cos.unsqueeze({d})", f"sin = sin.unsqueeze({d})"]
    if p.style in NEOX_FAMILY:
        if p.style != "neox":
            lines += _deinterleave(p, "x")
        rot_of = "other" if look == "other_tensor" else "x"
        t1 = _mul("x", "cos", sp["mul1"])
        t2 = _mul(f"rotate_half({rot_of})", "sin", sp["mul2"])
        if look == "alpha":
            out = f"torch.add({t1}, {t2}, alpha=2)"
        elif look == "sign_flip":
            out = f"{t1} - {t2}"
        else:
            out = f"{t2} + {t1}" if sp["add_swap"] else f"{t1} + {t2}"
        lines.append(f"out = {out}")
    elif p.style in PAIRS_FAMILY:
        h = p.R // 2
        second = "other" if look == "other_tensor" else "x"
        if p.style in ("even_odd", "gptj_stack"):
            ev, od = {"0::2": ("0::2", "1::2"), "::2": ("::2", "1::2"),
                      "explicit": (f"0:{p.R}:2", f"1:{p.R}:2")}[sp["strided"]]
            if look == "swapped_slices":
                ev, od = od, ev
            lines += [f"a = x[..., {ev}]", f"b = {second}[..., {od}]"]
        else:
            if sp["halves"] == "slice":
                lines += [f"a = x[..., :{h}]", f"b = {second}[..., {h}:]"]
            elif sp["halves"] == "chunk" and second == "x":
                lines.append("a, b = x.chunk(2, dim=-1)")
            elif sp["halves"] == "split" and second == "x":
                lines.append(f"a, b = torch.split(x, {h}, dim=-1)")
            else:
                lines += [f"a = x.chunk(2, dim=-1)[0]", f"b = {second}.chunk(2, dim=-1)[1]"]
        ac, bs = _mul("a", "cos", sp["m_ac"]), _mul("b", "sin", sp["m_bs"])
        bc, as_ = _mul("b", "cos", sp["m_bc"]), _mul("a", "sin", sp["m_as"])
        if look == "wrong_hi":
            bc, as_ = _mul("a", "cos", sp["m_bc"]), _mul("b", "sin", sp["m_as"])
        if look == "sign_flip":
            lo, hi = f"{ac} + {bs}", f"{bc} - {as_}"
        else:
            lo = f"{ac} - {bs}"
            if look == "alpha":
                hi = f"torch.add({bc}, {as_}, alpha=2)"
            else:
                hi = f"{as_} + {bc}" if sp["add_swap"] else f"{bc} + {as_}"
        lines += [f"lo = {lo}", f"hi = {hi}"]
        if p.style == "gptj_stack":
            lines.append("out = torch.stack((lo, hi), dim=-1).flatten(-2)")
        else:
            cat_dim = -1 if sp["cat_dim"] == "neg" else _ndim(p) - 1
            lines.append(f"out = torch.cat((lo, hi), dim={cat_dim})")
    elif p.style == "complex":
        to_f = {"float": "x.float()", "to": "x.to(torch.float32)"}[sp["to_float"]]
        pairs = {"reshape": f"{to_f}.reshape(*x.shape[:-1], -1, 2)",
                 "view": f"{to_f}.view(*x.shape[:-1], -1, 2)",
                 "unflatten": f"{to_f}.unflatten(-1, (-1, 2))"}[sp["pairs"]]
        freqs = "cos.conj()" if p.conj else "cos"
        prod = f"{freqs} * xc" if sp["mul1"] else f"xc * {freqs}"
        flat = {"neg": ".flatten(-2)", "pos": f".flatten({_ndim(p) - 1})",
                "reshape": ".reshape(x.shape)"}[sp["flatten"]]
        lines += [f"xc = torch.view_as_complex({pairs})", f"out = torch.view_as_real({prod}){flat}"]
        if look != "no_type_as":
            back = {"type_as": ".type_as(x)", "to": ".to(x.dtype)", "none": ""}[sp["back"]]
            if back:
                lines.append(f"out = out{back}")
    if p.partial and p.partial_where == "inside":
        lines.append("out = torch.cat((out, x_pass), dim=-1)")
    lines.append("return out")
    return lines


def _cos_unsqueeze_dim(p: Program) -> int:
    """The dim cos/sin [S, W] / [B, S, W] / [T, W] are unsqueezed at (inside apply_rope)."""
    if p.layout == "THD":
        return 1
    if p.layout == "BHSD":
        return 1 if p.cos_src == "gather" else 0   # [B,1,S,W] / [1,S,W]
    return 2 if p.cos_src == "gather" else 1       # [B,S,1,W] / [S,1,W]


def _cos_lines(p: Program) -> list[str]:
    names = ["cos"] if p.style == "complex" else ["cos", "sin"]
    caches = {"cos": "freqs_cache" if p.style == "complex" else "cos_cache", "sin": "sin_cache"}
    S = p.B * p.S if p.layout == "THD" else p.S
    lines = []
    for n in names:
        if p.cos_src == "slice":
            lines.append(f"{n} = {caches[n]}[{p.cos_off}:{p.cos_off + S}]")
        else:
            lines.append(f"{n} = {caches[n]}[pos]")
    if p.cos_build == "cat_half":
        lines += [f"{n} = torch.cat(({n}, {n}), dim=-1)" for n in names]
    if p.cos_where == "inside":
        return lines
    b = p.cos_bcast
    for n in names:
        if p.layout == "THD":
            expr = {"unsqueeze": f"{n}.unsqueeze(1)", "index": f"{n}[:, None]"}[b]
        elif p.layout == "BHSD" and p.cos_src == "slice":
            expr = {"none": n, "index": f"{n}[None, None]", "unsqueeze": f"{n}.unsqueeze(0).unsqueeze(0)",
                    "view": f"{n}.view(1, 1, {S}, {n}.shape[-1])"}[b]
        elif p.layout == "BHSD":
            expr = {"unsqueeze": f"{n}.unsqueeze(1)", "index": f"{n}[:, None]"}[b]
        elif p.cos_src == "slice":  # BSHD
            expr = {"unsqueeze": f"{n}.unsqueeze(1)", "index": f"{n}[None, :, None, :]",
                    "view": f"{n}.view(1, {S}, 1, {n}.shape[-1])"}[b]
        else:
            expr = {"unsqueeze": f"{n}.unsqueeze(2)", "index": f"{n}[:, :, None]"}[b]
        if expr != n:
            lines.append(f"{n} = {expr}")
    return lines


def _q_lines(p: Program) -> list[str]:
    B, S, H, T = p.B, p.S, p.H, p.B * p.S
    qw = p.nope + p.width
    lines = []
    if p.q_base == "proj":
        if p.layout == "THD":
            lines.append(f"q = (hidden @ w_q).view({T}, {H}, {qw})")
        elif p.layout == "BSHD":
            lines.append(f"q = (hidden @ w_q).view({B}, {S}, {H}, {qw})")
        else:
            lines.append(f"q = (hidden @ w_q).view({B}, {S}, {H}, {qw}).transpose(1, 2)")
    elif p.q_base == "input_t":
        lines.append(f"q = q_in.transpose({0 if p.layout == 'THD' else 1}, {1 if p.layout == 'THD' else 2})")
    else:
        lines.append("q = q_in")
    if p.q_src == "input":
        lines.append("q_pe = q")
    elif p.q_src == "split":
        lines.append(f"q_nope, q_pe = torch.split(q, [{p.nope}, {p.width}], dim=-1)")
    elif p.q_src == "split_method":
        lines.append(f"q_nope, q_pe = q.split([{p.nope}, {p.width}], dim=-1)")
    else:
        lines.append(f"q_nope, q_pe = q[..., :{p.nope}], q[..., {p.nope}:]")
    return lines


def _k_lines(p: Program) -> list[str]:
    if p.k_src == "none":
        return []
    B, S, T, W = p.B, p.S, p.B * p.S, p.width
    if p.k_src == "input":
        return ["k_pe = k_in"]
    if p.k_src == "latent_split":
        lines = [f"kv_c, k_pe = torch.split(latent, [{LATENT}, {W}], dim=-1)"]
    else:
        lines = [f"k_pe = latent[..., {LATENT}:]"]
    if p.k_view == "unsqueeze":
        dim = {"BHSD": 1, "BSHD": 2, "THD": 1}[p.layout]
        lines.append(f"k_pe = k_pe.unsqueeze({dim})")
    else:
        lines.append({"BHSD": f"k_pe = k_pe.view({B}, {S}, 1, {W}).transpose(1, 2)",
                      "BSHD": f"k_pe = k_pe.view({B}, {S}, 1, {W})",
                      "THD": f"k_pe = k_pe.view({T}, 1, {W})"}[p.layout])
    return lines


def render(p: Program) -> str:
    parts = ["import torch\n"]
    if p.style in NEOX_FAMILY:
        parts.append(_rotate_half(p))
    apply_body = textwrap.indent("\n".join(_apply_body(p)), "    ")
    parts.append(f"def apply_rope(x, cos, sin, other=None):\n{apply_body}\n")
    args = [name for name, _, _ in p.input_specs()]
    body = _cos_lines(p) + _q_lines(p) + _k_lines(p)
    sin = "None" if p.style == "complex" else "sin"
    outside = p.partial and p.partial_where == "outside"
    if outside:
        body += [f"q_rot, q_pass = q_pe[..., :{p.R}], q_pe[..., {p.R}:]"]
        if p.k_src != "none":
            body += [f"k_rot, k_pass = k_pe[..., :{p.R}], k_pe[..., {p.R}:]"]
    other_q = ", other_q" if p.lookalike == "other_tensor" else ""
    other_k = ", other_k" if p.lookalike == "other_tensor" else ""
    if outside and other_q:
        other_q, other_k = f", other_q[..., :{p.R}]", f", other_k[..., :{p.R}]"
    q_x, k_x = ("q_rot", "k_rot") if outside else ("q_pe", "k_pe")
    body.append(f"q_out = apply_rope({q_x}, cos, {sin}{other_q})")
    if p.k_src != "none":
        body.append(f"k_out = apply_rope({k_x}, cos, {sin}{other_k})")
    if outside:
        body.append("q_out = torch.cat((q_out, q_pass), dim=-1)")
        if p.k_src != "none":
            body.append("k_out = torch.cat((k_out, k_pass), dim=-1)")
    outs = []
    body.append("y = q_out")
    if p.k_src != "none" and p.k_use == "add":
        body.append("y = y + k_out")
    if p.pre_read:
        body.append("y = y + q_pe  # the pre-RoPE q_pe read again")
    if p.cat_nope and p.q_src != "input":
        body.append("y = torch.cat((q_nope, y), dim=-1)")
    outs.append("y")
    if p.twice:
        outs.append("q_out * 0.5")
    if p.k_src != "none" and p.k_use == "return":
        outs.append("k_out")
    if p.return_k_pre and p.k_src != "none":
        outs.append("k_pe")
    body.append(f"return {', '.join(outs)}" + ("," if len(outs) == 1 else ""))
    parts.append(f"def fn({', '.join(args)}):\n" + textwrap.indent("\n".join(body), "    ") + "\n")
    return "\n\n".join(parts)


# ---------------------------------------------------------------- the strategy

def _bool(draw) -> bool:
    return draw(st.booleans())


@st.composite
def programs(draw, lookalike_pct: int = 25) -> Program:
    layout = draw(st.sampled_from(["BHSD", "BSHD", "THD"]))
    B = draw(st.integers(1, 2))
    S = draw(st.integers(1, 4))
    H = draw(st.integers(1, 8))
    R = draw(st.sampled_from([4, 8, 16, 64]))
    # a look-alike first (each equally likely), then a style and dtype it applies to
    lookalike = None
    if draw(st.integers(0, 99)) < lookalike_pct:
        lookalike = draw(st.sampled_from(sorted(LOOKALIKES)))
    if lookalike is None:
        dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
        style = draw(st.sampled_from(["neox", "neox", "deinterleave", "interleave_halves", "even_odd", "halves",
                                      "complex", "complex", "gptj_stack"]))
    else:
        styles, need, _ = LOOKALIKES[lookalike]
        dtype = need or draw(st.sampled_from([torch.float32, torch.bfloat16]))
        style = draw(st.sampled_from(sorted(styles)))

    q_src = draw(st.sampled_from(["input", "split", "split_method", "slice"]))
    q_base = draw(st.sampled_from(["input", "input_t", "proj"] if q_src != "input" else ["input", "input_t"]))
    # view_as_complex needs an even storage offset and strides: odd nope only for real styles
    nopes = [4, 8, 16, R] if style == "complex" else [1, 3, 4, 8, 16, R]
    nope = draw(st.sampled_from(nopes)) if q_src != "input" else 0
    partial = draw(st.sampled_from([0, 0, 0, 4, R]))
    partial_where = draw(st.sampled_from(["outside", "inside"]))

    k_src = draw(st.sampled_from(["none", "input", "latent_split", "latent_slice"]))
    k_view = draw(st.sampled_from(["unsqueeze", "view"]))
    k_use = draw(st.sampled_from(["return", "add"]))

    cos_src = draw(st.sampled_from(["slice", "gather"]))
    S_tot = B * S if layout == "THD" else S
    cos_off = draw(st.integers(0, MAX_POS - S_tot)) if cos_src == "slice" else 0
    if layout == "THD":
        bcasts = ["unsqueeze", "index"]
    elif layout == "BHSD" and cos_src == "slice":
        bcasts = ["none", "index", "unsqueeze", "view"]
    elif cos_src == "slice":
        bcasts = ["unsqueeze", "index", "view"]
    else:
        bcasts = ["unsqueeze", "index"]
    cos_bcast = draw(st.sampled_from(bcasts))
    cos_where = draw(st.sampled_from(["outside", "outside", "inside"]))
    cos_build = draw(st.sampled_from(["cache", "cat_half"])) if style in NEOX_FAMILY else "cache"
    conj = style == "complex" and draw(st.integers(0, 5)) == 0

    spell = {
        "neg": draw(st.sampled_from(["minus", "method", "func"])),
        "cat_dim": draw(st.sampled_from(["neg", "pos"])),
        "rotate": draw(st.sampled_from(["slice", "slice_shape", "chunk", "split_int", "split_list"])),
        "mul1": _bool(draw), "mul2": _bool(draw), "add_swap": _bool(draw),
        "deint_first": draw(st.sampled_from(["view", "reshape", "view_star"])),
        "deint_swap": draw(st.sampled_from(["neg", "pos", "permute"])),
        "deint_back": draw(st.sampled_from(["reshape", "flatten", "reshape_shape"])),
        "strided": draw(st.sampled_from(["0::2", "::2", "explicit"])),
        "halves": draw(st.sampled_from(["slice", "chunk", "split"])),
        "m_ac": _bool(draw), "m_bs": _bool(draw), "m_bc": _bool(draw), "m_as": _bool(draw),
        "to_float": draw(st.sampled_from(["float", "to"])),
        "pairs": draw(st.sampled_from(["reshape", "view", "unflatten"])),
        "flatten": draw(st.sampled_from(["neg", "pos", "reshape"])),
        "back": draw(st.sampled_from(["type_as", "to"] + (["none"] if dtype == torch.float32 else []))),
    }

    if lookalike == "not_half":
        spell["not_half_at"] = draw(st.sampled_from([k for k in range(1, R) if k != R // 2]))
    cos_dtype = "same"
    if lookalike == "promote":
        cos_dtype = "promote"
    elif style != "complex" and dtype == torch.float32 and draw(st.integers(0, 5)) == 0:
        cos_dtype = "lower"

    p = Program(
        layout=layout, B=B, S=S, H=H, R=R, dtype=dtype, q_src=q_src, q_base=q_base, nope=nope,
        partial=partial, partial_where=partial_where, k_src=k_src, k_view=k_view, k_use=k_use,
        cos_src=cos_src, cos_off=cos_off, cos_bcast=cos_bcast, cos_where=cos_where, cos_build=cos_build,
        cos_dtype=cos_dtype, style=style, spell=spell, lookalike=lookalike, conj=conj,
        pre_read=_bool(draw), twice=_bool(draw), cat_nope=_bool(draw), return_k_pre=_bool(draw),
        seed=draw(st.integers(0, 2**31 - 1)),
    )
    p.source = render(p)
    return p
