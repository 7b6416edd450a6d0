"""benchmarks/plots.py: the roofline figure from made-up points (CPU only), and the
message when matplotlib is missing. matplotlib is in the `test` extra, so CI runs it."""
from __future__ import annotations

import math
import os
import struct
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
import plots  # noqa: E402

POINTS = [  # (label, FLOP/byte, FLOP/s, series): three series, one point that must be left out
    ("B=1 H=16", 30.2, 2.1e12, "mla"), ("B=32 H=16", 30.2, 9.5e13, "mla"),
    ("B=1 H=16", 30.2, 1.6e12, "inductor"), ("B=32 H=16", 30.2, 5.0e13, "inductor"),
    ("B=32 H=128", 241.8, 3.0e14, "flashmla"), ("B=1 H=128", 241.8, math.nan, "flashmla"),
]


def png_size(path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_by_series_keeps_order_and_points():
    series = plots.by_series(POINTS)
    assert list(series) == ["mla", "inductor", "flashmla"]
    assert series["mla"] == [("B=1 H=16", 30.2, 2.1e12), ("B=32 H=16", 30.2, 9.5e13)]
    assert len(series["flashmla"]) == 2


def test_roofline_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "roofline.png"
    drawn = plots.roofline(str(path), plots.by_series(POINTS), 700e12, 4.2e12, "test roofline",
                           size=(6.0, 4.0), dpi=100, annotate=True)
    assert drawn and path.stat().st_size > 10_000  # axes, text and markers, not a blank image
    assert png_size(path) == (600, 400)


def test_missing_matplotlib_says_so(tmp_path, monkeypatch, capsys):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.transforms"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    path = tmp_path / "roofline.png"
    assert plots.roofline(str(path), plots.by_series(POINTS), 700e12, 4.2e12, "t") is False
    assert not path.exists()
    assert "matplotlib is not installed" in capsys.readouterr().err
