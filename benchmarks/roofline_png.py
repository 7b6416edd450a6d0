"""Roofline plots as PNG files, in pure Python (stdlib only), for machines without matplotlib.

    plot_roofline(path, points, peak_flops, peak_bw, title)

draws log-log axes (arithmetic intensity in FLOP/byte against FLOP/s, ticks and grid at
decades), the roofline min(peak_bw * I, peak_flops) and one marker per point, coloured
and shaped by series, with a legend. A point is a dict with keys label, intensity, flops,
series, or a tuple (label, intensity, flops, series); points with a non-positive or
non-finite value are skipped. Text uses the built-in 5x7 bitmap font below (with two
descender rows). `python benchmarks/roofline_png.py [out.png]` writes a demo plot.
"""
from __future__ import annotations

import math
import struct
import sys
import zlib

# One block per line of glyphs: the characters, then 9 rows (7 + 2 for descenders) of
# 5 columns each, glyphs 6 columns apart. Unknown characters are drawn as "?".
_FONT_ART = """
0     1     2     3     4     5     6     7     8     9
.###. ..#.. .###. ##### ...#. ##### ..##. ##### .###. .###.
#...# .##.. #...# ...#. ..##. #.... .#... ....# #...# #...#
#..## ..#.. ....# ..#.. .#.#. ####. #.... ...#. #...# #...#
#.#.# ..#.. ...#. ...#. #..#. ....# ####. ..#.. .###. .####
##..# ..#.. ..#.. ....# ##### ....# #...# .#... #...# ....#
#...# ..#.. .#... #...# ...#. #...# #...# .#... #...# ...#.
.###. .###. ##### .###. ...#. .###. .###. .#... .###. .##..
..... ..... ..... ..... ..... ..... ..... ..... ..... .....
..... ..... ..... ..... ..... ..... ..... ..... ..... .....

A     B     C     D     E     F     G     H     I     J     K     L     M
.###. ####. .###. ###.. ##### ##### .###. #...# .###. ..### #...# #.... #...#
#...# #...# #...# #..#. #.... #.... #...# #...# ..#.. ...#. #..#. #.... ##.##
#...# #...# #.... #...# #.... #.... #.... #...# ..#.. ...#. #.#.. #.... #.#.#
##### ####. #.... #...# ####. ####. #.### ##### ..#.. ...#. ##... #.... #.#.#
#...# #...# #.... #...# #.... #.... #...# #...# ..#.. ...#. #.#.. #.... #...#
#...# #...# #...# #..#. #.... #.... #...# #...# ..#.. #..#. #..#. #.... #...#
#...# ####. .###. ###.. ##### #.... .#### #...# .###. .##.. #...# ##### #...#
..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .....
..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .....

N     O     P     Q     R     S     T     U     V     W     X     Y     Z
#...# .###. ####. .###. ####. .#### ##### #...# #...# #...# #...# #...# #####
#...# #...# #...# #...# #...# #.... ..#.. #...# #...# #...# #...# #...# ....#
##..# #...# #...# #...# #...# #.... ..#.. #...# #...# #...# .#.#. .#.#. ...#.
#.#.# #...# ####. #...# ####. .###. ..#.. #...# #...# #.#.# ..#.. ..#.. ..#..
#..## #...# #.... #.#.# #.#.. ....# ..#.. #...# #...# #.#.# .#.#. ..#.. .#...
#...# #...# #.... #..#. #..#. ....# ..#.. #...# .#.#. #.#.# #...# ..#.. #....
#...# .###. #.... .##.# #...# ####. ..#.. .###. ..#.. .#.#. #...# ..#.. #####
..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .....
..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .....

a     b     c     d     e     f     g     h     i     j     k     l     m
..... #.... ..... ....# ..... ..##. ..... #.... ..#.. ...#. #.... .##.. .....
..... #.... ..... ....# ..... .#..# ..... #.... ..... ..... #.... ..#.. .....
.###. #.##. .###. .##.# .###. .#... .#### #.##. .##.. ..##. #..#. ..#.. ##.#.
....# ##..# #.... #..## #...# ###.. #...# ##..# ..#.. ...#. #.#.. ..#.. #.#.#
.#### #...# #.... #...# ##### .#... #...# #...# ..#.. ...#. ##... ..#.. #.#.#
#...# #...# #...# #...# #.... .#... #...# #...# ..#.. ...#. #.#.. ..#.. #.#.#
.#### ####. .###. .#### .###. .#... .#### #...# .###. ...#. #..#. .###. #.#.#
..... ..... ..... ..... ..... ..... ....# ..... ..... #..#. ..... ..... .....
..... ..... ..... ..... ..... ..... .###. ..... ..... .##.. ..... ..... .....

n     o     p     q     r     s     t     u     v     w     x     y     z
..... ..... ..... ..... ..... ..... .#... ..... ..... ..... ..... ..... .....
..... ..... ..... ..... ..... ..... .#... ..... ..... ..... ..... ..... .....
#.##. .###. ####. .#### #.##. .#### ###.. #...# #...# #...# #...# #...# #####
##..# #...# #...# #...# ##..# #.... .#... #...# #...# #...# .#.#. #...# ...#.
#...# #...# #...# #...# #.... .###. .#... #...# #...# #.#.# ..#.. #...# ..#..
#...# #...# #...# #...# #.... ....# .#..# #..## .#.#. #.#.# .#.#. #...# .#...
#...# .###. ####. .#### #.... ####. ..##. .##.# ..#.. .#.#. #...# .#### #####
..... ..... #.... ....# ..... ..... ..... ..... ..... ..... ..... ....# .....
..... ..... #.... ....# ..... ..... ..... ..... ..... ..... ..... .###. .....

.     ,     -     +     /     (     )     :     %     =     ^     _
..... ..... ..... ..... ..... ...#. .#... ..... ##... ..... ..#.. .....
..... ..... ..... ..#.. ....# ..#.. ..#.. .##.. ##..# ..... .#.#. .....
..... ..... ..... ..#.. ...#. .#... ...#. .##.. ...#. ##### #...# .....
..... ..... .###. ##### ..#.. .#... ...#. ..... ..#.. ..... ..... .....
..... ..... ..... ..#.. .#... .#... ...#. .##.. .#... ##### ..... .....
.##.. .##.. ..... ..#.. #.... ..#.. ..#.. .##.. #..## ..... ..... .....
.##.. .##.. ..... ..... ..... ...#. .#... ..... ...## ..... ..... #####
..... ..#.. ..... ..... ..... ..... ..... ..... ..... ..... ..... .....
..... .#... ..... ..... ..... ..... ..... ..... ..... ..... ..... .....

*     [     ]     <     >     '     |     ?     #     @
..... .###. .###. ...#. .#... ..#.. ..#.. .###. .#.#. .###.
..#.. .#... ...#. ..#.. ..#.. ..#.. ..#.. #...# ##### #...#
#.#.# .#... ...#. .#... ...#. .#... ..#.. ....# .#.#. #.###
.###. .#... ...#. #.... ....# ..... ..#.. ...#. .#.#. #.#.#
#.#.# .#... ...#. .#... ...#. ..... ..#.. ..#.. ##### #.##.
..#.. .#... ...#. ..#.. ..#.. ..... ..#.. ..... .#.#. #....
..... .###. .###. ...#. .#... ..... ..#.. ..#.. ..... .###.
..... ..... ..... ..... ..... ..... ..... ..... ..... .....
..... ..... ..... ..... ..... ..... ..... ..... ..... .....
"""


def _parse_font(art: str) -> dict[str, list[str]]:
    font = {" ": ["....."] * 9}
    for block in art.strip("\n").split("\n\n"):
        header, *rows = block.split("\n")
        assert len(rows) == 9, header
        for i, ch in enumerate(header.split()):
            font[ch] = [row[6 * i:6 * i + 5] for row in rows]
            assert all(len(r) == 5 for r in font[ch]), ch
    return font


FONT = _parse_font(_FONT_ART)
BLACK, WHITE, GRAY, LIGHT = (0, 0, 0), (255, 255, 255), (110, 110, 110), (225, 225, 225)
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75)]
MARKERS = "os^Dv"  # circle, square, triangle, diamond, triangle down


class Canvas:
    """An RGB image; drawing outside `clip` (x0, y0, x1, y1, inclusive) is dropped."""

    def __init__(self, width: int, height: int, background=WHITE):
        self.w, self.h = width, height
        self.px = bytearray(bytes(background) * (width * height))
        self.clip = (0, 0, width - 1, height - 1)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color) -> None:
        """Fill [x0, x1] x [y0, y1]."""
        cx0, cy0, cx1, cy1 = self.clip
        x0, x1 = max(x0, cx0), min(x1, cx1)
        row = bytes(color) * (x1 - x0 + 1)
        for y in range(max(y0, cy0), min(y1, cy1) + 1):
            if x1 >= x0:
                i = 3 * (y * self.w + x0)
                self.px[i:i + len(row)] = row

    def line(self, x0, y0, x1, y1, color, width: int = 1) -> None:
        n = max(abs(round(x1) - round(x0)), abs(round(y1) - round(y0)), 1)
        a = width // 2
        for i in range(n + 1):
            x, y = round(x0 + (x1 - x0) * i / n), round(y0 + (y1 - y0) * i / n)
            self.rect(x - a, y - a, x - a + width - 1, y - a + width - 1, color)

    def marker(self, x: int, y: int, shape: str, color, r: int = 4) -> None:
        """A filled marker with a dark edge, centred on (x, y)."""
        inside = {"o": lambda dx, dy, r: dx * dx + dy * dy <= r * r + r,
                  "s": lambda dx, dy, r: True,
                  "^": lambda dx, dy, r: 2 * abs(dx) <= dy + r,
                  "v": lambda dx, dy, r: 2 * abs(dx) <= r - dy,
                  "D": lambda dx, dy, r: abs(dx) + abs(dy) <= r}[shape]
        edge = tuple(c // 2 for c in color)
        for rad, col in ((r + 1, edge), (r, color)):
            for dy in range(-rad, rad + 1):
                for dx in range(-rad, rad + 1):
                    if inside(dx, dy, rad):
                        self.rect(x + dx, y + dy, x + dx, y + dy, col)

    def text(self, x: int, y: int, s: str, color=BLACK, scale: int = 2,
             align: str = "left", vertical: bool = False) -> None:
        """Text with its top-left at (x, y) (align: the anchor's place along the text);
        vertical text reads bottom to top with (x, y) its bottom-left."""
        start = {"left": 0, "center": text_width(s, scale) // 2, "right": text_width(s, scale)}[align]
        for k, ch in enumerate(s):
            for r, row in enumerate(FONT.get(ch, FONT["?"])):
                for c, bit in enumerate(row):
                    if bit == "#":
                        u, v = 6 * scale * k + scale * c - start, scale * r  # along, across
                        if vertical:
                            self.rect(x + v, y - u - scale + 1, x + v + scale - 1, y - u, color)
                        else:
                            self.rect(x + u, y + v, x + u + scale - 1, y + v + scale - 1, color)

    def save(self, path: str) -> None:
        stride = 3 * self.w
        raw = b"".join(b"\x00" + bytes(self.px[y * stride:(y + 1) * stride]) for y in range(self.h))

        def chunk(tag: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

        header = struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)  # 8-bit RGB
        with open(path, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                    + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def text_width(s: str, scale: int = 2) -> int:
    return max(6 * scale * len(s) - scale, 0)


def decade_label(e: int) -> str:
    """10**e as "0.1", "1", "1000", or with an SI prefix beyond that: "100G", "1P"."""
    if -3 <= e <= 3:
        return f"{10.0 ** e:g}"
    prefixes = {-2: "u", -1: "m", 1: "k", 2: "M", 3: "G", 4: "T", 5: "P", 6: "E"}
    return f"{10 ** (e % 3)}{prefixes.get(e // 3, f'e{e // 3 * 3}')}"


def _as_point(p) -> tuple[str, float, float, str]:
    if isinstance(p, dict):
        return p["label"], p["intensity"], p["flops"], p["series"]
    return tuple(p)


def plot_roofline(path: str, points, peak_flops: float, peak_bw: float, title: str,
                  xlim=(1.0, 1000.0), ylim=(1e11, 2e15), annotate: bool = False,
                  dodge: int = 0, size=(1000, 700)) -> None:
    """Write a log-log roofline plot to `path` (PNG). The limits grow to whole decades
    around any point outside them; `annotate` writes each point's label beside it;
    `dodge` > 0 shifts the series' markers that many pixels apart sideways (for series
    measured at the same intensities: display only, the values are unchanged)."""
    pts = [p for p in map(_as_point, points)
           if all(math.isfinite(v) and v > 0 for v in p[1:3])]

    def log_range(lim, values):  # log10 of the limits, grown to whole decades around values
        lo, hi = math.log10(lim[0]), math.log10(lim[1])
        if values:
            lo = min(lo, math.floor(math.log10(min(values))))
            hi = max(hi, math.ceil(math.log10(max(values))))
        return lo, hi

    lx0, lx1 = log_range(xlim, [p[1] for p in pts])
    ly0, ly1 = log_range(ylim, [p[2] for p in pts])

    W, H = size
    left, right, top, bottom = 110, W - 30, 60, H - 80
    px = lambda x: round(left + (math.log10(x) - lx0) / (lx1 - lx0) * (right - left))  # noqa: E731
    py = lambda y: round(bottom - (math.log10(y) - ly0) / (ly1 - ly0) * (bottom - top))  # noqa: E731
    cv = Canvas(W, H)

    # Grid (minor ticks at 2..9 x each decade), axes box, decade labels.
    for e in range(math.floor(lx0), math.ceil(lx1) + 1):
        for m in range(1, 10):
            if lx0 <= math.log10(m * 10.0 ** e) <= lx1:
                x = px(m * 10.0 ** e)
                if m == 1:
                    cv.line(x, top, x, bottom, LIGHT)
                else:
                    cv.line(x, bottom - 4, x, bottom, GRAY)
        if lx0 <= e <= lx1:
            cv.text(px(10.0 ** e), bottom + 10, decade_label(e), align="center")
    for e in range(math.floor(ly0), math.ceil(ly1) + 1):
        for m in range(1, 10):
            if ly0 <= math.log10(m * 10.0 ** e) <= ly1:
                y = py(m * 10.0 ** e)
                if m == 1:
                    cv.line(left, y, right, y, LIGHT)
                else:
                    cv.line(left, y, left + 4, y, GRAY)
        if ly0 <= e <= ly1:
            cv.text(left - 10, py(10.0 ** e) - 7, decade_label(e), align="right")
    for x0, y0, x1, y1 in ((left, top, right, top), (left, bottom, right, bottom),
                           (left, top, left, bottom), (right, top, right, bottom)):
        cv.line(x0, y0, x1, y1, BLACK)
    scale = 3 if text_width(title, 3) <= W - 20 else 2
    cv.text(W // 2, 15, title, scale=scale, align="center")
    cv.text((left + right) // 2, bottom + 45, "arithmetic intensity (FLOP/byte)", align="center")
    cv.text(20, (top + bottom) // 2, "FLOP/s", align="center", vertical=True)

    # The roofline, its two labels, then the points, all clipped to the plot area.
    cv.clip = (left + 1, top + 1, right - 1, bottom - 1)
    roof = lambda i: min(peak_bw * i, peak_flops)  # noqa: E731
    n = 400
    grid = [10 ** (lx0 + (lx1 - lx0) * k / n) for k in range(n + 1)]
    for a, b in zip(grid, grid[1:]):
        cv.line(px(a), py(roof(a)), px(b), py(roof(b)), BLACK, width=2)
    cv.text(right - 8, py(peak_flops) - 22, f"{peak_flops / 1e12:.0f} TFLOP/s", align="right")
    i_label = peak_flops / peak_bw / 10  # on the memory slope; the label goes above it
    if i_label > 10 ** lx0:
        cv.text(px(i_label) - 8, py(roof(i_label)) - 24, f"{peak_bw / 1e12:.2f} TB/s", align="right")
    series = list(dict.fromkeys(p[3] for p in pts))
    style = {s: (PALETTE[k % len(PALETTE)], MARKERS[k % len(MARKERS)]) for k, s in enumerate(series)}
    for label, i, f, s in pts:
        color, shape = style[s]
        x = px(i) + round(dodge * (series.index(s) - (len(series) - 1) / 2))
        cv.marker(x, py(f), shape, color)
        if annotate:
            cv.text(x + 8, py(f) - 3, label, GRAY, scale=1)

    # Legend in the top-left corner: above the memory slope, where points are rare.
    rows = [("roofline", None)] + [(s, style[s]) for s in series]
    lw = 50 + max(text_width(r[0]) for r in rows)
    x0, y0 = left + 15, top + 15
    cv.rect(x0, y0, x0 + lw, y0 + 22 * len(rows) + 8, GRAY)
    cv.rect(x0 + 1, y0 + 1, x0 + lw - 1, y0 + 22 * len(rows) + 7, WHITE)
    for k, (name, st) in enumerate(rows):
        y = y0 + 15 + 22 * k
        if st is None:
            cv.line(x0 + 8, y, x0 + 32, y, BLACK, width=2)
        else:
            cv.marker(x0 + 20, y, st[1], st[0])
        cv.text(x0 + 40, y - 7, name)
    cv.save(path)


if __name__ == "__main__":
    import random

    rng = random.Random(0)
    peak_f, peak_b = 760e12, 3.0e12  # roughly an H100 SXM: bf16 matmul, copy bandwidth
    demo = []
    for h in (8, 16, 128):
        ai = h * 2176 / 1152  # MLA absorbed decode: FLOP per cache byte
        for b in (1, 32, 128):
            best = min(peak_b * ai, peak_f) * min(1.0, b / 40)
            for s, eff in (("mla", 0.85), ("inductor", 0.5), ("inductor max-autotune", 0.65)):
                demo.append((f"B={b} H={h}", ai, best * eff * rng.uniform(0.8, 1.1), s))
    out = sys.argv[1] if len(sys.argv) > 1 else "roofline_demo.png"
    plot_roofline(out, demo, peak_f, peak_b, "MLA decode roofline (demo data)", dodge=8)
    print(out)
