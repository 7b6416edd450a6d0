"""The RoPE code shapes we recognise, each as the eager code it matches and a
search function over the aten graph (as seen at joint_custom_pre_pass).

Every search takes an anchor node (the last op of the shape) and returns a
RopeMatch, or raises NoMatch. `looks_like` is a cheap first test: an anchor
that passes it and then fails the search is reported as a near miss.
What is rotated, and so the rotary dim, is what the graph slices (seed 001).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

from ..compat import known_broadcasts_to
from .match_utils import (
    FLOAT_DTYPES, NoMatch, aten, expect_op, first_match, half_of, is_last_dim, is_op,
    orderings, plain_binary, prims, require, same_shape, strided_half_of, val,
)


@dataclass(frozen=True)
class RopeMatch:
    form: str                   # which code shape matched
    x: fx.Node                  # the tensor rotated (before any de-interleave view)
    cos: fx.Node
    sin: fx.Node
    interleaved_in: bool
    interleaved_out: bool
    output: fx.Node             # the node whose value mla.rope replaces
    complex_freqs: bool = False  # cos/sin are the real/imag parts of `cos`


# ---------------------------------------------------------------- neox
# def rotate_half(x):                       # or: x1, x2 = x.chunk(2, -1)
#     x1, x2 = x[..., : d // 2], x[..., d // 2 :]
#     return torch.cat((-x2, x1), dim=-1)
# out = x * cos + rotate_half(x) * sin      # any operand order
#
# With the older de-interleave first (transformers DeepSeek-V2/V3):
# x = x.view(b, h, s, d // 2, 2).transpose(4, 3).reshape(b, h, s, d)

def rotate_half_of(node: fx.Node) -> fx.Node:
    cat = expect_op(node, aten.cat.default, what="rotate_half")
    parts, dim = cat.args[0], cat.args[1] if len(cat.args) > 1 else 0
    require(len(parts) == 2 and is_last_dim(dim, cat), "cat is not of two parts along the last dim")
    neg = expect_op(parts[0], aten.neg.default, what="first half of rotate_half")
    hi_base, hi = half_of(neg.args[0])
    lo_base, lo = half_of(parts[1])
    require((hi, lo) == ("hi", "lo"), f"rotate_half takes (-{hi}, {lo}) halves, expected (-hi, lo)")
    require(hi_base is lo_base, "rotate_half halves come from different tensors")
    return lo_base


def deinterleaved_source(node: fx.Node) -> fx.Node | None:
    """x if node is x.view(..., d/2, 2).transpose(-1, -2).reshape(..., d), else None."""
    try:
        out = expect_op(node, aten.view.default, aten._unsafe_view.default, aten.reshape.default, what="")
        clone = out.args[0]
        permute = clone.args[0] if is_op(clone, aten.clone.default) else clone
        permute = expect_op(permute, aten.permute.default, aten.transpose.int, what="")
        pairs = expect_op(permute.args[0], aten.view.default, aten.reshape.default, what="")
        x = pairs.args[0]
        xs, ps = val(x).shape, val(pairs).shape
        d = xs[-1]
        require(same_shape(ps, (*xs[:-1], d // 2, 2)) and same_shape(val(out).shape, xs), "")
        n = len(ps)
        if is_op(permute, aten.permute.default):
            require(list(permute.args[1]) == [*range(n - 2), n - 1, n - 2], "")
        else:
            require({d_ % n for d_ in permute.args[1:3]} == {n - 1, n - 2}, "")
        return x
    except NoMatch:
        return None


def neox_looks_like(node: fx.Node) -> bool:
    return is_op(node, aten.add.Tensor) and any(
        is_op(m, aten.mul.Tensor) and any(is_op(a, aten.cat.default) for a in m.args)
        for m in node.args)


def search_neox(add: fx.Node) -> RopeMatch:
    plain_binary(add, "add")

    def with_terms(terms):
        direct, rotated = terms
        expect_op(direct, aten.mul.Tensor, what="x*cos term")
        expect_op(rotated, aten.mul.Tensor, what="rotate_half(x)*sin term")
        plain_binary(direct, "mul")

        def with_sin(rot_sin):
            rot, sin = rot_sin
            y = rotate_half_of(rot)

            def with_cos(x_cos):
                x, cos = x_cos
                require(x is y, "x*cos and rotate_half(x)*sin use different tensors")
                source = deinterleaved_source(y)
                if source is not None:
                    return RopeMatch("neox_deinterleave", source, cos, sin, True, False, add)
                return RopeMatch("neox", y, cos, sin, False, False, add)
            return first_match(orderings(direct), with_cos)
        return first_match(orderings(rotated), with_sin)
    return first_match(orderings(add), with_terms)


# ---------------------------------------------------------------- pairs
# x1, x2 = x[..., 0::2], x[..., 1::2]       # or the halves x[..., :d/2], x[..., d/2:]
# out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)   # cos: d/2 wide

def pairs_looks_like(node: fx.Node) -> bool:
    return (is_op(node, aten.cat.default) and len(node.args[0]) == 2
            and is_op(node.args[0][0], aten.sub.Tensor) and is_op(node.args[0][1], aten.add.Tensor))


def _pair_source(a: fx.Node, b: fx.Node) -> tuple[fx.Node, bool]:
    """(x, interleaved) for a, b = x[..., 0::2], x[..., 1::2] or the two halves of x."""
    if is_op(a, aten.slice.Tensor) and len(a.args) >= 5 and a.args[4] == 2:
        (xa, pa), (xb, pb) = strided_half_of(a), strided_half_of(b)
        require(xa is xb and (pa, pb) == (0, 1), "even/odd slices are not x[0::2], x[1::2] of one x")
        return xa, True
    (xa, ha), (xb, hb) = half_of(a), half_of(b)
    require(xa is xb and (ha, hb) == ("lo", "hi"), "halves are not x[:d/2], x[d/2:] of one x")
    return xa, False


def _products(node: fx.Node, op, what: str):
    expect_op(node, op, what=what)
    first, second = plain_binary(node, str(op))
    expect_op(first, aten.mul.Tensor, what=f"first term of {what}")
    expect_op(second, aten.mul.Tensor, what=f"second term of {what}")
    return first, second


def search_pairs(cat: fx.Node) -> RopeMatch:
    parts, dim = cat.args[0], cat.args[1] if len(cat.args) > 1 else 0
    require(is_last_dim(dim, cat), "cat is not along the last dim")
    lo_ac, lo_bs = _products(parts[0], aten.sub.Tensor, "lo = a*cos - b*sin")
    hi_terms = _products(parts[1], aten.add.Tensor, "hi = b*cos + a*sin")

    def bind(choice):
        (a, cos), (b, sin), (hi_bc, hi_as) = choice
        x, interleaved = _pair_source(a, b)
        require(
            any({hi_bc.args[0], hi_bc.args[1]} == {b, cos} and {hi_as.args[0], hi_as.args[1]} == {a, sin}
                for hi_bc, hi_as in orderings_of(hi_terms)),
            "hi is not b*cos + a*sin with the lo half's a, b, cos, sin")
        form = "even_odd" if interleaved else "halves"
        return RopeMatch(form, x, cos, sin, interleaved, False, cat)

    choices = [(ac, bs, hi_terms) for ac in orderings(lo_ac) for bs in orderings(lo_bs)]
    return first_match(choices, bind)


def orderings_of(pair):
    return [pair, pair[::-1]]


# ---------------------------------------------------------------- complex
# xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
# out = torch.view_as_real(xc * freqs_cis).flatten(3).type_as(x)

def complex_looks_like(node: fx.Node) -> bool:
    return is_op(node, aten.view_as_real.default) and is_op(node.args[0], aten.mul.Tensor)


def search_complex(as_real: fx.Node) -> RopeMatch:
    mul = as_real.args[0]
    plain_binary(mul, "mul")

    def bind(order):
        xc, freqs = order
        expect_op(xc, aten.view_as_complex.default, what="complex operand")
        pairs = expect_op(xc.args[0], aten.view.default, aten.reshape.default, what="view_as_complex input")
        x = pairs.args[0]
        if is_op(x, prims.convert_element_type.default, aten._to_copy.default):
            require(val(x).dtype == torch.float32, "x is converted to a type other than float32")
            x = x.args[0]
        xs = val(x).shape
        require(same_shape(val(pairs).shape, (*xs[:-1], xs[-1] // 2, 2)), "x is not viewed as (..., d/2, 2)")
        require(val(freqs).dtype == torch.complex64, f"freqs_cis is {val(freqs).dtype}, expected complex64")
        return x, freqs

    x, freqs = first_match(orderings(mul), bind)
    require(len(as_real.users) == 1, "view_as_real result has several users")
    flat = next(iter(as_real.users))
    expect_op(flat, aten.view.default, aten.reshape.default, aten._unsafe_view.default, what="flatten")
    require(same_shape(val(flat).shape, val(x).shape), "view_as_real result is not flattened back to x's shape")
    output = flat
    if len(flat.users) == 1:
        user = next(iter(flat.users))
        if is_op(user, prims.convert_element_type.default, aten._to_copy.default) and val(user).dtype == val(x).dtype:
            output = user
    return RopeMatch("complex", x, freqs, freqs, True, True, output, complex_freqs=True)


SEARCHES = (
    ("rope.neox", neox_looks_like, search_neox),
    ("rope.pairs", pairs_looks_like, search_pairs),
    ("rope.complex", complex_looks_like, search_complex),
)


def check_operands(m: RopeMatch) -> None:
    """What the fused op can express, checked on the bound tensors."""
    x, out = val(m.x), val(m.output)
    d = x.shape[-1]
    require(x.dtype in FLOAT_DTYPES, f"x dtype {x.dtype} is not fp16/bf16/fp32")
    require(out.dtype == x.dtype, f"result dtype {out.dtype} differs from x's {x.dtype} (type promotion)")
    require(same_shape(out.shape, x.shape), f"result shape {tuple(out.shape)} is not x's {tuple(x.shape)}")
    require(isinstance(d, int) and d % 2 == 0, f"rotary dim {d} is not a static even size")
    require(2 <= x.dim() <= 5, f"x has {x.dim()} dims; the kernel takes 2 to 5")
    if m.complex_freqs:
        width = val(m.cos).shape[-1]
        lead = val(m.cos).shape[:-1]
    else:
        c, s = val(m.cos), val(m.sin)
        require(c.dtype in FLOAT_DTYPES and s.dtype in FLOAT_DTYPES, "cos/sin are not floating point")
        require(same_shape(c.shape, s.shape), f"cos {tuple(c.shape)} and sin {tuple(s.shape)} differ in shape")
        width, lead = c.shape[-1], c.shape[:-1]
    require(width in (d, d // 2), f"cos/sin width {width} is neither d={d} nor d/2")
    require(known_broadcasts_to(lead, x.shape[:-1]), f"cos/sin shape {tuple(lead)} does not broadcast to x's")
    require(val(m.x).device == val(m.cos).device, "x and cos/sin are on different devices")
