"""The numbers behind a chart's axes (car_engine.svg_plots draws them): bin edges, round tick
values on linear and log axes, axis limits, and the data-to-pixel scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def bin_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """``bins`` equal-width bin edges over the finite ``values`` (0..1 when there are none)."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return np.histogram_bin_edges(finite if finite.size else np.zeros(0), bins=bins,
                                  range=None if finite.size else (0.0, 1.0))


def nice_ticks(lo: float, hi: float, target: int = 5) -> np.ndarray:
    """Round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) inside [lo, hi], about
    ``target`` steps apart."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return np.array([lo]) if math.isfinite(lo) else np.zeros(0)
    raw = (hi - lo) / target
    power = 10.0 ** math.floor(math.log10(raw))
    # The round step nearest (by ratio) to ``target`` equal steps; no 2.5 between 1 and 10,
    # where the ticks of counts and indices should be whole numbers.
    steps = (1, 2, 5, 10) if power == 1 else (1, 2, 2.5, 5, 10)
    step = min((m * power for m in steps), key=lambda st: abs(math.log(st / raw)))
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    # Multiply integers by the step (no running sum) and round, so 0.1 * 3 prints as 0.3.
    return np.round(np.arange(first, last + 1) * step, 12)


def log_ticks(lo: float, hi: float) -> np.ndarray:
    """Tick values for a log axis on [lo, hi] (lo > 0): the powers of ten, or 1-2-5 steps
    when fewer than two powers fall inside, or round linear ticks on a very short range."""
    if not (lo > 0 and math.isfinite(hi)) or hi <= lo:
        return nice_ticks(lo, hi)
    powers = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    for steps in ((1,), (1, 2, 5)):
        ticks = np.array([m * 10.0 ** p for p in powers for m in steps])
        ticks = ticks[(ticks >= lo * (1 - 1e-9)) & (ticks <= hi * (1 + 1e-9))]
        if ticks.size >= 2:
            return ticks
    return nice_ticks(lo, hi)


def tick_label(v: float) -> str:
    """A tick label: the shortest exact form (ticks are already rounded)."""
    return f"{v:.10g}"


@dataclass(frozen=True)
class Scale:
    """Data to pixels on one axis: [lo, hi] onto [start, start + length] (length < 0 for y)."""

    lo: float
    hi: float
    start: float
    length: float
    log: bool

    def __call__(self, v: np.ndarray | float) -> np.ndarray:
        f = np.log10 if self.log else np.asarray
        lo, hi = f(self.lo), f(self.hi)
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.start + (f(v) - lo) / (hi - lo) * self.length


def limits(lo: float, hi: float, log: bool, margin: float) -> tuple[float, float]:
    """Axis limits around data spanning [lo, hi], ``margin`` of the span added either side;
    a zero span widens to +-5% of the value (+-0.5, or half a decade on a log axis, around 0
    or 1); no data gives 0..1 (1..10 on a log axis)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return (1.0, 10.0) if log else (0.0, 1.0)
    if log:
        a, b = math.log10(lo), math.log10(hi)
        a, b = (a - 0.5, b + 0.5) if b <= a else (a - (b - a) * margin, b + (b - a) * margin)
        return 10.0 ** a, 10.0 ** b
    if hi <= lo:
        pad = abs(lo) * 0.05 or 0.5
        return lo - pad, hi + pad
    pad = (hi - lo) * margin
    return lo - pad, hi + pad
