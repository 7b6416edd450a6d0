"""Benchmark figures, drawn with matplotlib (the optional `bench` extra:
`pip install -e ".[bench]"`). Without matplotlib a figure is skipped with a message
saying so, and the benchmark's tables are written all the same.

    roofline(path, series, peak_flops, peak_bw, title) -> bool

draws a log-log roofline: arithmetic intensity (FLOP/byte) against FLOP/s, the roof
min(peak_bw * I, peak_flops) from the measured bandwidth and matmul rate, and one
marker per point of every series, with a legend. `series` maps a name to its points
(label, intensity, flops), in legend order, so a new series (another kernel) is one
more entry. `by_series` turns a list of (label, intensity, flops, series) tuples into
that mapping. `python benchmarks/plots.py out.png` draws a demo from made-up numbers.
"""
from __future__ import annotations

import math
import sys

MISSING = ("{path} not drawn: matplotlib is not installed "
           "(pip install matplotlib, or the package's 'bench' extra: pip install -e \".[bench]\")")


def by_series(points) -> dict[str, list[tuple[str, float, float]]]:
    """[(label, intensity, flops, series), ...] -> {series: [(label, intensity, flops), ...]}."""
    out: dict[str, list[tuple[str, float, float]]] = {}
    for label, intensity, flops, name in points:
        out.setdefault(name, []).append((label, intensity, flops))
    return out


def _decades(lim: tuple[float, float], values: list[float]) -> tuple[float, float]:
    """The limits, grown to whole decades around any value outside them."""
    lo, hi = lim
    if values:
        lo = min(lo, 10.0 ** math.floor(math.log10(min(values))))
        hi = max(hi, 10.0 ** math.ceil(math.log10(max(values))))
    return lo, hi


def roofline(path: str, series: dict, peak_flops: float, peak_bw: float, title: str, *,
             xlim=(1.0, 1000.0), ylim=(1e11, 2e15), dodge: float = 4.0, annotate: bool = False,
             size=(10.0, 7.0), dpi: int = 100) -> bool:
    """Write the roofline PNG to `path` (size inches x dpi pixels); False, with a message
    on stderr, when matplotlib is missing. Points with a non-positive or non-finite value
    are left out. `dodge` shifts the series' markers that many points apart sideways
    (series measured at the same intensities; display only, values unchanged);
    `annotate` writes each point's label beside it."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.transforms import offset_copy
    except ImportError:
        print(MISSING.format(path=path), file=sys.stderr)
        return False
    kept = {name: [p for p in pts if all(math.isfinite(v) and v > 0 for v in p[1:3])]
            for name, pts in series.items()}
    every = [p for pts in kept.values() for p in pts]
    x0, x1 = _decades(xlim, [p[1] for p in every])
    y0, y1 = _decades(ylim, [p[2] for p in every])

    fig = Figure(figsize=size, dpi=dpi)  # no pyplot: no global backend or figure state
    ax = fig.add_subplot()
    ax.set(xscale="log", yscale="log", xlim=(x0, x1), ylim=(y0, y1), title=title,
           xlabel="arithmetic intensity (FLOP/byte)", ylabel="FLOP/s")
    ax.grid(True, which="major", color="0.85")
    ax.grid(True, which="minor", color="0.95")

    ridge = peak_flops / peak_bw
    xs = sorted({x0, min(max(ridge, x0), x1), x1})
    ax.plot(xs, [min(peak_bw * x, peak_flops) for x in xs], color="black", linewidth=2,
            label=f"roofline: {peak_bw / 1e12:.2f} TB/s copy, {peak_flops / 1e12:.0f} TFLOP/s matmul")
    ax.annotate(f"{peak_flops / 1e12:.0f} TFLOP/s", (x1, peak_flops), xytext=(-6, 6),
                textcoords="offset points", ha="right")
    if ridge / 10 > x0:  # the bandwidth label on the memory slope
        ax.annotate(f"{peak_bw / 1e12:.2f} TB/s", (ridge / 10, peak_bw * ridge / 10), xytext=(-6, 6),
                    textcoords="offset points", ha="right")

    markers = "osD^vP*X"
    names = list(kept)
    for k, name in enumerate(names):
        shift = offset_copy(ax.transData, fig=fig, x=dodge * (k - (len(names) - 1) / 2), y=0, units="points")
        pts = kept[name]
        ax.plot([p[1] for p in pts], [p[2] for p in pts], linestyle="none", marker=markers[k % len(markers)],
                color=f"C{k}", label=name, transform=shift)
        if annotate:
            for label, i, f in pts:
                ax.annotate(label, (i, f), xytext=(6, 2), textcoords="offset points", fontsize=7, color="0.4")
    ax.legend(loc="upper left")
    fig.savefig(path, format="png")
    return True


def _demo(path: str) -> None:
    """Made-up points shaped like the decode benchmark's (no measurement)."""
    import random

    rng = random.Random(0)
    peak_f, peak_b = 700e12, 4.2e12
    points = []
    for h in (8, 16, 128):
        ai = h * 2176 / 1152  # absorbed decode: FLOP per cache byte
        for b in (1, 32, 128):
            best = min(peak_b * ai, peak_f) * min(1.0, b / 40)
            for name, eff in (("mla", 0.85), ("inductor", 0.5), ("inductor max-autotune", 0.65)):
                points.append((f"B={b} H={h}", ai, best * eff * rng.uniform(0.8, 1.1), name))
    roofline(path, by_series(points), peak_f, peak_b, "MLA decode roofline (demo data)")


if __name__ == "__main__":
    _demo(sys.argv[1] if len(sys.argv) > 1 else "roofline_demo.png")
    print(sys.argv[1] if len(sys.argv) > 1 else "roofline_demo.png")
