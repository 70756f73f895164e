"""Simple SVG charts for the run report: histograms, bars, scatters and dashed reference lines
on axes with round tick values, written as SVG 1.1 with numpy only. (matplotlib cost over a
second of every run, to import and to render PNGs; these charts need none of it.)

A chart is built layer by layer, later layers drawn on top, then written with `save`::

    edges = bin_edges(values, 60)  # car_engine.plot_axes
    chart = Chart("IQS score distribution", xlabel="IQS", ylabel="records")
    chart.histogram(values, edges, ALL, label="all records")
    chart.histogram(values[selected], edges, SELECTED, label="selected")
    chart.vline(cut, "top-n1 cut")
    save(path, chart)

Non-finite values are skipped (and values <= 0 on a log axis); no data, or a single value,
still gives valid axes. The same input gives the same bytes.
"""

from __future__ import annotations

import colorsys
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from car_engine.io import write_text
from car_engine.plot_axes import Scale, limits, log_ticks, nice_ticks, tick_label

ALL = "#9db4cf"  # all records
SELECTED = "#d9534f"  # the selected records
# 20 colours for integer labels (cluster ids), cycled: 10 hues, each dark then light.
PALETTE = tuple("#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in colorsys.hls_to_rgb(
    (i % 10) / 10, 0.42 if i < 10 else 0.72, 0.7))) for i in range(20))
FONT = 11  # px
MARGIN = (60.0, 14.0, 28.0, 44.0)  # left, right, top, bottom (px): tick labels, axis titles


def _num(v: float) -> str:
    """A coordinate, to 0.1 px: precise enough, short, and the same text for the same value."""
    text = f"{v:.1f}"
    return "0.0" if text == "-0.0" else text


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


@dataclass
class _Bars:
    left: np.ndarray
    right: np.ndarray
    heights: np.ndarray
    color: str
    opacity: float
    label: str | None


@dataclass
class _Points:
    x: np.ndarray
    y: np.ndarray
    colors: list[str]  # one per point, or a single one for all
    radius: float
    opacity: float
    hollow: bool
    label: str | None


@dataclass
class _RefLine:
    vertical: bool
    at: float
    label: str | None


@dataclass
class Chart:
    """One set of axes: a title, axis labels, and layers of bars, points and reference lines
    (drawn in the order added). ``log_x`` scales the x axis logarithmically."""

    title: str = ""
    xlabel: str = ""
    ylabel: str = ""
    log_x: bool = False
    width: float = 620.0
    height: float = 330.0
    layers: list[_Bars | _Points | _RefLine] = field(default_factory=list)

    def bars(self, left: np.ndarray, right: np.ndarray, heights: np.ndarray, color: str = ALL,
             label: str | None = None, opacity: float = 1.0) -> None:
        """Bars from ``left`` to ``right`` (data units), ``heights`` tall, from y = 0."""
        left, right, heights = (np.asarray(a, dtype=np.float64).ravel()
                                for a in (left, right, heights))
        ok = np.isfinite(left) & np.isfinite(right) & np.isfinite(heights)
        if self.log_x:
            ok &= left > 0
        self.layers.append(_Bars(left[ok], right[ok], heights[ok], color, opacity, label))

    def histogram(self, values: np.ndarray, edges: np.ndarray, color: str = ALL,
                  label: str | None = None, weights: np.ndarray | None = None,
                  opacity: float = 1.0) -> None:
        """A histogram of the finite ``values`` over bin ``edges``: counts per bin, or with
        ``weights`` (one per value) the sum of the weights in each bin."""
        values = np.asarray(values, dtype=np.float64).ravel()
        keep = np.isfinite(values)
        w = None
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64).ravel()
            keep &= np.isfinite(w)
            w = w[keep]
        edges = np.asarray(edges, dtype=np.float64)
        counts, _ = np.histogram(values[keep], bins=edges, weights=w)
        self.bars(edges[:-1], edges[1:], counts, color, label, opacity)

    def scatter(self, x: np.ndarray, y: np.ndarray, color: str | np.ndarray = ALL,
                radius: float = 1.5, label: str | None = None, opacity: float = 1.0,
                hollow: bool = False) -> None:
        """Points at (x, y), pairs with a non-finite value skipped. ``color`` is one colour, or
        an integer label per point, coloured from `PALETTE` (cycled). ``hollow`` draws
        black rings instead of filled dots."""
        x, y = (np.asarray(a, dtype=np.float64).ravel() for a in (x, y))
        ok = np.isfinite(x) & np.isfinite(y)
        if self.log_x:
            ok &= x > 0
        if isinstance(color, str):
            colors = [color]
        else:
            colors = [PALETTE[int(c) % len(PALETTE)] for c in np.asarray(color).ravel()[ok]]
        self.layers.append(_Points(x[ok], y[ok], colors, radius, opacity, hollow, label))

    def vline(self, x: float, label: str | None = None) -> None:
        """A dashed vertical line at ``x``, with a small rotated label beside its top."""
        if math.isfinite(x) and (x > 0 or not self.log_x):
            self.layers.append(_RefLine(True, float(x), label))

    def hline(self, y: float, label: str | None = None) -> None:
        """A dashed horizontal line at ``y``, with a small label above its right end."""
        if math.isfinite(y):
            self.layers.append(_RefLine(False, float(y), label))

    def _scales(self, left: float, top: float) -> tuple[Scale, Scale]:
        """The x and y scales of the plot area whose top-left corner is (left, top)."""
        xs = [np.zeros(0)]
        ys = [np.zeros(0)]
        for layer in self.layers:
            if isinstance(layer, _Bars):
                xs += [layer.left, layer.right]
                ys += [layer.heights, np.zeros(min(1, layer.heights.size))]
            elif isinstance(layer, _Points):
                xs.append(layer.x)
                ys.append(layer.y)
            else:
                (xs if layer.vertical else ys).append(np.array([layer.at]))
        x, y = np.concatenate(xs), np.concatenate(ys)
        spans = [(float(a.min()), float(a.max())) if a.size else (math.nan, math.nan)
                 for a in (x, y)]
        # Bars sit on y = 0 and fill the x range (as bar charts usually do); points get a margin.
        bars_only = all(not isinstance(la, _Points) for la in self.layers) and any(
            isinstance(la, _Bars) for la in self.layers)
        x_lo, x_hi = limits(*spans[0], self.log_x, 0.0 if bars_only else 0.05)
        y_lo, y_hi = limits(*spans[1], False, 0.05)
        if bars_only and spans[1][0] >= 0:
            y_lo = 0.0
        w = self.width - MARGIN[0] - MARGIN[1]
        h = self.height - MARGIN[2] - MARGIN[3]
        return (Scale(x_lo, x_hi, left, w, self.log_x),
                Scale(y_lo, y_hi, top + h, -h, False))

    def svg(self, dx: float = 0.0) -> str:
        """This chart's SVG elements (no document around them), shifted right by ``dx``."""
        left, top = dx + MARGIN[0], MARGIN[2]
        right, bottom = dx + self.width - MARGIN[1], self.height - MARGIN[3]
        sx, sy = self._scales(left, top)
        out = [f'<g class="chart"><rect class="plot-area" x="{_num(left)}" y="{_num(top)}" '
               f'width="{_num(right - left)}" height="{_num(bottom - top)}" fill="none" '
               'stroke="#333" stroke-width="0.8"/>']
        for layer in self.layers:
            if isinstance(layer, _Bars):
                out.append(_bars_svg(layer, sx, sy))
            elif isinstance(layer, _Points):
                out.append(_points_svg(layer, sx, sy))
            else:
                out.append(_refline_svg(layer, sx, sy, (left, top, right, bottom)))
        out.append(self._axes_svg(sx, sy, (left, top, right, bottom)))
        out.append(self._legend_svg(sx, sy, (left, top, right, bottom)))
        out.append("</g>")
        return "\n".join(s for s in out if s)

    def _axes_svg(self, sx: Scale, sy: Scale, box: tuple[float, ...]) -> str:
        left, top, right, bottom = box
        xt = log_ticks(sx.lo, sx.hi) if self.log_x else nice_ticks(sx.lo, sx.hi)
        yt = nice_ticks(sy.lo, sy.hi)
        out = ['<g class="axes" stroke="#333" stroke-width="0.8">']
        out += [f'<line class="xtick" x1="{_num(p)}" y1="{_num(bottom)}" x2="{_num(p)}" '
                f'y2="{_num(bottom + 4)}"/>' for p in sx(xt)]
        out += [f'<line class="ytick" x1="{_num(left - 4)}" y1="{_num(p)}" x2="{_num(left)}" '
                f'y2="{_num(p)}"/>' for p in sy(yt)]
        out.append(f'</g>\n<g font-family="sans-serif" font-size="{FONT}" fill="#222">')
        out += [f'<text class="xtick" x="{_num(p)}" y="{_num(bottom + 16)}" '
                f'text-anchor="middle">{_esc(tick_label(t))}</text>' for t, p in zip(xt, sx(xt))]
        out += [f'<text class="ytick" x="{_num(left - 6)}" y="{_num(p + 4)}" '
                f'text-anchor="end">{_esc(tick_label(t))}</text>' for t, p in zip(yt, sy(yt))]
        mid_x, mid_y = (left + right) / 2, (top + bottom) / 2
        if self.title:
            out.append(f'<text class="title" x="{_num(mid_x)}" y="{_num(top - 9)}" '
                       f'text-anchor="middle" font-size="13">{_esc(self.title)}</text>')
        if self.xlabel:
            out.append(f'<text class="xlabel" x="{_num(mid_x)}" y="{_num(bottom + 34)}" '
                       f'text-anchor="middle">{_esc(self.xlabel)}</text>')
        if self.ylabel:
            x = left - MARGIN[0] + 14
            out.append(f'<text class="ylabel" x="{_num(x)}" y="{_num(mid_y)}" '
                       f'text-anchor="middle" transform="rotate(-90 {_num(x)} {_num(mid_y)})">'
                       f'{_esc(self.ylabel)}</text>')
        return "\n".join(out) + "\n</g>"

    def _covered(self, sx: Scale, sy: Scale, box: tuple[float, ...]) -> int:
        """How many bars, points and reference lines reach into ``box`` (pixels)."""
        x0, y0, x1, y1 = box
        hits = 0
        for la in self.layers:
            if isinstance(la, _Bars):
                hits += int(np.sum((sx(la.right) > x0) & (sx(la.left) < x1) & (la.heights != 0)
                                   & (sy(la.heights) < y1)))
            elif isinstance(la, _Points):
                px, py = sx(la.x), sy(la.y)
                hits += int(np.sum((px > x0) & (px < x1) & (py > y0) & (py < y1)))
            else:  # a line, and a vertical one's label: weigh them as several bars
                p = float(sx(la.at) if la.vertical else sy(la.at))
                hits += 10 * bool(x0 - 12 < p < x1 + 2 if la.vertical else y0 < p < y1)
        return hits

    def _legend_svg(self, sx: Scale, sy: Scale, box: tuple[float, ...]) -> str:
        """A box of the labelled layers' swatches, in the plot's top corner (right, or left
        where that hides less of the data)."""
        entries = [la for la in self.layers if isinstance(la, (_Bars, _Points)) and la.label]
        if not entries:
            return ""
        left, top, right, _ = box
        row, pad = 15.0, 6.0
        width = 30 + 0.6 * FONT * max(len(la.label or "") for la in entries)
        height = row * len(entries) + 6
        corners = [(right - width - pad, top + pad), (left + pad, top + pad)]
        x0, y0 = min(corners, key=lambda c: self._covered(sx, sy, (*c, c[0] + width,
                                                                    c[1] + height)))
        out = [f'<g class="legend" font-family="sans-serif" font-size="{FONT}">',
               f'<rect x="{_num(x0)}" y="{_num(y0)}" width="{_num(width)}" '
               f'height="{_num(height)}" fill="white" fill-opacity="0.85" stroke="#ccc"/>']
        for i, la in enumerate(entries):
            cy = y0 + 3 + row * i + row / 2
            if isinstance(la, _Bars):
                out.append(f'<rect x="{_num(x0 + 6)}" y="{_num(cy - 5)}" width="14" height="10" '
                           f'fill="{la.color}" fill-opacity="{la.opacity:g}"/>')
            else:
                paint = ('fill="none" stroke="black"' if la.hollow else
                         f'fill="{la.colors[0]}" fill-opacity="{la.opacity:g}"')
                out.append(f'<circle cx="{_num(x0 + 13)}" cy="{_num(cy)}" r="3.5" {paint}/>')
            out.append(f'<text x="{_num(x0 + 26)}" y="{_num(cy + 4)}" fill="#222">'
                       f'{_esc(la.label or "")}</text>')
        return "\n".join(out) + "\n</g>"


def _bars_svg(bars: _Bars, sx: Scale, sy: Scale) -> str:
    # Zero-height bars draw nothing: leave them out (keeps files small and bars countable).
    nonzero = bars.heights != 0
    x0, x1 = sx(bars.left[nonzero]), sx(bars.right[nonzero])
    y0, y1 = sy(np.zeros(int(nonzero.sum()))), sy(bars.heights[nonzero])
    rects = "".join(
        f'<rect x="{_num(min(a, b))}" y="{_num(min(c, d))}" width="{_num(abs(b - a))}" '
        f'height="{_num(abs(d - c))}"/>' for a, b, c, d in zip(x0, x1, y0, y1))
    # crispEdges: no hairline seams between touching bars.
    return (f'<g class="bars" fill="{bars.color}" fill-opacity="{bars.opacity:g}" '
            f'shape-rendering="crispEdges">{rects}</g>' if rects else "")


def _points_svg(points: _Points, sx: Scale, sy: Scale) -> str:
    px, py = sx(points.x), sy(points.y)
    colors = np.array(points.colors if len(points.colors) > 1 else points.colors * px.size)
    out = []
    # One group per colour (sorted, for the same bytes every time), each point a circle.
    for color in sorted(set(colors.tolist())):
        mine = np.flatnonzero(colors == color)
        alpha = f"{points.opacity:g}"
        paint = (f'fill="none" stroke="black" stroke-width="0.8" stroke-opacity="{alpha}"'
                 if points.hollow else f'fill="{color}" fill-opacity="{alpha}"')
        r = f"{points.radius:g}"
        circles = "".join(f'<circle cx="{_num(px[i])}" cy="{_num(py[i])}" r="{r}"/>'
                          for i in mine)
        out.append(f'<g class="points" {paint}>{circles}</g>')
    return "\n".join(out)


def _refline_svg(line: _RefLine, sx: Scale, sy: Scale, box: tuple[float, ...]) -> str:
    left, top, right, bottom = box
    dash = 'stroke="black" stroke-width="1" stroke-dasharray="5 3"'
    if line.vertical:
        p = float(sx(line.at))
        out = [f'<line class="refline" x1="{_num(p)}" y1="{_num(top)}" x2="{_num(p)}" '
               f'y2="{_num(bottom)}" {dash}/>']
        if line.label:  # reads upwards, hanging from the top, left of the line
            x, y = p - 3, top + 4
            turn = f'transform="rotate(-90 {_num(x)} {_num(y)})"'
            # a pale backing (SVG 1.1 has no text halo), so bars behind do not hide the label
            w = 0.55 * 9 * len(line.label) + 2
            out.append(f'<rect x="{_num(x - w)}" y="{_num(y - 8)}" width="{_num(w)}" '
                       f'height="10" fill="white" fill-opacity="0.7" {turn}/>')
            out.append(f'<text class="refline" x="{_num(x)}" y="{_num(y)}" text-anchor="end" '
                       f'font-family="sans-serif" font-size="9" {turn}>{_esc(line.label)}</text>')
    else:
        p = float(sy(line.at))
        out = [f'<line class="refline" x1="{_num(left)}" y1="{_num(p)}" x2="{_num(right)}" '
               f'y2="{_num(p)}" {dash}/>']
        if line.label:
            out.append(f'<text class="refline" x="{_num(right - 4)}" y="{_num(p - 3)}" '
                       f'text-anchor="end" font-family="sans-serif" font-size="9">'
                       f'{_esc(line.label)}</text>')
    return "\n".join(out)


def to_svg(charts: Chart | Sequence[Chart]) -> str:
    """A standalone SVG 1.1 document of ``charts``, side by side in one row."""
    row = [charts] if isinstance(charts, Chart) else list(charts)
    width = sum(c.width for c in row)
    height = max((c.height for c in row), default=0.0)
    body, dx = [], 0.0
    for chart in row:
        body.append(chart.svg(dx))
        dx += chart.width
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{_num(width)}" '
            f'height="{_num(height)}" viewBox="0 0 {_num(width)} {_num(height)}">\n'
            f'<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(body) + "\n</svg>\n")


def save(path: Path, charts: Chart | Sequence[Chart]) -> str:
    """Write ``charts`` (one, or several in a row) as an SVG file at ``path``, atomically
    (io.write_text goes through io.atomic_path); returns the file name."""
    write_text(path, to_svg(charts))
    return path.name
