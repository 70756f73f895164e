"""`car-engine select` on hostile flags and score/cluster files: usage errors before any read,
no abort at exit after a Parquet read, and every input fault exit 3 naming the file, the id
and the value (never blamed on the output)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from car_engine.cli import main


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    # json.dumps writes NaN and Infinity as the literals Python's json (and so read_table) takes
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Rows as JSONL or Parquet, by the path's suffix."""
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    return write_jsonl(path, rows)


def select(capsys, *args: str | Path) -> tuple[int, str]:
    """Run `car-engine select ARGS` in process: (exit code, stderr), stderr one line or none."""
    code = main(["select", *map(str, args)])
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) <= 1 and "Traceback" not in err, err
    return code, err


def wide_parquet(path: Path) -> Path:
    """Scores in many row groups: many prefetched reads left for Arrow's I/O threads to free."""
    n = 50_000
    rng = np.random.default_rng(0)
    table = pa.table({"id": [f"r{i}" for i in range(n)], "ifd_ppl": rng.random(n),
                      "ifd_loss": rng.random(n), "iqs": rng.random(n),
                      "status": pa.array(["ok"] * n)})
    pq.write_table(table, path, row_group_size=100)
    return path


@pytest.fixture
def two_scores(tmp_path) -> Path:
    return write_jsonl(tmp_path / "s.jsonl", [{"id": "a", "iqs": 1.0}, {"id": "b", "iqs": 2.0}])


# --------------------------------------------------------------- 3: usage errors, exit abort


@pytest.mark.parametrize("flags", [
    ["--ifd"],                                          # neither --ifd-frac nor --ifd-count
    ["--ifd", "--ifd-frac", "0.1", "--ifd-count", "3"],  # both
    ["--ifd", "--ifd-frac", "1.5"],
    ["--ifd", "--ifd-count", "-1"],
    [],                                                 # CaR without --clusters
    ["--clusters", "c.jsonl", "--n1", "-1"],
])
@pytest.mark.parametrize("scores", ["absent.parquet", "garbage.parquet"])
def test_usage_errors_exit_2_before_any_file_is_read(tmp_path, capsys, flags, scores):
    (tmp_path / "garbage.parquet").write_bytes(b"PAR1 not parquet")
    code, err = select(capsys, "--scores", tmp_path / scores, *flags,
                       "--out", tmp_path / "s.jsonl")
    assert code == 2, err
    assert not (tmp_path / "s.jsonl").exists()


def test_unwritable_out_format_is_a_usage_error_before_reading(tmp_path, capsys):
    code, err = select(capsys, "--scores", tmp_path / "absent.parquet", "--ifd", "--ifd-count",
                       "1", "--out", tmp_path / "s.csv")
    assert code == 2 and "s.csv" in err


@pytest.mark.parametrize("flags", [["--ifd"], []], ids=["ifd-no-count", "car-no-clusters"])
def test_usage_error_after_parquet_scores_exits_2_every_time(tmp_path, flags):
    scores = wide_parquet(tmp_path / "ifd.parquet")
    command = [sys.executable, "-m", "car_engine.cli", "select", "--scores", str(scores),
               *flags, "--out", str(tmp_path / "s.jsonl")]
    for _ in range(20):
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


_READ_THEN_EXIT = """
import sys
from car_engine.corpus import read_table
read_table(sys.argv[1])
sys.exit(0)  # exit at once: Arrow's I/O threads may still be freeing the read's buffers
"""


def test_parquet_read_then_exit_never_aborts(tmp_path):
    # The root cause of the SIGABRT: a Parquet file read through a Python file object leaves
    # buffers that take the GIL to free on Arrow's I/O threads, after the interpreter exits.
    scores = wide_parquet(tmp_path / "scores.parquet")
    gz = tmp_path / "scores.parquet.gz"
    gz.write_bytes(gzip.compress(scores.read_bytes(), compresslevel=1))
    for run in range(24):
        path = gz if run % 3 == 2 else scores
        proc = subprocess.run([sys.executable, "-c", _READ_THEN_EXIT, str(path)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (run, proc.returncode, proc.stderr)


def test_read_table_hands_arrow_no_python_file(tmp_path, monkeypatch):
    from car_engine.corpus import formats, read_table

    seen = []
    real = formats.pq.read_table
    monkeypatch.setattr(formats.pq, "read_table", lambda source, **kw: (
        seen.append(source), real(source, **kw))[1])
    table = pa.table({"id": ["a", "b"], "iqs": [0.5, 1.5]})
    pq.write_table(table, tmp_path / "s.parquet")
    (tmp_path / "s.parquet.gz").write_bytes(gzip.compress((tmp_path / "s.parquet").read_bytes()))
    for name in ("s.parquet", "s.parquet.gz"):
        assert read_table(tmp_path / name).equals(table)
    assert len(seen) == 2 and all(isinstance(s, pa.NativeFile) for s in seen), seen


# ------------------------------------------------------------------ 5: cluster label values


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("label,shown", [("x", "'x'"), (0.5, "0.5"), (None, "null"),
                                         (float("nan"), "nan")])
def test_non_integer_cluster_labels_are_exit_3_naming_file_id_value(
        tmp_path, capsys, two_scores, suffix, label, shown):
    other = "y" if isinstance(label, str) else 1.0
    clusters = write_rows(tmp_path / f"c{suffix}", [{"id": "a", "cluster": other},
                                                     {"id": "b", "cluster": label}])
    code, err = select(capsys, "--scores", two_scores, "--clusters", clusters,
                       "--out", tmp_path / "o.jsonl")
    assert code == 3, err
    wanted = "'y'" if isinstance(label, str) else shown  # the first bad row is reported
    bad_id = "a" if isinstance(label, str) else "b"
    assert str(clusters) in err and f"id '{bad_id}'" in err and f"cluster {wanted}" in err, err
    assert not (tmp_path / "o.jsonl").exists()


def test_mixed_type_jsonl_column_names_line_id_and_value(tmp_path, capsys, two_scores):
    clusters = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "cluster": 1},
                                                  {"id": "b", "cluster": "x"}])
    code, err = select(capsys, "--scores", two_scores, "--clusters", clusters,
                       "--out", tmp_path / "o.jsonl")
    assert code == 3 and f"{clusters} line 2 (id 'b')" in err and "'cluster' is 'x'" in err, err


def test_integer_too_large_for_arrow_is_exit_3_not_internal(tmp_path, capsys):
    scores = tmp_path / "s.jsonl"
    scores.write_text('{"id": "a", "iqs": 100000000000000000000}\n')
    code, err = select(capsys, "--scores", scores, "--ifd", "--ifd-count", "1",
                       "--ifd-column", "iqs", "--out", tmp_path / "o.jsonl")
    assert code == 3 and f"{scores} line 1 (id 'a')" in err, err


def test_integral_float_and_huge_labels_select_as_small_int_labels(tmp_path, capsys):
    n = 60
    rng = np.random.default_rng(3)
    scores = write_jsonl(tmp_path / "s.jsonl", [{"id": f"r{i}", "iqs": float(s)}
                                                for i, s in enumerate(rng.random(n))])
    labels = rng.integers(-1, 6, n)
    outputs = []
    for name, value in [("int", int), ("float", float), ("huge", lambda c: c * 10**12)]:
        clusters = write_jsonl(tmp_path / f"c-{name}.jsonl",
                               [{"id": f"r{i}", "cluster": value(int(c))}
                                for i, c in enumerate(labels)])
        out = tmp_path / f"o-{name}.jsonl"
        code, err = select(capsys, "--scores", scores, "--clusters", clusters, "--n1", "5",
                           "--n2", "2", "--out", out)
        assert code == 0, err
        outputs.append([(r["id"], r["selected_by"]) for r in map(json.loads, out.open())])
    assert outputs[0] == outputs[1] == outputs[2]
    int_rows = [json.loads(line) for line in (tmp_path / "o-int.jsonl").open()]
    float_rows = [json.loads(line) for line in (tmp_path / "o-float.jsonl").open()]
    assert int_rows == float_rows  # 3.0 is the label 3, written as 3


# ------------------------------------------------------------- 6: missing or unknown cluster ids


@pytest.mark.parametrize("rows,bad_id", [
    ([{"id": "a", "cluster": 0}], "b"),                                      # b has no cluster
    ([{"id": "a", "cluster": 0}, {"id": "b", "cluster": 1}, {"id": "zz", "cluster": 1}], "zz"),
])
def test_clusters_file_must_hold_exactly_the_scored_ids(tmp_path, capsys, two_scores, rows,
                                                        bad_id):
    clusters = write_jsonl(tmp_path / "c.jsonl", rows)
    code, err = select(capsys, "--scores", two_scores, "--clusters", clusters,
                       "--out", tmp_path / "o.jsonl")
    assert code == 3, err
    assert str(clusters) in err and f"id '{bad_id}'" in err and str(two_scores) in err, err
    assert not (tmp_path / "o.jsonl").exists()


def test_negative_label_still_means_no_cluster(tmp_path, capsys, two_scores):
    clusters = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "cluster": -1},
                                                  {"id": "b", "cluster": 0}])
    code, err = select(capsys, "--scores", two_scores, "--clusters", clusters, "--n1", "0",
                       "--n2", "1", "--out", tmp_path / "o.jsonl")
    assert code == 0, err
    assert [json.loads(r)["id"] for r in (tmp_path / "o.jsonl").open()] == ["b"]


# ------------------------------------------------------------------- 7: non-finite scores


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("method", ["car", "ifd"])
def test_non_finite_scores_are_exit_3_naming_the_input(tmp_path, capsys, suffix, value, method):
    column = "iqs" if method == "car" else "ifd_ppl"
    rows = [{"id": "a", column: 0.5, "status": "ok"}, {"id": "b", column: value, "status": "ok"}]
    scores = write_rows(tmp_path / f"s{suffix}", rows)
    clusters = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "cluster": 0},
                                                  {"id": "b", "cluster": 1}])
    flags = ["--clusters", clusters] if method == "car" else ["--ifd", "--ifd-count", "2"]
    out = tmp_path / "o.jsonl"
    code, err = select(capsys, "--scores", scores, *flags, "--out", out)
    assert code == 3, err
    assert str(scores) in err and "id 'b'" in err and str(value) in err and "o.jsonl" not in err
    assert not out.exists()


def test_non_finite_value_in_another_column_is_not_blamed_on_the_output(tmp_path, capsys,
                                                                         two_scores):
    scores = write_jsonl(tmp_path / "s.jsonl", [{"id": "a", "iqs": 1.0, "extra": 1.0},
                                                {"id": "b", "iqs": 2.0, "extra": float("inf")}])
    clusters = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "cluster": 0},
                                                  {"id": "b", "cluster": 0}])
    code, err = select(capsys, "--scores", scores, "--clusters", clusters,
                       "--out", tmp_path / "o.jsonl")
    assert code == 3 and str(scores) in err and "'extra'" in err and "o.jsonl" not in err, err


def test_null_score_and_unscored_ifd_rows_are_still_no_score(tmp_path, capsys):
    scores = write_jsonl(tmp_path / "s.jsonl", [
        {"id": "a", "ifd_ppl": float("inf"), "status": "non-finite score"},  # never selected
        {"id": "b", "ifd_ppl": None, "status": "ok"},
        {"id": "c", "ifd_ppl": 0.5, "status": "ok"}])
    out = tmp_path / "o.jsonl"
    code, err = select(capsys, "--scores", scores, "--ifd", "--ifd-count", "3", "--out", out)
    assert code == 0, err
    assert [json.loads(r)["id"] for r in out.open()] == ["c"]


# ------------------------------------------------------------- 8: repeated ids name the file


@pytest.mark.parametrize("method", ["car", "car-corpus", "ifd"])
def test_repeated_score_id_names_the_scores_file(tmp_path, capsys, method):
    scores = write_jsonl(tmp_path / "my-scores.jsonl", [
        {"id": "a", "iqs": 1.0, "ifd_ppl": 0.5}, {"id": "a", "iqs": 2.0, "ifd_ppl": 0.4}])
    clusters = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "cluster": 0}])
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [
        {"id": "a", "instruction": "q", "input": "", "output": "x"}])
    flags = {"car": ["--clusters", clusters],
             "car-corpus": ["--clusters", clusters, "--corpus", corpus],
             "ifd": ["--ifd", "--ifd-count", "1"]}[method]
    code, err = select(capsys, "--scores", scores, *flags, "--out", tmp_path / "o.jsonl")
    assert code == 3 and f"{scores}: id 'a' appears more than once" in err, err


def test_status_that_is_not_text_is_exit_3_naming_the_file(tmp_path, capsys):
    scores = write_jsonl(tmp_path / "s.jsonl", [{"id": "a", "ifd_ppl": 0.5, "status": 1}])
    code, err = select(capsys, "--scores", scores, "--ifd", "--ifd-count", "1",
                       "--out", tmp_path / "o.jsonl")
    assert code == 3 and str(scores) in err and "'status'" in err, err
