"""Lowering's last step: Inductor launches our Triton kernels itself.

A fused op left as a `torch.ops.mla.*` call would cost a dispatcher hop, the op's
Python checks and a Python Triton launch on every call of the compiled graph. Where
its kernels run as compiled Triton (CUDA), each op node is replaced here by its own
computation (`compute_*` in custom_ops: torch ops and kernel launches) traced on the
node's fake inputs with the launches wrapped (`custom_ops/launch.py`) and then
functionalized, exactly what AOTAutograd does for a `torch.library.triton_op`: the
graph then holds `triton_kernel_wrapper_functional` nodes, which Inductor lowers to
launches in its generated code (and reinplaces where the buffers allow). The checks
ran once, on the fake inputs, when the op was inserted.

Ops with equal signatures (a model's layers) are traced once and spliced each in its
place: tracing and Triton's kernel analysis are most of this pass's compile time.

A trace that fails, or that would mutate an input, leaves the op node as it is (same
numbers, the op's own launch path): the report lists it as `launch.op` with the reason.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.operator_schemas import normalize_function

from ..compat import detect_fake_mode, enable_python_dispatcher, inductor_decompositions, same_storage
from ..custom_ops.latent_attention import compute_latent_attention
from ..custom_ops.paged_cache import compute_paged_decode
from ..custom_ops.paged_sparse import compute_paged_sparse_decode
from ..custom_ops.prefill_attention import compute_prefill_attention
from ..custom_ops.rope import compute_rope
from ..custom_ops.sparse_attention import compute_sparse_attention
from ..lowering.kernel_choice import inductor_launches
from ..report import Match, PassRecord

COMPUTE = {
    torch.ops.mla.rope.default: compute_rope,
    torch.ops.mla.prefill_attention.default: compute_prefill_attention,
    torch.ops.mla.latent_attention.default: compute_latent_attention,
    torch.ops.mla.paged_decode.default: compute_paged_decode,
    torch.ops.mla.sparse_attention.default: compute_sparse_attention,
    torch.ops.mla.paged_sparse_decode.default: compute_paged_sparse_decode,
}

_WRAPPERS = ("triton_kernel_wrapper_functional", "triton_kernel_wrapper_mutation")


def _arguments(node: fx.Node) -> dict:
    """The op's arguments by name (defaults filled in): nodes, lists of nodes, constants."""
    found = normalize_function(node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True)
    return dict(found.kwargs)


def _trace(compute, kwargs: dict) -> fx.GraphModule:
    """`compute(**kwargs)` as a functional graph whose placeholders are the tensor
    leaves of kwargs, in pytree order."""
    leaves, spec = pytree.tree_flatten(kwargs)
    places = [i for i, leaf in enumerate(leaves) if isinstance(leaf, fx.Node)]
    vals = [leaves[i].meta["val"] for i in places]

    def body(*tensors):
        full = list(leaves)
        for i, t in zip(places, tensors):
            full[i] = t
        return compute(**pytree.tree_unflatten(full, spec))

    # first on the plain fake values, where views of one weight still alias (the
    # decompression reads kv_b's two windows as one GEMM); then functionalized, with
    # views kept (Inductor reads them in place)
    # Inductor's decompositions, as AOTAutograd applied them to the rest of the graph
    decomps = inductor_decompositions()
    with torch.no_grad(), enable_python_dispatcher():
        direct = make_fx(body, decomps, tracing_mode="real")(*vals)
        functional = torch.func.functionalize(direct, remove="mutations")
        return make_fx(functional, decomps, tracing_mode="real")(*vals)


def _signature(compute, kwargs: dict) -> tuple:
    """What a trace depends on: the computation, the arguments' structure and constants,
    each tensor's metadata (sizes and strides as expressions, so one symbol is one size)
    and which tensors share storage (the decompression reads adjacent weight windows as
    one GEMM). Equal signatures trace to the same graph: a model's layers trace once."""
    leaves, spec = pytree.tree_flatten(kwargs)
    bases: list = []
    parts = []
    for leaf in leaves:
        if not isinstance(leaf, fx.Node):
            parts.append(("const", type(leaf).__name__, repr(leaf)))
            continue
        v = leaf.meta.get("val")
        if not isinstance(v, torch.Tensor):  # e.g. a symbolic int passed by user code
            parts.append(("value", type(v).__name__, str(v)))
            continue
        base = next((i for i, b in enumerate(bases) if same_storage(b, v)), None)
        if base is None:
            bases.append(v)
            base = len(bases) - 1
        parts.append(("tensor", str(tuple(v.shape)), str(v.stride()), str(v.storage_offset()), v.dtype,
                      v.device, base))
    return compute, str(spec), tuple(parts)


def _check_functional(gm: fx.GraphModule) -> None:
    """Refuse a trace that writes into one of the op's inputs (e.g. Triton's mutation
    analysis was unavailable and every argument counted as written)."""
    for n in gm.graph.nodes:
        schema = getattr(n.target, "_schema", None)
        if n.op == "call_function" and schema is not None and schema.is_mutable:
            raise RuntimeError(f"the traced launch writes into an input ({n.target})")


def _fresh_values(nodes: list) -> None:
    """Each copied node's fake value computed again from its own inputs': a reused
    trace's values are the first copy's tensors, which the passes between this one and
    Inductor's own fake-tensor propagation (compile_fx, before its reinplacing) would
    read as aliasing the first copy. If a node cannot be evaluated here, the copied
    values stay: that propagation recomputes every value anyway."""
    fake_mode = detect_fake_mode([a.meta["val"] for n in nodes for a in n.all_input_nodes
                                  if isinstance(a.meta.get("val"), torch.Tensor)])
    fresh = {}
    try:
        with fake_mode, enable_python_dispatcher():
            for n in nodes:
                if n.op == "call_function":
                    args, kwargs = fx.node.map_arg(
                        (n.args, n.kwargs), lambda a: fresh.get(a, a.meta.get("val")))
                    fresh[n] = n.target(*args, **kwargs)
    except Exception:  # noqa: BLE001  (advisory values: see above)
        return
    for n, val in fresh.items():
        n.meta["val"] = val


def _splice(graph: fx.Graph, node: fx.Node, gm: fx.GraphModule, inputs: list, reused: bool) -> dict:
    """Put gm's nodes in place of `node` (their values recomputed when gm was already
    spliced elsewhere); returns the number of kernel launches (and of op calls left in
    the trace: the Gluon decode, custom_ops/gluon_op.py)."""
    env = dict(zip((n for n in gm.graph.nodes if n.op == "placeholder"), inputs))
    launches, calls, result = 0, 0, None
    with graph.inserting_before(node):
        for sub in gm.graph.nodes:
            if sub.op == "placeholder":
                continue
            if sub.op == "output":
                result = fx.node.map_arg(sub.args[0], lambda n: env[n])
                break
            env[sub] = graph.node_copy(sub, lambda n: env[n])
            launches += getattr(sub.target, "__name__", "") in _WRAPPERS
            calls += str(sub.target).startswith("mla.")
    if reused:
        _fresh_values([env[sub] for sub in gm.graph.nodes if sub in env and sub.op != "placeholder"])
    if isinstance(result, (list, tuple)):  # mla.rope: its users are getitem nodes
        for user in list(node.users):
            user.replace_all_uses_with(result[user.args[1]])
            graph.erase_node(user)
    else:
        node.replace_all_uses_with(result)
    graph.erase_node(node)
    return {"kernel_launches": launches, **({"op_calls": calls} if calls else {})}


def _positional(node: fx.Node) -> None:
    """An op call that stays takes every argument by position (our ops name their
    kernel choice `impl`: Inductor's fallback kernel has a parameter named `kernel`)."""
    def positional(args, kwargs) -> tuple:
        found = normalize_function(node.target, args, kwargs, normalize_to_only_use_kwargs=True)
        return tuple(found.kwargs.values())

    node.args, node.kwargs = positional(node.args, node.kwargs), {}
    if "eager_input_vals" in node.meta:  # the values Inductor matches the args against
        args, kwargs = node.meta["eager_input_vals"]
        node.meta["eager_input_vals"] = (positional(args, kwargs), {})


def inline_launches(graph: fx.Graph, options, record: PassRecord) -> None:
    traced: dict = {}  # signature -> trace (or the error it raised), for this graph only
    for node in list(graph.nodes):
        compute = COMPUTE.get(node.target) if node.op == "call_function" else None
        if compute is None:
            if node.op == "call_function" and str(node.target).startswith("mla."):
                _positional(node)
            continue
        kwargs = _arguments(node)
        first = next(a for a in pytree.tree_leaves(kwargs) if isinstance(a, fx.Node))
        kernel = kwargs.get("impl", "auto")
        if not (options.launch == "inductor" and inductor_launches(first.meta["val"].device, kernel)):
            _positional(node)
            continue
        op = str(node.target).replace(".default", "")
        key = _signature(compute, kwargs)
        reused = key in traced
        if not reused:
            try:
                traced[key] = _trace(compute, kwargs)
                _check_functional(traced[key])
            except Exception as err:  # noqa: BLE001  (any failure: keep the op, say why)
                traced[key] = err
        gm = traced[key]
        if isinstance(gm, Exception):
            record.matches.append(Match("launch.op", {"op": op, "why": f"{type(gm).__name__}: {gm}"}))
            continue
        inputs = [leaf for leaf in pytree.tree_leaves(kwargs) if isinstance(leaf, fx.Node)]
        record.matches.append(Match("launch.inductor", {"op": op, **_splice(graph, node, gm, inputs, reused)}))
