"""Small structural matchers over aten graphs. A matcher returns what it bound or
raises NoMatch whose message is the reason a report gives for a near miss."""
from __future__ import annotations

import operator
from typing import Any, Callable, Iterable, TypeVar

import torch
import torch.fx as fx

from ..compat import known_same_shape as same_shape  # noqa: F401  (for the searches)
from ..custom_ops.backend import KERNEL_DTYPES as FLOAT_DTYPES  # noqa: F401  (what the ops take)

aten = torch.ops.aten
prims = torch.ops.prims
T = TypeVar("T")


class NoMatch(Exception):
    """The candidate is not the pattern; str(self) says why. `structural`: it
    failed on the kind of op; a check on the bound values says more."""

    def __init__(self, reason: str, structural: bool = False):
        super().__init__(reason)
        self.structural = structural


def require(cond: Any, reason: str) -> None:
    if not cond:
        raise NoMatch(reason)


def is_op(node: Any, *targets) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in targets


def expect_op(node: Any, *targets, what: str) -> fx.Node:
    if not is_op(node, *targets):
        raise NoMatch(f"{what} is {describe(node)}, expected {' or '.join(map(str, targets))}", structural=True)
    return node


def describe(node: Any) -> str:
    if isinstance(node, fx.Node):
        return str(node.target) if node.op == "call_function" else node.op
    return repr(node)


def val(node: fx.Node) -> torch.Tensor:
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    require(isinstance(value, torch.Tensor), f"no tensor metadata on {describe(node)}")
    return value


def norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def is_last_dim(dim: Any, node: fx.Node) -> bool:
    return isinstance(dim, int) and norm_dim(dim, val(node).dim()) == val(node).dim() - 1


def plain_binary(node: fx.Node, target) -> tuple[Any, Any]:
    """Operands of add/sub/mul.Tensor, refusing an alpha other than 1."""
    require(node.kwargs.get("alpha", 1) == 1, f"{target} with alpha={node.kwargs.get('alpha')}")
    require(len(node.args) == 2, f"{target} with {len(node.args)} args")
    return node.args[0], node.args[1]


def orderings(node: fx.Node) -> list[tuple[Any, Any]]:
    """Both operand orders of a commutative binary op."""
    a, b = node.args[0], node.args[1]
    return [(a, b), (b, a)]


def first_match(candidates: Iterable[T], match: Callable[[T], Any]) -> Any:
    """The first candidate that matches; else NoMatch with the most telling
    reason: the first that got past the op kinds, or the last one."""
    failures = []
    for candidate in candidates:
        try:
            return match(candidate)
        except NoMatch as e:
            failures.append(e)
    telling = [e for e in failures if not e.structural]
    if telling:
        raise NoMatch(str(telling[0]))
    raise NoMatch(str(failures[-1]) if failures else "no candidate", structural=True)


def half_of(node: Any) -> tuple[fx.Node, str]:
    """x[..., :d/2] -> (x, "lo"), x[..., d/2:] -> (x, "hi"): by slice, split or chunk."""
    if is_op(node, aten.slice.Tensor):
        base, dim, start, end, step = (list(node.args) + [0, None, None, 1][len(node.args) - 1:])[:5]
        require(is_last_dim(dim, base) and step == 1, "slice is not a step-1 slice of the last dim")
        d = val(base).shape[-1]
        start = 0 if start is None else start
        end = d if end is None or (isinstance(end, int) and end >= d) else end
        require(isinstance(d, int) and d % 2 == 0, "rotary dim is not a static even size")
        if start == 0 and end == d // 2:
            return base, "lo"
        if start == d // 2 and end == d:
            return base, "hi"
        raise NoMatch(f"slice [{start}:{end}] is not a half of the last dim ({d})")
    if not is_op(node, operator.getitem):  # the wrong kind of op: let a telling reason win
        raise NoMatch(f"{describe(node)} is not a slice or split of the last dim", structural=True)
    split, index = node.args
    if not is_op(split, aten.split.Tensor, aten.split_with_sizes.default):
        raise NoMatch(f"getitem of {describe(split)}", structural=True)
    base, sizes, dim = (list(split.args) + [0])[:3]
    d = val(base).shape[-1]
    require(is_last_dim(dim, base), "split is not along the last dim")
    if is_op(split, aten.split.Tensor):
        require(sizes * 2 == d, f"split size {sizes} is not half of {d}")
    else:
        require(list(sizes) == [d // 2, d // 2] and d % 2 == 0, f"split sizes {sizes} are not two halves of {d}")
    return base, ("lo", "hi")[index]


def strided_half_of(node: Any) -> tuple[fx.Node, int]:
    """x[..., 0::2] -> (x, 0), x[..., 1::2] -> (x, 1)."""
    expect_op(node, aten.slice.Tensor, what="even/odd operand")
    base, dim, start, end, step = (list(node.args) + [0, None, None, 1][len(node.args) - 1:])[:5]
    d = val(base).shape[-1]
    require(is_last_dim(dim, base) and step == 2 and start in (0, 1, None),
            "slice is not x[..., 0::2] or x[..., 1::2]")
    require(end is None or (isinstance(end, int) and end >= d), "even/odd slice stops early")
    return base, start or 0
