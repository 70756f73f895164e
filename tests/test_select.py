"""CaR and IFD selection: SPEC §4 / §2 sets and order, through the API and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from car_engine.cli import main
from car_engine.errors import UsageError
from car_engine.select import (
    WHY_CLUSTER,
    WHY_DUPLICATE,
    WHY_MISALIGNED,
    WHY_N1,
    WHY_UNSCORED,
    select_car,
    select_ifd,
)


def spec_car(scores, labels, n1, n2, strategy="n1+k*n2", content=None):
    """SPEC §4 written as plainly as possible, for comparison."""
    rows = list(range(len(scores)))
    if content is not None:  # collapse equal content to its best-scored copy (then input order)
        best = {}
        for r in sorted(rows, key=lambda r: (-scores[r], r)):
            if not np.isnan(scores[r]):
                best.setdefault(content[r], r)
        rows = [r for r in rows if best.get(content[r]) == r]
    rows = [r for r in rows if not np.isnan(scores[r])]
    ranked = sorted(rows, key=lambda r: (-scores[r], r))
    top = ranked[:n1] if strategy == "n1+k*n2" else []
    per_cluster = []
    for c in sorted({labels[r] for r in rows if labels[r] >= 0}):
        per_cluster += [r for r in ranked if labels[r] == c][:n2]
    extra = sorted((r for r in per_cluster if r not in top), key=lambda r: (-scores[r], r))
    return top + extra


@pytest.mark.parametrize("strategy", ["n1+k*n2", "k*topn"])
@pytest.mark.parametrize("n1,n2", [(0, 1), (5, 1), (20, 2), (1000, 3)])
def test_car_selection_is_spec_section_4(strategy, n1, n2):
    rng = np.random.default_rng(n1 * 10 + n2)
    n = 300
    scores = rng.integers(0, 60, n).astype(float)
    scores[rng.random(n) < 0.05] = np.nan
    labels = rng.integers(-1, 12, n)
    sel = select_car(scores, labels, n1=n1, n2=n2, strategy=strategy)
    assert sel.order.tolist() == spec_car(scores, labels, n1, n2, strategy)
    assert sel.counts["selected"] == sel.counts["from_n1"] + sel.counts["added_by_clusters"]
    assert all(sel.why[r] == (WHY_N1 if v == "n1" else WHY_CLUSTER)
               for r, v in zip(sel.order, sel.via))
    assert all(sel.why[r] == WHY_UNSCORED for r in np.flatnonzero(np.isnan(scores)))


def test_car_collapses_duplicate_content_to_best_copy():
    from car_engine.native import hash_texts

    texts = ["a b", "A  b", "c", "a b", "d"]
    scores = np.array([1.0, 3.0, 2.0, 3.0, 0.5])
    labels = np.array([0, 0, 1, 1, 1])
    sel = select_car(scores, labels, n1=10, n2=1, hashes=hash_texts(texts))
    # "a b" x3 collapse to row 1 (best score 3.0, lower index than row 3)
    assert sel.order.tolist() == [1, 2, 4]
    assert sel.counts["duplicates_collapsed"] == 2
    assert sel.why[0] == sel.why[3] == WHY_DUPLICATE
    normal = [" ".join(t.casefold().split()) for t in texts]
    assert sel.order.tolist() == spec_car(scores, labels, 10, 1, content=normal)


def test_ifd_selection_drops_misaligned_and_keeps_top_fraction():
    ifd = np.array([0.5, 1.0, 0.9, np.nan, 1.2, 0.9, 0.1, 0.95])
    sel = select_ifd(ifd, fraction=0.5)  # base 8 -> 4 picks
    assert sel.order.tolist() == [7, 2, 5, 0]
    assert sel.why[1] == sel.why[4] == WHY_MISALIGNED
    assert select_ifd(ifd, count=10, keep_equal_one=True).order.tolist()[0] == 1
    assert select_ifd(ifd, fraction=0.5, base=4).order.size == 2
    with pytest.raises(UsageError):
        select_ifd(ifd)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_cli_select_car_writes_spec_order(tmp_path, capsys):
    rng = np.random.default_rng(7)
    n = 120
    scores = np.round(rng.random(n), 2)
    labels = rng.integers(0, 8, n)
    write_jsonl(tmp_path / "corpus.jsonl", [
        {"id": f"r{i}", "instruction": f"question {i}", "input": "", "output": f"answer {i}"}
        for i in range(n)] + [{"id": "bad", "instruction": "x", "output": ""}])
    write_jsonl(tmp_path / "scores.jsonl",
                [{"id": f"r{i}", "iqs": s} for i, s in enumerate(scores)])
    write_jsonl(tmp_path / "clusters.jsonl",
                [{"id": f"r{i}", "cluster": int(c)} for i, c in enumerate(labels)])
    out = tmp_path / "selected.jsonl"
    code = main(["select", "--scores", str(tmp_path / "scores.jsonl"), "--clusters",
                 str(tmp_path / "clusters.jsonl"), "--corpus", str(tmp_path / "corpus.jsonl"),
                 "--out", str(out), "--n1", "10", "--n2", "2"])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = spec_car(scores, labels, 10, 2)
    assert [r["id"] for r in rows] == [f"r{i}" for i in expected]
    assert rows[0]["output"] == f"answer {expected[0]}" and rows[0]["selected_by"] == "n1"
    assert {r["cluster"] for r in rows} == set(range(8))
    summary = capsys.readouterr().out
    assert "from n1: 10" in summary and "rejected: 1" in summary


def test_cli_select_reports_bad_input_without_traceback(tmp_path, capsys):
    write_jsonl(tmp_path / "scores.jsonl", [{"id": "a", "iqs": 1.0}, {"id": "a", "iqs": 2.0}])
    write_jsonl(tmp_path / "clusters.jsonl", [{"id": "a", "cluster": 0}])
    code = main(["select", "--scores", str(tmp_path / "scores.jsonl"), "--clusters",
                 str(tmp_path / "clusters.jsonl"), "--out", str(tmp_path / "o.jsonl")])
    assert code == 3
    assert "id 'a' appears more than once" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
