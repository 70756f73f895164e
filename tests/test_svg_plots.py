"""car_engine.svg_plots: every chart kind is valid SVG with the bars and points its data calls
for, ticks are round (powers of ten on a log axis), odd data (empty, NaN, one value) still
draws, and the same input gives the same bytes."""

from __future__ import annotations

import ast
import math
import os
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import tomllib

from car_engine.plot_axes import bin_edges, log_ticks, nice_ticks
from car_engine.svg_plots import ALL, PALETTE, SELECTED, Chart, save, to_svg

NS = "{http://www.w3.org/2000/svg}"


def parse(chart: Chart | list[Chart]) -> ElementTree.Element:
    root = ElementTree.fromstring(to_svg(chart).encode())
    assert root.tag == f"{NS}svg" and root.get("version") == "1.1"
    return root


def groups(root: ElementTree.Element, kind: str) -> list[ElementTree.Element]:
    return root.findall(f".//{NS}g[@class='{kind}']")


def rects(group: ElementTree.Element) -> list[dict[str, float]]:
    return [{k: float(v) for k, v in r.attrib.items()} for r in group.findall(f"{NS}rect")]


def tick_labels(root: ElementTree.Element, axis: str) -> list[str]:
    return [t.text or "" for t in root.findall(f".//{NS}text[@class='{axis}']")]


def test_a_histogram_draws_one_bar_per_non_empty_bin_its_height_the_count():
    values = np.array([0.5, 1.5, 1.5, 3.5, 3.5, 3.5, 3.5])  # bins 0-1: 1, 1-2: 2, 2-3: 0, 3-4: 4
    chart = Chart("counts", xlabel="x", ylabel="records")
    chart.histogram(values, np.arange(5.0), ALL, label="all records")
    root = parse(chart)
    (bars,) = groups(root, "bars")
    assert bars.get("fill") == ALL
    drawn = sorted(rects(bars), key=lambda r: r["x"])
    assert len(drawn) == 3  # the empty bin draws nothing
    per_count = drawn[0]["height"]
    assert [r["height"] / per_count for r in drawn] == pytest.approx([1, 2, 4], abs=0.01)
    # Bars stand on one baseline and are equally wide (equal bins), the empty one a gap.
    assert len({round(r["y"] + r["height"], 1) for r in drawn}) == 1
    assert drawn[1]["width"] == pytest.approx(drawn[0]["width"], abs=0.11)
    assert drawn[2]["x"] - drawn[1]["x"] == pytest.approx(2 * drawn[0]["width"], abs=0.2)
    assert [t.text for t in root.iter(f"{NS}text") if t.get("class") == "title"] == ["counts"]
    assert "all records" in [t.text for t in groups(root, "legend")[0].iter(f"{NS}text")]


def test_two_overlaid_histograms_share_the_bins_and_weights_give_shares():
    values = np.array([1.0, 1.0, 2.0, 3.0])
    selected = np.array([True, False, False, True])
    edges = bin_edges(values, 2)  # 1-2, 2-3 (3 falls in the last bin)
    chart = Chart()
    chart.histogram(values, edges, ALL, weights=np.full(4, 0.25))
    chart.histogram(values[selected], edges, SELECTED, weights=np.full(2, 0.5), opacity=0.7)
    everything, picked = groups(parse(chart), "bars")
    assert picked.get("fill") == SELECTED and picked.get("fill-opacity") == "0.7"
    # shares: all records 0.5 and 0.5; selected 0.5 and 0.5 -> four equal bars
    heights = [r["height"] for g in (everything, picked) for r in rects(g)]
    assert len(heights) == 4 and max(heights) - min(heights) < 0.11


def test_bars_from_a_stored_histogram_and_cluster_sizes():
    edges, counts = np.linspace(0, 1, 11), np.array([0, 3, 0, 0, 5, 1, 0, 0, 0, 2])
    chart = Chart("stored")
    chart.bars(edges[:-1], edges[1:], counts)
    chart.vline(0.8, "cut 0.8")
    root = parse(chart)
    assert len(rects(groups(root, "bars")[0])) == 4
    lines = root.findall(f".//{NS}line[@class='refline']")
    assert len(lines) == 1 and lines[0].get("x1") == lines[0].get("x2")
    label = root.find(f".//{NS}text[@class='refline']")
    assert label is not None and label.text == "cut 0.8" and "rotate(-90" in label.get(
        "transform", "")
    sizes, picks = np.array([9, 5, 2]), np.array([1, 0, 2])
    x = np.arange(3)
    clusters = Chart()
    clusters.bars(x - 0.5, x + 0.5, sizes, label="cluster size")
    clusters.bars(x - 0.5, x + 0.5, picks, SELECTED, label="selected from cluster")
    size_bars, pick_bars = groups(parse(clusters), "bars")
    assert len(rects(size_bars)) == 3 and len(rects(pick_bars)) == 2


def test_scatter_counts_points_skips_non_finite_and_circles_the_selected():
    x = np.array([0.0, 1.0, 2.0, np.nan, 4.0])
    y = np.array([1.0, np.inf, 3.0, 4.0, 5.0])
    chart = Chart()
    chart.scatter(x, y, ALL, radius=1.5, opacity=0.5, label="not selected")
    chart.scatter(x[[4]], y[[4]], radius=3.5, hollow=True, label="selected")
    chart.hline(1.0)
    root = parse(chart)
    dots, rings = groups(root, "points")
    assert len(dots.findall(f"{NS}circle")) == 3  # (1, inf) and (nan, 4) skipped
    assert dots.get("fill") == ALL and rings.get("fill") == "none"
    assert [c.get("r") for c in rings.findall(f"{NS}circle")] == ["3.5"]
    (line,) = root.findall(f".//{NS}line[@class='refline']")
    assert line.get("y1") == line.get("y2")


def test_a_scatter_coloured_by_label_cycles_20_colours():
    labels = np.array([0, 1, 20, 21, 5, -1])
    chart = Chart()
    chart.scatter(np.arange(6.0), np.arange(6.0), labels)
    by_colour = {g.get("fill"): len(g.findall(f"{NS}circle"))
                 for g in groups(parse(chart), "points")}
    assert len(PALETTE) == len(set(PALETTE)) == 20
    assert by_colour == {PALETTE[0]: 2, PALETTE[1]: 2, PALETTE[5]: 1, PALETTE[19]: 1}


def test_a_row_of_panels_is_one_document_side_by_side():
    rng = np.random.default_rng(0)
    charts = []
    for name in ("a", "b", "c"):
        chart = Chart(name, ylabel="count", width=300, height=250)
        values = rng.normal(size=50)
        chart.histogram(values, bin_edges(values, 10))
        charts.append(chart)
    root = parse(charts)
    assert root.get("width") == "900.0" and root.get("height") == "250.0"
    panels = groups(root, "chart")
    assert len(panels) == 3
    areas = [float(p.find(f"{NS}rect[@class='plot-area']").get("x")) for p in panels]
    assert areas == sorted(areas) and areas[1] - areas[0] == pytest.approx(300)
    assert all(sum(len(rects(g)) for g in groups(p, "bars")) > 0 for p in panels)


def test_ticks_are_round_and_inside_the_range():
    assert nice_ticks(0.0, 1.0).tolist() == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(-0.13, 1.18).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert nice_ticks(0.1, 0.7).tolist() == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert nice_ticks(3.0, 3.0).tolist() == [3.0]
    assert nice_ticks(math.nan, 1.0).size == 0
    assert log_ticks(1.0, 5000.0).tolist() == [1.0, 10.0, 100.0, 1000.0]
    assert log_ticks(3.0, 40.0).tolist() == [5.0, 10.0, 20.0]
    assert log_ticks(3.0, 4.0).tolist() == nice_ticks(3.0, 4.0).tolist()


def test_a_log_x_axis_is_ticked_at_powers_of_ten_spaced_evenly():
    words = np.array([0, 1, 5, 30, 200, 900], dtype=float) + 1
    chart = Chart(log_x=True)
    chart.histogram(words, np.logspace(0, 3, 10))
    root = parse(chart)
    assert tick_labels(root, "xtick") == ["1", "10", "100", "1000"]
    xs = [float(t.get("x")) for t in root.findall(f".//{NS}text[@class='xtick']")]
    steps = np.diff(xs)
    assert steps.max() - steps.min() < 0.2  # each decade the same width
    drawn = sorted(rects(groups(root, "bars")[0]), key=lambda r: r["x"])
    # 1 and 2 share the first bin (1-2.15); 6, 31, 201, 901 have one each
    assert [round(r["height"] / drawn[1]["height"], 2) for r in drawn] == [2, 1, 1, 1, 1]
    assert drawn[0]["x"] == pytest.approx(float(root.find(f".//{NS}rect[@class='plot-area']")
                                                 .get("x")))  # x = 1 is the axis' left end


@pytest.mark.parametrize("values", [np.zeros(0), np.full(5, np.nan), np.full(4, 2.5),
                                    np.array([np.nan, np.inf, 7.0])],
                         ids=["empty", "all-nan", "constant", "one-finite"])
def test_odd_data_still_gives_valid_svg(values):
    for log_x in (False, True):
        chart = Chart("odd <data> & 'quotes'", xlabel="x", ylabel="y", log_x=log_x)
        edges = bin_edges(values, 10)
        chart.histogram(values, edges if not log_x else np.logspace(0, 1, 5), label="all")
        chart.histogram(values[:0], edges, SELECTED, label="selected")
        chart.vline(float("nan"), "ignored")
        chart.vline(2.5, "cut")
        root = parse(chart)
        assert tick_labels(root, "ytick")  # the axes are drawn, with ticks
        title = root.find(f".//{NS}text[@class='title']")
        assert title is not None and title.text == "odd <data> & 'quotes'"
        finite = values[np.isfinite(values)]
        drawn = sum(len(rects(g)) for g in groups(root, "bars"))
        assert drawn == (1 if finite.size else 0)  # every finite value here is one bin's
        for g in groups(root, "bars"):
            assert all(np.isfinite(list(r.values())).all() for r in rects(g))
        scatter = Chart(log_x=log_x)
        scatter.scatter(values, values, np.zeros(values.size, dtype=int))
        scatter.scatter(values[:0], values[:0], hollow=True, label="selected")
        points = [c for g in groups(parse(scatter), "points") for c in g.findall(f"{NS}circle")]
        assert len(points) == finite.size
        assert all(math.isfinite(float(c.get("cx"))) for c in points)
    assert parse(Chart()).find(f".//{NS}rect[@class='plot-area']") is not None  # no layers


def test_zero_counts_draw_no_bars_but_axes():
    chart = Chart()
    chart.bars(np.arange(3.0), np.arange(1.0, 4.0), np.zeros(3))
    root = parse(chart)
    assert not groups(root, "bars") and tick_labels(root, "xtick")


def test_same_input_same_bytes_and_saved_atomically(tmp_path):
    def chart() -> list[Chart]:
        rng = np.random.default_rng(7)
        a, b = Chart("one", log_x=True), Chart("two")
        values = rng.lognormal(3, 1, 500)
        a.histogram(values, np.logspace(0, 3, 30), weights=np.full(500, 1 / 500), label="all")
        b.scatter(rng.normal(size=300), rng.normal(size=300), rng.integers(0, 40, 300))
        b.vline(0.1, "cut 0.1")
        return [a, b]

    path = tmp_path / "plot.svg"
    assert save(path, chart()) == "plot.svg"
    first = path.read_bytes()
    save(path, chart())
    assert path.read_bytes() == first == to_svg(chart()).encode()
    assert sorted(os.listdir(tmp_path)) == ["plot.svg"]  # no temp file left beside it
    ElementTree.fromstring(first)


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "plot.svg"
    save(path, Chart("old"))
    old = path.read_bytes()

    def broken(self: Path, *args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", broken)
    with pytest.raises(OSError):
        save(path, Chart("new"))
    assert path.read_bytes() == old and sorted(os.listdir(tmp_path)) == ["plot.svg"]


def test_no_engine_module_imports_matplotlib_and_it_is_no_dependency():
    root = Path(__file__).resolve().parents[1]
    importers = []
    for path in sorted((root / "car_engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            importers += [str(path) for n in names if n.split(".")[0] == "matplotlib"]
    assert importers == []
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("matplotlib")]
