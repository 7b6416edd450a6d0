"""Which of the three Gluon decode programs runs (custom_ops/gluon_decode.py,
gluon_decode_pipelined.py, gluon_decode_seesaw.py): one contract, one choice, here."""
from __future__ import annotations

from ..compat import size_hint
from . import gluon_decode, gluon_decode_pipelined, gluon_decode_seesaw

# the Gluon program by default (H200, RESULTS.md, sessions 8-9): the seesaw from 4096 rows
# (batch x query rows), and from 1024 where one request has 128 rows or more; the pipelined
# one below. Measured: at 64 heads the pipelined program is 5-9% faster up to 2048 rows,
# the seesaw 2-15% faster from 4096; at 128 heads they are level at 512 rows and the
# seesaw 4-8% faster from 1024; at batch 1 they are level (1-2%)
SEESAW_FROM_ROWS = 4096
SEESAW_WIDE_FROM_ROWS = 1024  # where a request has >= 128 rows


def program_name(name: str | None, rows, rows_per_request=1) -> str:
    """`name`, or the default program's for `rows` (batch x query rows) of which one
    request has `rows_per_request`."""
    n, wide = size_hint(rows), size_hint(rows_per_request) >= 128
    return name or ("seesaw" if n >= SEESAW_FROM_ROWS or (wide and n >= SEESAW_WIDE_FROM_ROWS) else "pipelined")


def choose_program(name: str | None, rows, rows_per_request=1):
    """The Gluon program and its launch's num_warps (the seesaw's 4 are its default
    partition; its worker partition adds 4 more)."""
    name = program_name(name, rows, rows_per_request)
    if name == "split":
        return gluon_decode.gluon_split, gluon_decode.WARPS
    if name == "pipelined":
        return gluon_decode_pipelined.gluon_split_pipelined, gluon_decode.WARPS
    if name == "seesaw":
        return gluon_decode_seesaw.gluon_split_seesaw, gluon_decode_seesaw.WARPS
    raise ValueError(f"gluon_program={name!r}: one of 'split', 'pipelined', 'seesaw'")


__all__ = ["choose_program", "program_name", "SEESAW_FROM_ROWS", "SEESAW_WIDE_FROM_ROWS"]
