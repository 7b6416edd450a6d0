"""What the passes did to one graph: rewrites, near misses, graphs before/after.

A GraphReport goes to the user's `report` option, to the `mla_compile` logger
(`TORCH_LOGS="+mla_compile"`) and to the structured trace (`TORCH_TRACE`, tlparse).
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from .compat import emit_structured_artifact

log = logging.getLogger("mla_compile")


class LeftAloneError(RuntimeError):
    """options={"strict": True} and a pass left a look-alike subgraph alone."""


@dataclass(frozen=True)
class Match:
    pattern: str                 # e.g. "rope.neox"
    params: dict[str, Any]       # what the graph bound: style, rotary_dim, heads, ...


@dataclass(frozen=True)
class NearMiss:
    pattern: str
    node: str                    # the anchor node: its FX name (as in the diff) and op
    reason: str                  # why the matcher left it alone


@dataclass
class PassRecord:
    name: str
    matches: list[Match] = field(default_factory=list)
    near_misses: list[NearMiss] = field(default_factory=list)
    before: str = ""             # canonical graph texts (renumbered), filled when someone listens
    after: str = ""
    changes: str = ""            # unified diff of the graph with FX node names kept

    def diff(self) -> str:
        return self.changes


@dataclass
class GraphReport:
    passes: list[PassRecord] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return dict(Counter(m.pattern for p in self.passes for m in p.matches))

    @property
    def matches(self) -> list[Match]:
        return [m for p in self.passes for m in p.matches]

    @property
    def near_misses(self) -> list[NearMiss]:
        return [n for p in self.passes for n in p.near_misses]

    @property
    def final_graph(self) -> str:
        return self.passes[-1].after if self.passes else ""

    def format(self, diffs: bool = False) -> str:
        lines = ["mla_compile report"]
        for p in self.passes:
            lines.append(f"pass {p.name}: {len(p.matches)} rewrite(s), {len(p.near_misses)} near miss(es)")
            for m in p.matches:
                params = ", ".join(f"{k}={v}" for k, v in m.params.items())
                lines.append(f"  matched {m.pattern}: {params}")
            for n in p.near_misses:
                lines.append(f"  left alone {n.pattern} at {n.node}: {n.reason}")
            if diffs:
                lines.append(p.diff() or "  (graph unchanged)")
        if not self.passes:
            lines.append("no pass enabled")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"counts": self.counts(), "passes": [asdict(p) for p in self.passes]}

    def emit(self, sink) -> None:
        log.info("%s", self.format())
        emit_structured_artifact("mla_compile_report", self.to_json())
        if sink is True:
            import sys
            print(self.format(), file=sys.stderr)
        elif callable(sink):
            sink(self)
