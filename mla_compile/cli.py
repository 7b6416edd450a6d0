"""`mla-compile dump TARGET` (also `python -m mla_compile dump TARGET`): compile a
model with `backend="mla"` and print what each pass did to each graph.

TARGET is a Python file that defines `example()` (or `--function NAME`), or
`module:function`; the function returns `(model, example_inputs)`. The output is
deterministic: canonical graphs only, no addresses, times or temp paths.
"""
from __future__ import annotations

import argparse
import copy
import functools
import importlib
import importlib.util
import inspect
import json
import math
import os
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

from .lowering.kernel_choice import KERNEL_CHOICES, select_backend

PROG = "mla-compile"
EXIT_USAGE = 2  # what argparse uses for a bad command line; a bad TARGET is one too

_DESCRIPTION = "Tools for the torch.compile backend 'mla' (fused RoPE / MLA ops, torch.ops.mla.*)."

_DUMP_DESCRIPTION = """\
Compile a model with torch.compile(backend="mla") and show what the mla passes did.

TARGET is a Python file that defines a function returning (model, example_inputs)
(the function `example` unless --function says otherwise), or `module:function`
(the module is imported; the current directory is on the import path). The model
runs once, under torch.no_grad(), eagerly and compiled, on the example inputs
(called as model(*example_inputs)).

For every compiled graph ("graph 0", "graph 1", ...) and every pass, the canonical
graph before and after the pass is printed as a unified diff, then the match
report: each match with its pattern and what it bound (style, rotary dim, heads,
...) and each near miss with the matcher's reason. A summary follows: match
counts per pattern and the max relative error of the compiled outputs against
eager ones (max|compiled - eager| / max|eager|, per output tensor, the largest).
The output is the same from run to run."""

_DUMP_EPILOG = """\
examples:
  mla-compile dump examples/dump_target.py
  mla-compile dump examples/dump_target.py --full --kernel reference
  mla-compile dump my_models.py --function tiny_block --json
  python -m mla_compile dump mypkg.models:example --no-rope --seed 1

exit status: 0 on success, 2 for a bad command line or TARGET (missing file,
module or function, or a function that does not return a (model, inputs) pair)."""


class UsageError(Exception):
    """A command line that cannot work: exit 2, the message, no traceback."""


class TargetError(UsageError):
    """A TARGET that cannot give (model, example_inputs)."""


def _mode_choices() -> list[str]:
    from torch._inductor import list_mode_options

    return list(list_mode_options())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=_DESCRIPTION,
        epilog=f"example:\n  {PROG} dump examples/dump_target.py\n\n"
               f"Run '{PROG} dump --help' for the dump command's flags.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    dump = commands.add_parser(
        "dump", help="compile a model with backend='mla' and print each pass's graph diff and matches",
        description=_DUMP_DESCRIPTION, epilog=_DUMP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    dump.add_argument("target", metavar="TARGET",
                      help="path to a Python file, or module:function")
    dump.add_argument("--function", metavar="NAME", default=None,
                      help="for a file TARGET: the function that returns (model, example_inputs) "
                           "(default: example)")
    dump.add_argument("--no-rope", action="store_true",
                      help="switch the RoPE pass off (backend option rope=False)")
    dump.add_argument("--no-attention", action="store_true",
                      help="switch the MLA attention pass off (backend option attention=False)")
    dump.add_argument("--kernel", choices=KERNEL_CHOICES, default="auto",
                      help="which kernels the fused ops run (backend option kernel; default: auto)")
    dump.add_argument("--full", action="store_true",
                      help="print the full canonical graph before and after each pass instead of the diff")
    dump.add_argument("--json", action="store_true",
                      help="print the reports as one JSON document (GraphReport.to_json() per graph, "
                           "which holds the full graphs; keys sorted)")
    dump.add_argument("--seed", metavar="N", type=int, default=0,
                      help="torch.manual_seed(N) before building the target (default: 0)")
    dump.add_argument("--mode", metavar="MODE", choices=_mode_choices(), default=None,
                      help="torch.compile mode: one of %(choices)s (default: none). torch.compile "
                           "takes mode= or options=, not both, so both go to the registered 'mla' "
                           "backend as torch.compile would pass them")
    dump.set_defaults(run=dump_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UsageError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


# ------------------------------------------------------------------ targets

def _is_file_target(target: str) -> bool:
    # A path wins over module:function, so that C:\models\m.py works.
    return target.endswith(".py") or os.sep in target or ":" not in target or Path(target).exists()


def _load_file_function(target: str, function: str) -> Callable:
    path = Path(target)
    if not path.is_file():
        raise TargetError(f"no such file: {target}")
    path = path.resolve()
    name = "_mla_compile_dump_target"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TargetError(f"cannot load {target} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))  # as `python FILE` would: siblings import
    spec.loader.exec_module(module)  # errors in the file's own code keep their traceback
    fn = getattr(module, function, None)
    if fn is None:
        raise TargetError(f"{target} defines no function {function!r}")
    return fn


def _load_module_function(target: str) -> Callable:
    module_name, _, attr_path = target.partition(":")
    if not module_name or not attr_path:
        raise TargetError(f"TARGET {target!r} is neither a file nor module:function")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise TargetError(f"no module named {module_name!r}") from None
        raise  # the module itself failed to import something: its traceback helps
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise TargetError(f"module {module_name!r} has no function {attr_path!r}")
        obj = getattr(obj, part)
    return obj


def load_target(target: str, function: str | None) -> tuple[str, Callable]:
    """(label, function) for TARGET; the label names it without any directory."""
    if _is_file_target(target):
        fn_name = function or "example"
        fn = _load_file_function(target, fn_name)
        label = f"{Path(target).name}:{fn_name}"
    else:
        if function is not None:
            raise TargetError("--function applies to a file TARGET only; "
                              "a module:function TARGET names its function itself")
        fn = _load_module_function(target)
        label = target
    if not callable(fn):
        raise TargetError(f"{label} is not a function")
    try:
        inspect.signature(fn).bind()
    except TypeError:
        raise TargetError(f"{label} must be callable with no arguments") from None
    except ValueError:
        pass  # no signature to check (some builtins): just call it
    return label, fn


def build_target(label: str, fn: Callable) -> tuple[Callable, tuple]:
    result = fn()
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        got = f"a {type(result).__name__}" + (f" of length {len(result)}" if isinstance(result, (tuple, list)) else "")
        raise TargetError(f"{label} must return a (model, example_inputs) pair, got {got}")
    model, inputs = result
    if not callable(model):
        raise TargetError(f"{label} returned a model that is not callable: {type(model).__name__}")
    if not isinstance(inputs, (tuple, list)):
        raise TargetError(f"{label} must return example_inputs as a tuple or list of arguments, "
                          f"got {type(inputs).__name__}")
    return model, tuple(inputs)


# ------------------------------------------------------------------ compile and compare

def _check_kernel(kernel: str, model: Callable, inputs: tuple) -> None:
    """kernel='triton' where Triton cannot run fails only when the compiled code
    first runs; say so before compiling."""
    if kernel != "triton":
        return
    import torch

    tensors = _tensors(inputs)
    if isinstance(model, torch.nn.Module):
        tensors += list(model.parameters()) + list(model.buffers())
    for device in sorted({t.device for t in tensors}, key=str):
        try:
            select_backend(device, kernel)
        except RuntimeError as e:
            raise UsageError(f"--kernel triton: {e}") from None


def _compile(model: Callable, options: dict, mode: str | None) -> Callable:
    import torch

    if mode is None:
        return torch.compile(model, backend="mla", options=options)
    # torch.compile refuses mode= together with options=; give the registered
    # backend both, as torch.compile would pass them to it.
    backend = functools.partial(torch._dynamo.lookup_backend("mla"), mode=mode, options=options)
    return torch.compile(model, backend=backend)


def _tensors(value) -> list:
    import torch
    from torch.utils import _pytree as pytree

    return [leaf for leaf in pytree.tree_leaves(value) if isinstance(leaf, torch.Tensor)]


def max_rel_error(actual, expected) -> float:
    """max over output tensors of max|a - b| / max|b| (0 for equal tensors)."""
    got, want = _tensors(actual), _tensors(expected)
    if len(got) != len(want):
        raise RuntimeError(f"compiled model returned {len(got)} tensors, eager {len(want)}")
    worst = 0.0
    for i, (a, b) in enumerate(zip(got, want)):
        if a.shape != b.shape:
            raise RuntimeError(f"output {i}: compiled shape {tuple(a.shape)} != eager {tuple(b.shape)}")
        if b.numel() == 0:
            continue
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        same = (a == b) | (a.isnan() & b.isnan())  # equal infs, NaN where eager has NaN: agreement
        diff = (a - b).abs().masked_fill(same, 0)
        err, scale = diff.max().item(), b.masked_fill(~b.isfinite(), 0).abs().max().item()
        if math.isnan(err):
            return math.inf
        if err:
            worst = max(worst, err / scale if scale else math.inf)
    return worst


# ------------------------------------------------------------------ output

def _format_text(label: str, settings: str, reports: list, counts: Counter, rel: float, full: bool) -> str:
    out = [f"mla-compile dump {label}", f"options: {settings}", ""]
    for i, report in enumerate(reports):
        out.append(f"=== graph {i} ===")
        for record in report.passes:
            if full:
                out += [f"--- pass {record.name}: canonical graph before ---", record.before.rstrip("\n"),
                        f"--- pass {record.name}: canonical graph after ---", record.after.rstrip("\n")]
            else:
                out += [f"--- pass {record.name}: canonical graph diff ---",
                        record.diff().rstrip("\n") or "(graph unchanged)"]
        out += [report.format(), ""]
    if not reports:
        out += ["no graph compiled", ""]
    total = sum(counts.values())
    per_pattern = ", ".join(f"{k}={counts[k]}" for k in sorted(counts))
    out += ["=== summary ===",
            f"graphs: {len(reports)}",
            f"matches: {total}" + (f" ({per_pattern})" if per_pattern else ""),
            f"max relative error vs eager: {rel:.2e}"]
    return "\n".join(out) + "\n"


def _format_json(label: str, settings: dict, reports: list, counts: Counter, rel: float) -> str:
    doc = {
        "target": label,
        "options": settings,
        "graphs": [r.to_json() for r in reports],
        "counts": dict(counts),
        "max_rel_error": rel if math.isfinite(rel) else str(rel),
    }
    return json.dumps(doc, sort_keys=True, indent=2, default=str) + "\n"


def dump_command(args: argparse.Namespace) -> int:
    import torch

    label, fn = load_target(args.target, args.function)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    model, inputs = build_target(label, fn)
    if not (args.no_rope and args.no_attention):
        _check_kernel(args.kernel, model, inputs)

    reports: list = []
    passes = {"rope": not args.no_rope, "attention": not args.no_attention}
    options = {**passes, "kernel": args.kernel, "report": reports.append}
    torch._dynamo.reset()
    with torch.no_grad():
        expected = model(*copy.deepcopy(inputs))
        actual = _compile(model, options, args.mode)(*inputs)
    rel = max_rel_error(actual, expected)

    counts: Counter = Counter()
    for report in reports:
        counts.update(report.counts())
    settings = {**passes, "kernel": args.kernel, "mode": args.mode or "none", "seed": args.seed}
    if args.json:
        text = _format_json(label, settings, reports, counts, rel)
    else:
        text = _format_text(label, ", ".join(f"{k}={v}" for k, v in settings.items()),
                            reports, counts, rel, args.full)
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0
