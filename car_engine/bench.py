"""`car-engine bench`: every stage against its reference way, side by side, in one command.

Each stage's comparison lives in one script of ``benchmarks/`` (installed as
``car_engine.benchmarks``) exposing ``run(quick, n) -> rows``; this module only runs them,
each in a fresh subprocess so that its peak memory is its own, and gathers the rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from car_engine.errors import UsageError

# stage -> the benchmark script that measures it (embed and cluster share one script)
SCRIPTS = {"select": "bench_select", "ifd": "bench_ifd", "iqs": "bench_iqs",
           "embed": "bench_cluster", "cluster": "bench_cluster", "dedup": "bench_dedup",
           "rescore": "bench_rescore", "pipeline": "bench_end_to_end"}
STAGES = tuple(SCRIPTS)
KEYS = ("stage", "items", "engine_per_s", "reference_per_s", "speedup", "peak_rss_mb", "check",
        "check_value", "check_ok")

_CHILD = """
import json, sys
from car_engine.benchmarks.{script} import run
rows = run(quick={quick}, n={n})
sys.stdout.write("\\n@@rows@@" + json.dumps(rows, default=float))
"""


def _run_script(script: str, quick: bool, n: int | None) -> list[dict[str, Any]]:
    code = _CHILD.format(script=script, quick=quick, n=n)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ))
    if proc.returncode != 0 or "@@rows@@" not in proc.stdout:
        tail = proc.stderr.strip().splitlines()[-5:]
        raise RuntimeError(f"benchmark {script} failed (exit {proc.returncode}): "
                           + " | ".join(tail))
    return json.loads(proc.stdout.rsplit("@@rows@@", 1)[1])


def run_bench(stages: list[str], *, quick: bool = False, n: int | None = None,
              progress: bool = True) -> list[dict[str, Any]]:
    """Run the benchmarks of ``stages`` and return their rows (the ``--json`` objects)."""
    unknown = [s for s in stages if s not in SCRIPTS]
    if unknown:
        raise UsageError(f"unknown stage(s) {', '.join(unknown)} (choose from {', '.join(STAGES)})")
    rows: list[dict[str, Any]] = []
    done: dict[str, list[dict[str, Any]]] = {}
    for stage in stages:
        script = SCRIPTS[stage]
        if script not in done:
            start = time.perf_counter()
            if progress:
                print(f"bench: {stage} ...", file=sys.stderr, flush=True)
            done[script] = _run_script(script, quick, n)
            if progress:
                print(f"bench: {script} took {time.perf_counter() - start:.0f} s",
                      file=sys.stderr, flush=True)
        rows += [r for r in done[script] if r["stage"].split("-")[0] == stage]
    return rows


def target_of(row: dict[str, Any]) -> float | None:
    """The speed-up the stage's issue asks for, when there is one."""
    target = row.get("target_speedup")
    return float(target) if isinstance(target, (int, float)) else None


def below_target(rows: list[dict[str, Any]]) -> list[str]:
    """'stage (got vs target)' for every row whose speed-up is under its target."""
    return [f"{r['stage']} ({r['speedup']:.2f}x vs {target_of(r):g}x)" for r in rows
            if target_of(r) is not None and r["speedup"] is not None
            and r["speedup"] < target_of(r)]


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The side-by-side table printed by `car-engine bench`."""
    head = ["stage", "items", "engine/s", "reference/s", "speed-up", "target", "peak MB", "check",
            "ok"]
    lines = [head]

    def num(value: float | None, spec: str, suffix: str = "") -> str:
        return "-" if value is None else f"{value:{spec}}{suffix}"  # None: nothing to compare

    for r in rows:
        lines.append([r["stage"], str(r["items"]), num(r["engine_per_s"], ".4g"),
                      num(r["reference_per_s"], ".4g"), num(r["speedup"], ".2f", "x"),
                      num(target_of(r), "g", "x"), num(r["peak_rss_mb"], ".0f"),
                      f"{r['check']} = {r['check_value']:.4g}",
                      "pass" if r["check_ok"] else "FAIL"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines)


def format_details(rows: list[dict[str, Any]]) -> str:
    """One line per row with what the table leaves out: targets, sizes, GEMM-peak fractions."""
    def show(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    def extra(r: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in r.items() if k not in KEYS and v is not None}

    return "\n".join(f"- {r['stage']}: " + ", ".join(f"{k} {show(v)}" for k, v in extra(r).items())
                     for r in rows if extra(r))


def write_json(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Rows as a JSON list of objects with exactly the documented keys."""
    from car_engine.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps([{k: r[k] for k in KEYS} for r in rows], indent=1))


def refresh_results(rows: list[dict[str, Any]], path: str | Path, command: str) -> None:
    """Replace the generated block at the top of RESULTS.md with these rows."""
    import platform

    from car_engine.io import atomic_path

    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    path = Path(path)
    text = path.read_text() if path.is_file() else "# Benchmark results\n"
    block = "\n".join([
        start,
        f"## `car-engine bench` summary ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}. Command: `{command}`",
        "", "```", format_rows(rows), "```", "", format_details(rows), end])
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        first_break = text.find("\n") + 1
        text = text[:first_break] + "\n" + block + "\n" + text[first_break:]
    with atomic_path(path) as tmp:
        tmp.write_text(text)
