"""Seed 003b: the fused RoPE is functional. The pre-RoPE tensor keeps its value
for later readers, and a graph input is never mutated. A bare in-place
replacement (what the vLLM fast path assumed) breaks both cases."""
import pytest
import torch

import mla_compile.passes.rope as rope_pass


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rope_then_reread(x, w, cos, sin):
    q = x @ w                                  # an intermediate, not an input
    q_rot = q * cos + rotate_half(q) * sin
    return q_rot + q                           # q read again after RoPE


def rope_of_input(q, cos, sin):
    return q * cos + rotate_half(q) * sin


def inputs_reread():
    return torch.randn(3, 8, 16), torch.randn(16, 16) / 4, torch.randn(8, 16), torch.randn(8, 16)


def inputs_of_input():
    return torch.randn(2, 3, 8, 16), torch.randn(8, 16), torch.randn(8, 16)


@torch.library.custom_op("mla_test::rope_bare_inplace", mutates_args=())
def rope_bare_inplace(xs: list[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor,
                      interleaved_in: bool, interleaved_out: bool, kernel: str = "auto") -> list[torch.Tensor]:
    """What not to do: rotate in place while declaring no mutation."""
    outs = []
    for x in xs:
        x.copy_(torch.ops.mla.rope([x], cos, sin, interleaved_in, interleaved_out, "reference")[0])
        outs.append(x.clone())
    return outs


@rope_bare_inplace.register_fake
def _(xs, cos, sin, interleaved_in, interleaved_out, kernel="auto"):
    return [torch.empty_like(x) for x in xs]


def compile_and_run(fn, args):
    reports = []
    out = torch.compile(fn, backend="mla", options={"report": reports.append})(*args)
    assert reports[0].counts() == {"rope.neox": 1}
    return out


@pytest.mark.parametrize("fn, make", [(rope_then_reread, inputs_reread), (rope_of_input, inputs_of_input)])
def test_functional_rope_keeps_values(fn, make):
    args = make()
    saved = [a.clone() for a in args]
    out = compile_and_run(fn, args)
    torch.testing.assert_close(out, fn(*saved))
    for a, s in zip(args, saved):
        assert torch.equal(a, s), "the caller's tensor was modified"


def test_bare_inplace_replacement_would_read_rotated_values(monkeypatch):
    monkeypatch.setattr(rope_pass, "rope_op", torch.ops.mla_test.rope_bare_inplace.default)
    args = inputs_reread()
    out = compile_and_run(rope_then_reread, args)
    assert not torch.allclose(out, rope_then_reread(*args), rtol=1e-3, atol=1e-3)


def test_bare_inplace_replacement_would_mutate_callers_input(monkeypatch):
    monkeypatch.setattr(rope_pass, "rope_op", torch.ops.mla_test.rope_bare_inplace.default)
    args = inputs_of_input()
    saved = args[0].clone()
    compile_and_run(rope_of_input, args)
    assert not torch.equal(args[0], saved)
