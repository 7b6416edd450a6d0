"""The one object Inductor calls at `joint_custom_pre_pass` (torch 2.11 takes a
single object there): it runs the enabled passes in order and reports."""
from __future__ import annotations

import difflib
import hashlib
import logging
from pathlib import Path

import torch.fx as fx
from torch._inductor.custom_graph_pass import CustomGraphPass

from .canonical import canonical_graph
from .compat import TORCH_VERSION
from .options import Options
from .passes import PIPELINE
from .report import GraphReport, LeftAloneError, PassRecord, log

_PACKAGE_DIR = Path(__file__).resolve().parent


def _source_files() -> tuple[str, ...]:
    """Every source file of the installed package: passes, lowering and kernels.
    Subpackages may live elsewhere in a source checkout, so ask each one."""
    from . import custom_ops, lowering, passes

    dirs = {_PACKAGE_DIR} | {Path(m.__file__).resolve().parent for m in (custom_ops, lowering, passes)}
    return tuple(sorted(str(p) for d in dirs for p in d.glob("*.py")))


class MlaPassManager(CustomGraphPass):
    def __init__(self, options: Options):
        self.options = options

    def __call__(self, graph: fx.Graph) -> None:
        listening = bool(self.options.report) or log.isEnabledFor(logging.INFO)
        report = GraphReport()
        for graph_pass in PIPELINE:
            if graph_pass.option and not getattr(self.options, graph_pass.option):
                continue
            record = PassRecord(graph_pass.name)
            if listening:
                record.before, named_before = canonical_graph(graph), canonical_graph(graph, keep_names=True)
            graph_pass.run(graph, self.options, record)
            graph.eliminate_dead_code()
            graph.lint()
            if not (graph_pass.report_idle or record.matches or record.near_misses):
                continue
            if listening:
                record.after = canonical_graph(graph)
                record.changes = "".join(difflib.unified_diff(
                    named_before.splitlines(keepends=True),
                    canonical_graph(graph, keep_names=True).splitlines(keepends=True),
                    fromfile=f"before {graph_pass.name}", tofile=f"after {graph_pass.name}"))
            report.passes.append(record)
        report.emit(self.options.report)
        if self.options.strict and report.near_misses:
            raise LeftAloneError("mla backend (strict): subgraphs left alone:\n" + "\n".join(
                f"  {n.pattern} at {n.node}: {n.reason}" for n in report.near_misses))

    def uuid(self) -> bytes:
        # Anything that changes the rewritten code must change this, or Inductor's
        # FX graph cache serves code compiled with other passes or kernels.
        # (Inductor's get_hash_for_files memoises by path, so hash contents here.)
        hasher = hashlib.sha256(f"{TORCH_VERSION}|{self.options.cache_key()}".encode())
        for path in _source_files():
            hasher.update(Path(path).read_bytes())
        return hasher.digest()
