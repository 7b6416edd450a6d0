"""Every Triton kernel launch of the package goes through `launch`.

Inside a compiled graph, lowering (passes/inline_launches.py) traces an op's
computation on fake tensors: there `launch` wraps the kernel
(`torch.library.wrap_triton`), so the graph holds `triton_kernel_wrapper_functional`
nodes and Inductor emits the launches in its generated code like its own kernels (no
dispatcher hop, no Python per call). On real tensors (the eager ops) the kernel is
called straight away; under TRITON_INTERPRET=1 a kernel is not a JITFunction and is
always called directly.
"""
from __future__ import annotations

from ..compat import wrap_triton

try:
    from triton.runtime.jit import JITFunction
except ImportError:  # Triton is optional on CPU: no kernel is ever launched then
    JITFunction = ()


def sinks_pointer(sinks, unused):
    """The kernels' SINKS argument: they read head h's sink at SINKS + h, so an [H] view
    with another stride (one logit expanded over the heads: stride 0) is copied first;
    `unused` (any tensor) when there are none."""
    return unused if sinks is None else sinks.contiguous()


def is_traced(t) -> bool:
    """Whether `t` is a tensor of a trace (fake, maybe functional-wrapped): its
    sizes may be symbolic and it has no data pointer."""
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(t)


def tma_aligned(t) -> bool:
    """Whether a TMA descriptor can read `t`: unit last stride, 16-byte aligned base and
    other strides (in bytes); a traced tensor's base is checked when the real call runs."""
    from .checks import known_true

    el = t.element_size()
    return (known_true(t.stride(-1) == 1) and (is_traced(t) or t.data_ptr() % 16 == 0)
            and all(known_true(s * el % 16 == 0) for s in t.stride()[:-1]))


def launch(kernel, grid, first, *args, **kwargs) -> None:
    """kernel[grid](first, *args, **kwargs); traced when `first` (a tensor) is."""
    if isinstance(kernel, JITFunction) and is_traced(first):
        wrap_triton(kernel)[grid](first, *args, **kwargs)
    else:
        kernel[grid](first, *args, **kwargs)
