"""Which of the three Gluon decode programs runs (custom_ops/gluon_decode.py,
gluon_decode_pipelined.py, gluon_decode_seesaw.py): one contract, one choice, here."""
from __future__ import annotations

from ..compat import size_hint
from . import gluon_decode, gluon_decode_pipelined, gluon_decode_seesaw

# the Gluon program by default (H200, RESULTS.md): from 512 rows (batch x heads) the
# seesaw, fastest there (0.76-0.84x FlashMLA at 64-128 heads, batch >= 32; the pipelined
# one 8-15% slower); below (batch 1 from 8192 keys) the pipelined one, measured level
# with FlashMLA there (the seesaw was not measured below 512 rows)
SEESAW_FROM_ROWS = 512


def choose_program(name: str | None, rows):
    """The Gluon program and its launch's num_warps (the seesaw's 4 are its default
    partition; its worker partition adds 4 more)."""
    name = name or ("seesaw" if size_hint(rows) >= SEESAW_FROM_ROWS else "pipelined")
    if name == "split":
        return gluon_decode.gluon_split, gluon_decode.WARPS
    if name == "pipelined":
        return gluon_decode_pipelined.gluon_split_pipelined, gluon_decode.WARPS
    if name == "seesaw":
        return gluon_decode_seesaw.gluon_split_seesaw, gluon_decode_seesaw.WARPS
    raise ValueError(f"gluon_program={name!r}: one of 'split', 'pipelined', 'seesaw'")


__all__ = ["choose_program", "SEESAW_FROM_ROWS"]
