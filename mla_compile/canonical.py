"""A graph printer whose output is stable across torch versions: renumbered
nodes, op names, dtype and shape, rounded floats, no stack traces or node names.
Golden-graph tests and `mla-compile dump` both print through it."""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

_DTYPES = {
    torch.float64: "f64", torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16",
    torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8",
    torch.uint8: "u8", torch.bool: "b8", torch.complex64: "c64", torch.complex128: "c128",
}


def _type_of(value) -> str:
    if isinstance(value, torch.Tensor):
        dtype = _DTYPES.get(value.dtype, str(value.dtype).replace("torch.", ""))
        return f"{dtype}[{', '.join(str(s) for s in value.shape)}]"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_type_of(v) for v in value) + ")"
    if value is None:
        return "?"
    return type(value).__name__


def _target_name(target) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return str(target)  # e.g. aten.mul.Tensor, mla.rope.default
    if target is operator.getitem:
        return "getitem"
    return getattr(target, "__name__", str(target))


def _arg(value, names: dict) -> str:
    if isinstance(value, fx.Node):
        return names[value]
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_arg(v, names) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, torch.dtype):
        return _DTYPES.get(value, str(value))
    return repr(value) if isinstance(value, str) else str(value)


def _inputs_by_first_use(graph: fx.Graph) -> list[fx.Node]:
    """Graph inputs in the order the computation first reads them: Dynamo's own
    input order differs between torch versions, the order of the ops does not."""
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    first_use = {}
    for i, node in enumerate(graph.nodes):
        for used in node.all_input_nodes:
            first_use.setdefault(used, i)
    return sorted(inputs, key=lambda n: first_use.get(n, len(first_use) + inputs.index(n)))


def canonical_graph(graph: fx.Graph, keep_names: bool = False) -> str:
    """Nodes are renumbered %0, %1, ... (stable across torch versions, for golden
    graphs); `keep_names` keeps FX node names instead, so that a diff of one
    graph before and after a pass shows only what the pass changed."""
    names: dict[fx.Node, str] = {}
    lines = []
    ordered = _inputs_by_first_use(graph) + [n for n in graph.nodes if n.op != "placeholder"]
    for node in ordered:
        if node.op == "output":
            lines.append(f"return {_arg(node.args[0], names)}")
            continue
        names[node] = f"%{node.name}" if keep_names else f"%{len(names)}"
        if node.op == "placeholder":
            rhs = "input"
        elif node.op == "get_attr":
            rhs = f"attr({node.target!r})"
        else:
            args = [_arg(a, names) for a in node.args]
            args += [f"{k}={_arg(v, names)}" for k, v in node.kwargs.items()]
            rhs = f"{_target_name(node.target)}({', '.join(args)})"
        lines.append(f"{names[node]} : {_type_of(node.meta.get('val'))} = {rhs}")
    return "\n".join(lines) + "\n"
