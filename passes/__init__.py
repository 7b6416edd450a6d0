"""Graph passes, in the order the pass manager runs them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .attention import fuse_attention
from .inline_launches import inline_launches
from .rope import fuse_rope


@dataclass(frozen=True)
class GraphPass:
    name: str
    option: str | None   # the Options field that switches it on and off (None: always on)
    run: Callable        # (graph, options, record: PassRecord) -> None
    report_idle: bool = True  # False: a run that found nothing is not in the report


PIPELINE = (
    GraphPass("rope", "rope", fuse_rope),
    GraphPass("attention", "attention", fuse_attention),
    # lowering's last step: CUDA only, so CPU reports do not list it
    GraphPass("launch", None, inline_launches, report_idle=False),
)
