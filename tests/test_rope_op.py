"""torch.ops.mla.rope as an op: opcheck, the reference semantics, and errors
that name the argument at fault."""
import pytest
import torch

from mla_compile.custom_ops import rope_reference

rope = torch.ops.mla.rope


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def test_opcheck_reference():
    q, k = torch.randn(2, 4, 5, 16), torch.randn(2, 1, 5, 16)
    cos, sin = torch.randn(2, 1, 5, 16), torch.randn(2, 1, 5, 16)
    for args in [([q, k], cos, sin, False, False, "reference"),
                 ([q], cos[..., :8], sin[..., :8], True, True, "reference")]:
        torch.library.opcheck(rope.default, args)


def test_reference_is_eager_neox():
    x, cos, sin = torch.randn(3, 2, 6, 32), torch.randn(6, 32), torch.randn(6, 32)
    torch.testing.assert_close(rope_reference(x, cos, sin, False, False), x * cos + rotate_half(x) * sin)


def test_reference_is_complex_multiplication():
    x = torch.randn(2, 6, 3, 16)
    freqs = torch.polar(torch.ones(6, 8), torch.randn(6, 8)).view(1, 6, 1, 8)
    expected = torch.view_as_real(torch.view_as_complex(x.reshape(2, 6, 3, 8, 2)) * freqs).flatten(3)
    torch.testing.assert_close(rope_reference(x, freqs.real, freqs.imag, True, True), expected)


def test_outputs_are_new_tensors():
    x, cos, sin = torch.randn(2, 4, 16), torch.randn(2, 1, 16), torch.randn(2, 1, 16)
    saved = x.clone()
    (out,) = rope([x], cos, sin, False, False, "reference")
    assert out.data_ptr() != x.data_ptr() and torch.equal(x, saved)


@pytest.mark.parametrize("args, message", [
    (lambda x, c: ([], c, c), "xs must hold 1 or 2 tensors"),
    (lambda x, c: ([x, x, x], c, c), "xs must hold 1 or 2 tensors"),
    (lambda x, c: ([x.int()], c, c), r"xs\[0\] dtype must be one of"),
    (lambda x, c: ([x[..., :15]], c[..., :15], c[..., :15]), "rotary dim .* must be even"),
    (lambda x, c: ([x], c[..., :4], c[..., :4]), "cos/sin width must be 16 or 8"),
    (lambda x, c: ([x], c, c[..., :8]), "must have one shape"),
    (lambda x, c: ([x], torch.randn(3, 1, 16), torch.randn(3, 1, 16)), "must broadcast to xs"),
    (lambda x, c: ([x.view(1, 1, 1, 1, 2, 4, 16)], c, c), "1..4 leading dims"),
])
def test_invalid_arguments_are_named(args, message):
    x, cos = torch.randn(2, 4, 16), torch.randn(2, 1, 16)
    xs, c, s = args(x, cos)
    with pytest.raises(ValueError, match=f"mla.rope: .*{message}"):
        rope(xs, c, s, False, False, "reference")


def test_invalid_kernel_choice():
    x, cos = torch.randn(2, 4, 16), torch.randn(2, 1, 16)
    with pytest.raises(ValueError, match="kernel must be one of"):
        rope([x], cos, cos, False, False, "cuda")
