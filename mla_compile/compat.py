"""Every torch-version difference (2.11 .. 2.15) lives here and nowhere else."""
from __future__ import annotations

import json
from typing import Any

import torch
from torch._guards import detect_fake_mode
from torch.fx.experimental.symbolic_shapes import statically_known_true

TORCH_VERSION = torch.__version__

__all__ = ["TORCH_VERSION", "detect_fake_mode", "known_equal", "emit_structured_artifact"]


def known_equal(a: Any, b: Any) -> bool:
    """a == b for ints or SymInts, without adding a guard (False when unknown)."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return statically_known_true(a == b)


def emit_structured_artifact(name: str, payload: dict) -> None:
    """A structured-trace artifact (TORCH_TRACE / tlparse). `trace_structured`
    has the same form on 2.11 and 2.13; `trace_structured_artifact` is newer."""
    from torch._logging import trace_structured

    trace_structured(
        "artifact",
        metadata_fn=lambda: {"name": name, "encoding": "json"},
        payload_fn=lambda: json.dumps(payload, sort_keys=True),
    )
