"""The report's conversation section (SPEC §5): how many turns the conversations have, the
distribution of per-turn IFD and IQS (``--turns all``), and one selected conversation's
per-turn scores. Built from scores.parquet and the run's records, like the rest of the report.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pyarrow as pa

from car_engine.corpus.conversations import parse_json
from car_engine.plot_axes import bin_edges
from car_engine.rundir import take_run_records
from car_engine.svg_plots import ALL, Chart, save


def per_turn_ifd(row: dict) -> list[float | None]:
    """A record's per-turn IFD (ppl ratio, exp(cond - direct)) from its per-turn losses."""
    cond, direct = row.get("turn_loss_cond") or [], row.get("turn_loss_direct") or []
    return [None if c is None or d is None else math.exp(c - d) for c, d in zip(cond, direct)]


def turns_section(run_dir: Path, scores: pa.Table,
                  selected: np.ndarray) -> tuple[list[tuple[str, str]], str]:
    """(plots, HTML) of the conversation section, its plot written to RUN_DIR/turns.svg;
    nothing when no record is a conversation."""
    chats = take_run_records(run_dir, np.arange(scores.num_rows), ["turns"])
    parsed = [parse_json(c) if c else None for c in chats.column("turns").to_pylist()]
    if not any(parsed):
        return [], ""
    counts = np.array([len(c.scored) for c in parsed if c is not None])
    rows = scores.select([c for c in ("id", "turn_loss_cond", "turn_loss_direct", "turn_iqs",
                                      "turn_status") if c in scores.column_names]).to_pylist()
    ifd = [v for r in rows for v in per_turn_ifd(r) if v is not None]
    iqs = [v for r in rows for v in (r.get("turn_iqs") or []) if v is not None]
    panels = [("scored turns per conversation", counts)]
    panels += [(name, np.array(v)) for name, v in (("per-turn IFD", ifd), ("per-turn IQS", iqs))
               if v]
    charts = []
    for name, values in panels:
        chart = Chart(name, ylabel="count", width=380, height=290)
        chart.histogram(values, bin_edges(values, min(40, max(5, len(np.unique(values))))), ALL)
        charts.append(chart)
    svg = save(run_dir / "turns.svg", charts)
    quantiles = np.percentile(counts, (50, 90, 100))
    text = (f"<p>{counts.size} conversations of {scores.num_rows} records; scored turns per "
            f"conversation: median {quantiles[0]:.0f}, p90 {quantiles[1]:.0f}, max "
            f"{quantiles[2]:.0f}.</p>")
    return [("Conversations", svg)], text + _example(rows, parsed, selected)


def _example(rows: list[dict], parsed: list, selected: np.ndarray) -> str:
    """The per-turn scores of the first selected conversation with the most turns."""
    candidates = [i for i in np.flatnonzero(selected) if parsed[i] is not None]
    if not candidates:
        return ""
    pick = max(candidates, key=lambda i: (len(parsed[i].turns), -i))
    conv, row = parsed[pick], rows[pick]
    ifd = per_turn_ifd(row)
    iqs = row.get("turn_iqs") or []
    status = row.get("turn_status") or []

    def cell(values: list, t: int, fmt: str = "{:.4f}") -> str:
        return fmt.format(values[t]) if t < len(values) and values[t] is not None else ""

    lines = [f"<h3>Selected conversation {html.escape(str(row['id']))}: per-turn scores</h3>",
             "<table class=ex><tr><th>turn</th><th>user</th><th>IFD</th><th>IQS</th>"
             "<th>status</th></tr>"]
    for t, turn in enumerate(conv.turns):
        lines.append(f"<tr><td>{t + 1}</td><td>{html.escape(turn.user[:200])}</td>"
                     f"<td>{cell(ifd, t)}</td><td>{cell(iqs, t)}</td>"
                     f"<td>{html.escape(cell(status, t, '{}'))}</td></tr>")
    return "\n".join(lines) + "</table>"
