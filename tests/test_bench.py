"""`car-engine bench` on tiny sizes: every stage present, rows in the documented JSON shape."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from car_engine.bench import KEYS, STAGES


@pytest.mark.slow
def test_bench_json_shape(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "car_engine.cli", "bench", "--quick", "--n", "8",
                           "--json", str(out)], capture_output=True, text=True, timeout=1800,
                          cwd=tmp_path)  # not the repo root: the scripts must import as installed
    # at 8 items some agreement checks (Spearman, inertia) are noise: exit 1 is allowed then
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert {r["stage"].split("-")[0] for r in rows} == set(STAGES)
    for r in rows:
        assert list(r) == list(KEYS)
        assert isinstance(r["stage"], str) and isinstance(r["check"], str)
        assert isinstance(r["items"], int) and r["items"] > 0
        for key in ("engine_per_s", "reference_per_s", "speedup", "peak_rss_mb"):
            assert isinstance(r[key], float) and r[key] >= 0, (key, r)
        # a check value may be negative (e.g. a memory difference of -1 MB is RSS noise)
        assert isinstance(r["check_value"], float) and math.isfinite(r["check_value"]), r
        assert isinstance(r["check_ok"], bool)
    table = proc.stdout
    assert "speed-up" in table and all(r["stage"] in table for r in rows)


def test_rows_without_a_reference_format_and_keep_their_details():
    from car_engine.bench import format_details, format_rows

    synthetic = {"stage": "cluster-1000k-synthetic", "items": 1_000_000, "engine_per_s": 3.7e4,
                 "reference_per_s": None, "speedup": None, "peak_rss_mb": 2935.0,
                 "check": "clusters_used", "check_value": 707.0, "check_ok": True, "k": 707}
    line = format_rows([synthetic]).splitlines()[1].split()
    assert line[:5] == ["cluster-1000k-synthetic", "1000000", "3.7e+04", "-", "-"]
    assert format_details([synthetic]) == "- cluster-1000k-synthetic: k 707"


def test_table_shows_targets_and_names_rows_below_them():
    from car_engine.bench import below_target, format_rows

    base = {"items": 24, "engine_per_s": 30.0, "reference_per_s": 12.0, "peak_rss_mb": 1.0,
            "check": "min_cosine", "check_value": 0.9999, "check_ok": True}
    rows = [{**base, "stage": "embed-bf16", "speedup": 2.3, "target_speedup": 2.5},
            {**base, "stage": "select-merge", "speedup": 20.0, "target_speedup": ""},
            {**base, "stage": "cluster", "speedup": 12.0, "target_speedup": 10}]
    table = format_rows(rows).splitlines()
    assert table[0].split()[5] == "target"
    assert [line.split()[5] for line in table[1:]] == ["2.5x", "-", "10x"]
    assert below_target(rows) == ["embed-bf16 (2.30x vs 2.5x)"]
