"""`car-engine run` end to end on real data: outputs, accounting, resume after kill -9,
stage invalidation, and the Ray backend giving exactly the local backend's output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from xml.etree import ElementTree

import pyarrow.parquet as pq
import pytest
from corpus_files import MIXED_GOOD, RUN_ARGS

from car_engine.cli import main

# reference_run (conftest, session-scoped): one clean run of `corpus` with RUN_ARGS


def test_every_record_is_accounted_for(reference_run, corpus):
    scores = pq.read_table(reference_run / "scores.parquet")
    rejected = [json.loads(x) for x in (reference_run / "rejected.jsonl").read_text().splitlines()]
    assert scores.num_rows + len(rejected) == MIXED_GOOD + 3
    assert {r["location"] for r in rejected} == {"line 11", "line 12"}
    selected = [json.loads(x) for x in (reference_run / "selected.jsonl").read_text().splitlines()]
    summary = json.loads((reference_run / "summary.json").read_text())["counts"]
    assert len(selected) == summary["selected"] == sum(scores["selected"].to_pylist())
    assert summary["duplicates_collapsed"] == 1
    assert summary["from_n1"] == 5 and summary["added_by_clusters"] >= 1
    # the n1 picks are the best IQS scores, in order
    by_score = sorted(scores.to_pylist(), key=lambda r: (-r["iqs"], r["position"]))
    dup_ids = {r["id"] for r in scores.to_pylist() if "duplicate" in r["why"]}
    best = [r["id"] for r in by_score if r["id"] not in dup_ids][:5]
    assert [r["car_engine"]["id"] for r in selected[:5]] == best
    assert all(r["car_engine"]["selected_by"] == "cluster" for r in selected[5:])
    # Each row is the corpus line at its position, unchanged, plus the car_engine key.
    lines = corpus.read_text().splitlines()  # no blank line: line n + 1 is position n
    for row in selected:
        engine = row.pop("car_engine")
        assert row == json.loads(lines[engine["position"]])
    assert set(scores["why"].to_pylist()) >= {"selected: top n1 by score",
                                              "selected: top of its cluster"}
    html = (reference_run / "report.html").read_text()
    for svg in ("iqs_hist.svg", "cluster_sizes.svg", "cluster_map.svg", "answer_lengths.svg"):
        assert f"src='{svg}'" in html
        drawn = ElementTree.parse(reference_run / svg).getroot()
        assert drawn.tag == "{http://www.w3.org/2000/svg}svg"
        assert drawn.findall(".//*[@class='bars']") or drawn.findall(".//*[@class='points']")


KILLER = """
import os, sys
from car_engine import rundir
from car_engine.backends import base
when, after = sys.argv[1], int(sys.argv[2])
if when == "after-record":  # killed right after the manifest records a shard
    original = rundir.StageDir.mark_done
    def mark_done(self, shard, **facts):
        original(self, shard, **facts)
        if self.name == "encode" and len(self.done) >= after:
            os.kill(os.getpid(), 9)
    rundir.StageDir.mark_done = mark_done
else:  # killed between writing a shard file and recording it
    original = base.process_shard
    count = [0]
    def process_shard(worker, job):
        result = original(worker, job)
        count[0] += 1
        if "/encode/" in job.target and count[0] >= after:
            os.kill(os.getpid(), 9)
        return result
    base.process_shard = process_shard
    import car_engine.backends.local as local
    local.process_shard = process_shard
from car_engine.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("when", ["after-record", "before-record"])
def test_resume_after_kill_9_is_byte_identical(tmp_path, corpus, reference_run, when):
    out = tmp_path / "killed"
    args = ["run", str(corpus), "--out", str(out), *RUN_ARGS]
    killed = subprocess.run([sys.executable, "-c", KILLER, when, "2", *args],
                            capture_output=True, text=True, env=dict(os.environ))
    assert killed.returncode == -9, killed.stderr[-2000:]
    # killed inside the scoring stage (one encoder pass: IQS and embeddings)
    encode_manifest = json.loads((out / "stages" / "encode" / "manifest.json").read_text())
    assert not encode_manifest["complete"] and not (out / "selected.jsonl").exists()
    assert main(args) == 0  # resume
    for name in ("selected.jsonl", "scores.parquet", "rejected.jsonl"):
        assert (out / name).read_bytes() == (reference_run / name).read_bytes(), name


def test_changed_n1_reruns_only_selection(tmp_path, corpus, reference_run):
    import shutil

    out = tmp_path / "rerun"
    shutil.copytree(reference_run, out)
    stage_files = {p: p.stat().st_mtime_ns for p in (out / "stages").rglob("*") if p.is_file()}
    assert main(["run", str(corpus), "--out", str(out), *RUN_ARGS[:-1], "--n1", "8"]) == 0
    assert {p: p.stat().st_mtime_ns for p in stage_files} == stage_files  # nothing recomputed
    summary = json.loads((out / "summary.json").read_text())["counts"]
    assert summary["from_n1"] == 8
    assert (out / "selected.jsonl").read_bytes() != (reference_run / "selected.jsonl").read_bytes()
    # a clustering parameter reruns clustering and selection, not the scoring stages
    assert main(["run", str(corpus), "--out", str(out), *RUN_ARGS, "--k", "3"]) == 0
    iqs_shards = [p for p in stage_files if "/iqs/" in str(p) and p.suffix == ".parquet"]
    assert all(p.stat().st_mtime_ns == stage_files[p] for p in iqs_shards)
    assert json.loads((out / "stages" / "cluster" / "manifest.json").read_text())["info"]["k"] == 3


@pytest.mark.slow
def test_ray_backend_matches_local(tmp_path, corpus, reference_run):
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    code = main(["run", str(corpus), "--out", str(out), *RUN_ARGS, "--backend", "ray",
                 "--workers", "2"])
    assert code == 0
    for name in ("selected.jsonl", "scores.parquet", "rejected.jsonl"):
        assert (out / name).read_bytes() == (reference_run / name).read_bytes(), name
