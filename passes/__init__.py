"""Graph passes, in the order the pass manager runs them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .attention import fuse_attention
from .rope import fuse_rope


@dataclass(frozen=True)
class GraphPass:
    name: str
    option: str          # the Options field that switches it on and off
    run: Callable        # (graph, options, record: PassRecord) -> None


PIPELINE = (GraphPass("rope", "rope", fuse_rope), GraphPass("attention", "attention", fuse_attention))
