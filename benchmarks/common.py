"""What every benchmark shares: timing, peak memory, the row shape, the table and RESULTS.md."""

from __future__ import annotations

import platform
import resource
import time
from collections.abc import Callable
from typing import Any

ROW_KEYS = ("stage", "items", "engine_per_s", "reference_per_s", "speedup", "peak_rss_mb",
            "check", "check_value", "check_ok")


def best_time(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """The fastest of ``repeat`` runs (the machine is shared and noisy) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def row(stage: str, items: int, engine_s: float, reference_s: float, check: str,
        check_value: float, check_ok: bool, **extra: Any) -> dict[str, Any]:
    """One comparison, in the shape `car-engine bench --json` writes."""
    return {
        "stage": stage,
        "items": items,
        "engine_per_s": items / engine_s if engine_s > 0 else float("inf"),
        "reference_per_s": items / reference_s if reference_s > 0 else float("inf"),
        "speedup": reference_s / engine_s if engine_s > 0 else float("inf"),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "check": check,
        "check_value": float(check_value),
        "check_ok": bool(check_ok),
        **extra,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of benchmark rows (the extra keys, like targets, go in last)."""
    extra = sorted({k for r in rows for k in r} - set(ROW_KEYS))
    keys = list(ROW_KEYS) + extra
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    """A one-line description of the machine the figures come from."""
    import os

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
           f"{platform.python_implementation()} {platform.python_version()}"
