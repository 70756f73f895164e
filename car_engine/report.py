"""RUN_DIR/report.html: what was kept and why, with SVG plots beside it (car_engine.svg_plots).

Built only from the run folder (scores.parquet, summary.json, the records shards and the
embeddings, read through car_engine.rundir), so `car-engine report RUN_DIR` can rebuild it at
any time.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from car_engine.errors import CorpusError
from car_engine.io import write_text
from car_engine.plot_axes import bin_edges
from car_engine.rundir import take_run_records
from car_engine.select import WHY_N1
from car_engine.svg_plots import ALL, SELECTED, Chart, save

EXAMPLES = 5
MAP_POINTS = 20_000  # at most this many points per series in a scatter (SVG grows per point)


def _sample(mask: np.ndarray, limit: int = MAP_POINTS) -> np.ndarray:
    """The rows where ``mask`` holds: all of them, or ``limit`` of them drawn evenly at random
    (seeded: the same run gives the same plot), in order."""
    rows = np.flatnonzero(mask)
    if rows.size <= limit:
        return rows
    return np.sort(np.random.default_rng(0).choice(rows, limit, replace=False))


def _histogram(values: np.ndarray, selected: np.ndarray, title: str, xlabel: str,
               cuts: dict[str, float], path: Path) -> str:
    edges = bin_edges(values, 60)
    chart = Chart(title, xlabel=xlabel, ylabel="records")
    chart.histogram(values, edges, ALL, label="all records")
    chart.histogram(values[selected], edges, SELECTED, label="selected")
    for label, x in cuts.items():
        chart.vline(x, label)
    return save(path, chart)


def _scatter(iqs: np.ndarray, ifd: np.ndarray, selected: np.ndarray, path: Path) -> str:
    ok = np.isfinite(iqs) & np.isfinite(ifd)
    rest, picked = _sample(ok & ~selected), _sample(ok & selected)
    shown = "" if rest.size + picked.size == ok.sum() else \
        f" ({rest.size + picked.size} of {int(ok.sum())} shown)"
    chart = Chart(f"IQS vs IFD{shown}", xlabel="IQS (higher = better quality)",
                  ylabel="IFD (ppl ratio; >= 1 dropped)", width=540, height=420)
    chart.scatter(iqs[rest], ifd[rest], ALL, radius=1.8, opacity=0.6, label="not selected")
    chart.scatter(iqs[picked], ifd[picked], SELECTED, radius=2.2, label="selected")
    chart.hline(1.0)
    return save(path, chart)


def _cluster_sizes(labels: np.ndarray, selected: np.ndarray, path: Path) -> str:
    k = int(labels.max(initial=-1)) + 1
    sizes = np.bincount(labels[labels >= 0], minlength=k)
    picks = np.bincount(labels[(labels >= 0) & selected], minlength=k)
    order = np.argsort(-sizes, kind="stable")
    x = np.arange(k)
    chart = Chart(f"{k} clusters, largest first", xlabel="cluster (by size)", ylabel="records",
                  width=700)
    chart.bars(x - 0.5, x + 0.5, sizes[order], ALL, label="cluster size")
    chart.bars(x - 0.5, x + 0.5, picks[order], SELECTED, label="selected from cluster")
    return save(path, chart)


def _cluster_map(vectors: np.ndarray, labels: np.ndarray, selected: np.ndarray,
                 path: Path) -> str:
    rows = _sample(np.ones(len(labels), dtype=bool))
    x = np.asarray(vectors[rows], dtype=np.float64)
    x -= x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)  # the top 2 principal axes
    xy = x @ vt[:2].T
    chart = Chart("Clusters on the first two principal components (colour = cluster)",
                  xlabel="PC 1", ylabel="PC 2", width=560, height=480)
    chart.scatter(xy[:, 0], xy[:, 1], labels[rows], radius=1.5, opacity=0.5)
    sel = selected[rows]
    chart.scatter(xy[sel, 0], xy[sel, 1], radius=3.5, hollow=True, label="selected")
    return save(path, chart)


def _answer_lengths(run_dir: Path, scores: pa.Table, selected: np.ndarray,
                    path: Path) -> tuple[str, str]:
    """Answer lengths (words) of the selected records against the corpus's (issue #21: a
    length-biased selection shows at a glance): a plot and a quantile table."""
    outputs = take_run_records(run_dir, np.arange(scores.num_rows), ["output"])
    words = np.array([len(str(t or "").split()) for t in outputs.column("output").to_pylist()],
                     dtype=np.float64)
    bins = np.logspace(0, np.log10(max(2.0, words.max(initial=0) + 1)), 40)
    chart = Chart("Answer length, selected vs the corpus", log_x=True,
                  xlabel="answer words + 1 (log scale)", ylabel="share of its records")
    # Shares per bin (not densities: log-spaced bins differ in width).
    if words.size:
        chart.histogram(words + 1, bins, ALL, weights=np.full(len(words), 1 / len(words)),
                        label="all records")
    if selected.any():
        chart.histogram(words[selected] + 1, bins, SELECTED, opacity=0.7,
                        weights=np.full(int(selected.sum()), 1 / selected.sum()),
                        label="selected")
    svg = save(path, chart)
    quantiles = (10, 25, 50, 75, 90)
    head = "".join(f"<th>p{q}</th>" for q in quantiles)
    rows = []
    for name, part in (("corpus", words), ("selected", words[selected])):
        cells = ("".join(f"<td>{v:.0f}</td>" for v in np.percentile(part, quantiles))
                 if part.size else "<td></td>" * len(quantiles))
        rows.append(f"<tr><td>{name} ({part.size})</td>{cells}<td>"
                    f"{part.mean() if part.size else float('nan'):.0f}</td></tr>")
    table = (f"<table><tr><th>answer words</th>{head}<th>mean</th></tr>{''.join(rows)}"
             "</table>")
    return svg, table


def _examples(run_dir: Path, scores: pa.Table, column: str) -> str:
    """Top and bottom records by ``column``, with their text."""
    values = scores[column].to_numpy(zero_copy_only=False).astype(float)
    ok = np.flatnonzero(np.isfinite(values))
    if ok.size == 0:
        return ""
    order = ok[np.argsort(-values[ok], kind="stable")]
    wanted = {"top": order[:EXAMPLES], "bottom": order[::-1][:EXAMPLES]}
    picked = np.concatenate(list(wanted.values()))
    texts = take_run_records(run_dir, picked, ["instruction", "input", "output"]).to_pylist()
    text_of = dict(zip(picked.tolist(), texts))
    parts = []
    for side, rows in wanted.items():
        parts.append(f"<h3>{side.title()} {EXAMPLES} by {column}</h3><table class=ex>")
        parts.append("<tr><th>id</th><th>score</th><th>instruction</th><th>output</th></tr>")
        for r in rows:
            rec = text_of[int(r)]
            instruction = (rec["instruction"] + (" " + rec["input"] if rec["input"] else ""))
            parts.append(
                f"<tr><td>{html.escape(str(scores['id'][int(r)]))}</td>"
                f"<td>{values[r]:.4f}</td><td>{html.escape(instruction[:400])}</td>"
                f"<td>{html.escape(rec['output'][:600])}</td></tr>")
        parts.append("</table>")
    return "\n".join(parts)


def _similarity_plot(hist: dict, cut: float, title: str, xlabel: str, path: Path) -> str:
    """A stored histogram (summary.json) as bars, with the duplicate cut marked."""
    edges, counts = np.asarray(hist["edges"], dtype=float), np.asarray(hist["counts"])
    chart = Chart(title, xlabel=xlabel, ylabel="count")
    chart.bars(edges[:-1], edges[1:], counts, ALL)
    chart.vline(cut, f"cut {cut:g}")
    return save(path, chart)


def _duplicates(summary: dict, run_dir: Path) -> tuple[list[tuple[str, str]], str]:
    """Plots and example groups of near and semantic duplicates (SPEC §9), when asked for."""
    found = summary.get("duplicates", {})
    plots, parts = [], []
    kinds = (("near_dup", "threshold", "Near duplicates: estimated Jaccard of LSH candidates",
              "estimated Jaccard (MinHash)", "near_dup_hist.svg"),
             ("semantic_dup", "cut", "Semantic duplicates: nearest cosine in the cluster",
              "cosine to the nearest record of its cluster", "semantic_dup_hist.svg"))
    for key, cut, title, xlabel, name in kinds:
        if key not in found:
            continue
        info = found[key]
        plots.append((title, _similarity_plot(info["histogram"], info[cut], title, xlabel,
                                              run_dir / name)))
        groups = "".join(f"<li>{html.escape(', '.join(g))}</li>" for g in info["examples"])
        parts.append(f"<h3>{html.escape(title.split(':')[0])}</h3><p>{info['groups']} groups "
                     f"(cut {info[cut]:g}); the largest, kept member first:</p><ul>{groups}</ul>")
    return plots, "".join(parts)


def build_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html and its SVG plots from a finished run's outputs."""
    run_dir = Path(run_dir)
    for need in ("scores.parquet", "summary.json"):
        if not (run_dir / need).is_file():
            raise CorpusError(f"{run_dir}: no {need}; run `car-engine run ... --out {run_dir}`")
    scores = pq.read_table(run_dir / "scores.parquet")
    summary = json.loads((run_dir / "summary.json").read_text())
    counts, cfg = summary["counts"], summary["config"]
    selected = scores["selected"].to_numpy(zero_copy_only=False)
    cols = scores.column_names
    plots: list[tuple[str, str]] = []
    if "iqs" in cols:
        iqs = scores["iqs"].to_numpy(zero_copy_only=False).astype(float)
        n1_picks = iqs[np.flatnonzero(np.asarray(scores["why"].to_pylist(), dtype=object)
                                      == WHY_N1)]
        cuts = {f"top-n1 cut {n1_picks.min():.3f}": float(n1_picks.min())} if n1_picks.size \
            else {}
        plots.append(("IQS scores", _histogram(iqs, selected, "IQS score distribution", "IQS",
                                               cuts, run_dir / "iqs_hist.svg")))
    if "ifd_ppl" in cols:
        ifd = scores["ifd_ppl"].to_numpy(zero_copy_only=False).astype(float)
        cuts = {"IFD = 1": 1.0}
        if summary["method"] == "ifd" and selected.any():
            cuts[f"selection cut {np.nanmin(ifd[selected]):.3f}"] = float(np.nanmin(ifd[selected]))
        plots.append(("IFD scores", _histogram(ifd, selected, "IFD (ppl ratio) distribution",
                                               "IFD", cuts, run_dir / "ifd_hist.svg")))
    if "iqs" in cols and "ifd_ppl" in cols:
        plots.append(("IQS vs IFD", _scatter(iqs, ifd, selected, run_dir / "iqs_vs_ifd.svg")))
    if "cluster" in cols:
        labels = scores["cluster"].to_numpy(zero_copy_only=False)
        plots.append(("Cluster sizes", _cluster_sizes(labels, selected,
                                                      run_dir / "cluster_sizes.svg")))
        emb = run_dir / "stages" / "cluster" / "embeddings.npy"
        if emb.is_file():
            vectors = np.load(emb, mmap_mode="r")
            plots.append(("Cluster map", _cluster_map(vectors, labels, selected,
                                                      run_dir / "cluster_map.svg")))
    length_svg, length_table = _answer_lengths(run_dir, scores, selected,
                                               run_dir / "answer_lengths.svg")
    plots.append(("Answer lengths", length_svg))
    from car_engine.report_turns import turns_section

    turn_plots, turns_html = turns_section(run_dir, scores, selected)
    plots.extend(turn_plots)
    # what the method ranks by (pre-experience: the instruction perplexity)
    # (an ifd run has the IQS too when its quality guard ran: IFD still ranks)
    ranks = ("ifd_ppl",) if summary["method"] == "ifd" else ()
    rank_col = next(c for c in (*ranks, "iqs", "ifd_ppl", "instruction_ppl") if c in cols)
    dup_plots, dup_html = _duplicates(summary, run_dir)
    plots.extend(dup_plots)
    rows = "".join(f"<tr><td>{html.escape(k.replace('_', ' '))}</td><td>{v}</td></tr>"
                   for k, v in counts.items())
    rows += "".join(f"<tr><td>{html.escape(stage)} scores from the cache</td>"
                    f"<td>{c['cached']} of {c['cached'] + c['computed']}</td></tr>"
                    for stage, c in sorted(summary.get("score_cache", {}).items())
                    if isinstance(c, dict))
    figures = "".join(f"<figure><img src='{html.escape(svg)}' alt='{html.escape(t)}'>"
                      f"<figcaption>{html.escape(t)}</figcaption></figure>" for t, svg in plots)
    params = html.escape(json.dumps({k: cfg[k] for k in ("method", "n1", "n2", "strategy",
                                                            "ifd_frac", "limit")}, indent=1))
    # Where each stage ran (summary.json "runtimes"; older run folders have none).
    ran = "".join(f"<tr><td>{html.escape(stage)}</td><td>{html.escape('; '.join(where))}</td>"
                  "</tr>" for stage, where in summary.get("runtimes", {}).items())
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>car-engine report: {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;
vertical-align:top}}table.ex td{{font-size:12px;max-width:480px}}figure{{display:inline-block;
margin:8px}}img{{max-width:520px}}</style></head><body>
<h1>car-engine report</h1>
<p>Method <b>{html.escape(summary["method"])}</b>: kept {counts.get("selected", 0)} of
{counts.get("items", 0)} input items. Outputs: selected.jsonl, scores.parquet
(every record, with why), rejected.jsonl.</p>
<h2>Counts</h2><table>{rows}</table>
<h2>Parameters</h2><pre>{params}</pre>
<h2>Devices and runtimes</h2><table>{ran}</table>
<h2>Answer lengths</h2>{length_table}
<h2>Plots</h2>{figures}
{"<h2>Duplicate groups</h2>" + dup_html if dup_html else ""}
{"<h2>Conversations</h2>" + turns_html if turns_html else ""}
<h2>Examples</h2>{_examples(run_dir, scores, rank_col)}
</body></html>"""
    out = run_dir / "report.html"
    write_text(out, page)
    return out
