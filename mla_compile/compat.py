"""Every torch-version difference (2.11 .. 2.15), and Triton's where our kernels meet one,
lives here and nowhere else."""
from __future__ import annotations

import json
from typing import Any

import torch
from torch._guards import detect_fake_mode
from torch.fx.experimental.symbolic_shapes import statically_known_true

TORCH_VERSION = torch.__version__
# Inductor's C++ backend on torch 2.11 emits an index-bounds check naming a temporary it
# never declared ("'tmp2' was not declared") for a transformers generate whose decode turns
# dynamic: plain backend="inductor" fails the same (checked on 2.11.0; 2.13.0 compiles it).
CPU_DYNAMIC_INDEXING_BREAKS = torch.torch_version.TorchVersion(TORCH_VERSION) < "2.13"

__all__ = ["TORCH_VERSION", "detect_fake_mode", "known_equal", "known_same_shape",
           "known_broadcasts_to", "statically_known_true", "emit_structured_artifact", "is_joint_graph",
           "real_tensors", "size_hint", "constant_int", "wrap_triton", "launch_patches", "inductor_cuda_graphs",
           "same_storage", "inductor_decompositions", "enable_python_dispatcher", "GLUON_CTA_BARRIER",
           "CPU_DYNAMIC_INDEXING_BREAKS"]


def known_equal(a: Any, b: Any) -> bool:
    """a == b for ints or SymInts, without adding a guard (False when unknown)."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return statically_known_true(a == b)


def known_same_shape(a, b) -> bool:
    """Equal shapes, for ints or SymInts, adding no guard (ints: one tuple compare,
    the cheap path every real-tensor call takes)."""
    if len(a) != len(b):
        return False
    if all(type(x) is int for x in a) and all(type(y) is int for y in b):
        return tuple(a) == tuple(b)
    return all(known_equal(x, y) for x, y in zip(a, b))


def known_broadcasts_to(shape, target) -> bool:
    """`shape` broadcasts to `target` without enlarging it (sizes aligned from the
    right are 1 or equal), adding no guard."""
    return len(shape) <= len(target) and all(
        known_equal(s, 1) or known_equal(s, t) for s, t in zip(reversed(shape), reversed(target)))


def emit_structured_artifact(name: str, payload: dict) -> None:
    """A structured-trace artifact (TORCH_TRACE / tlparse). `trace_structured`
    has the same form on 2.11 and 2.13; `trace_structured_artifact` is newer."""
    from torch._logging import trace_structured

    trace_structured(
        "artifact",
        metadata_fn=lambda: {"name": name, "encoding": "json"},
        payload_fn=lambda: json.dumps(payload, sort_keys=True),
    )


try:  # AOTAutograd's descriptors of graph inputs and outputs (torch >= 2.9)
    from torch._functorch._aot_autograd.descriptors import GradAOTOutput, TangentAOTInput
except ImportError:  # pragma: no cover - older or reorganised torch: the tags below remain
    GradAOTOutput = TangentAOTInput = None


def is_joint_graph(graph) -> bool:
    """A training graph: AOTAutograd's joint forward/backward, read from the roles AOT
    gives its nodes, never from their names (2.11 .. 2.13; placeholder names are only
    a convention). Any one of these marks it:
      - an input whose descriptor (`node.meta["desc"]`) is a tangent, or an output
        whose descriptor is an input's gradient;
      - a node AOT traced while it ran the backward (`partitioner_tag` "is_backward",
        which the partitioner itself reads to split the graph).
    An inference graph has neither."""
    for n in graph.nodes:
        if n.meta.get("partitioner_tag") == "is_backward":
            return True
        desc = n.meta.get("desc")
        if TangentAOTInput is not None and n.op == "placeholder" and isinstance(desc, TangentAOTInput):
            return True
        if GradAOTOutput is not None and n.op == "output" and isinstance(desc, (list, tuple)) and any(
                isinstance(d, GradAOTOutput) for d in desc):
            return True
    return False


def real_tensors():
    """A context in which new tensors are real even inside a pass that runs under
    fake-tensor mode (a small concrete computation as a proof), 2.11 .. 2.15."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    return unset_fake_temporarily()


def size_hint(x) -> int:
    """An int for a size that may be a SymInt (its value in the example inputs), for
    heuristics whose choice does not change results (tile sizes, split counts): no
    guard, so a dynamic graph stays dynamic."""
    if isinstance(x, int):
        return x
    hint = x.node.hint
    return int(hint) if hint is not None else 1


def constant_int(x) -> int | None:
    """x as an int when it is one (an int, or a SymInt whose value is fixed), else None;
    never adds a guard."""
    if isinstance(x, int):
        return x
    return x.node.maybe_as_int()


def wrap_triton(kernel):
    """torch.library.wrap_triton (torch >= 2.6; the same on 2.11 .. 2.15)."""
    return torch.library.wrap_triton(kernel)


try:  # Gluon's barrier over a program's threads: `thread_barrier` on Triton 3.5-3.6, `barrier` on 3.8
    from triton.experimental.gluon import language as _gluon_language

    GLUON_CTA_BARRIER = getattr(_gluon_language, "thread_barrier", None) or getattr(_gluon_language, "barrier", None)
except ImportError:  # no Gluon: the Gluon programs are never chosen
    GLUON_CTA_BARRIER = None


def launch_patches() -> dict:
    """Inductor settings for launching our (user-defined) Triton kernels: its static
    C++ launcher, as for its own kernels, where this torch has the switch (present on
    2.11, off by default on 2.13 and 2.14.1 as checked; a kernel it cannot launch falls
    back to Triton's launcher). On the H200 it serves our kernels (issue 11)."""
    import torch._inductor.config as inductor_config

    name = "static_launch_user_defined_triton_kernels"
    return {name: True} if hasattr(inductor_config, name) else {}


def inductor_cuda_graphs() -> bool:
    """Whether the graph Inductor is compiling will run under CUDA graphs (its mode's
    `triton.cudagraphs`, patched in for the compile; the same on 2.11 .. 2.15)."""
    import torch._inductor.config as inductor_config

    return bool(inductor_config.triton.cudagraphs)


def same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors are views of one storage (real or fake tensors; no data
    pointer needed), 2.11 .. 2.15."""
    return torch._C._is_alias_of(a, b)


def inductor_decompositions() -> dict:
    """The decomposition table Inductor's AOT tracing uses (2.11 .. 2.15)."""
    from torch._inductor.decomposition import select_decomp_table

    return select_decomp_table()


def enable_python_dispatcher():
    from torch._dispatch.python import enable_python_dispatcher as enable

    return enable()


def triton_kernel_writes(kernel, kwargs: dict) -> set:
    """The arguments Inductor's mutation analysis of a user Triton kernel counts as
    written (what a compiled graph's launch then treats as mutated): 2.11 has
    `identify_mutated_tensors`, 2.13+ `identify_accessed_tensors`."""
    from torch._higher_order_ops import triton_kernel_wrap as wrap

    if hasattr(wrap, "identify_accessed_tensors"):
        return {dep.name for dep in wrap.identify_accessed_tensors(kernel, kwargs, {}).read_writes.writes}
    return set(wrap.identify_mutated_tensors(kernel, kwargs, {}))
