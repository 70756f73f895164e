"""Near duplicates (SPEC §9): native MinHash + LSH against exact Jaccard, the group
properties, collapsing in the CaR selection, the flags, and the signature stage's resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from car_engine import native
from car_engine.cli import main
from car_engine.config import RunConfig
from car_engine.dedup_params import NearDupParams
from car_engine.io import write_parquet
from car_engine.near_dup import near_groups, signatures
from car_engine.reference import near_dup as ref
from car_engine.rundir import StageDir, fingerprint
from car_engine.select import WHY_DUPLICATE, WHY_NEAR, select_car

ROOT = Path(__file__).resolve().parents[1]
VOCAB = np.array([f"w{i}" for i in range(3000)])


def random_text(rng: np.random.Generator, words: int = 120) -> str:
    return " ".join(rng.choice(VOCAB, size=words))


def edit(rng: np.random.Generator, text: str, changes: int) -> str:
    """``changes`` words replaced at random places (each touches up to 5 shingles)."""
    words = text.split()
    for at in rng.choice(len(words), size=changes, replace=False):
        words[at] = "EDITED" + str(rng.integers(1 << 30))
    return " ".join(words)


def planted(seed: int = 0, bases: int = 60) -> list[str]:
    """Unrelated texts, each with 0-3 copies of 0-2 edits (Jaccard >= 0.9 to the base, so
    >= 0.8 between two copies; unrelated texts ~0)."""
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(bases):
        base = random_text(rng, 200)
        texts.append(base)
        texts.extend(edit(rng, base, int(rng.integers(0, 3))) for _ in range(rng.integers(0, 4)))
    order = rng.permutation(len(texts))
    return [texts[i] for i in order]


def test_estimated_jaccard_tracks_the_exact_one():
    rng = np.random.default_rng(1)
    pairs = []
    for changes in (0, 2, 5, 10, 20, 40):
        base = random_text(rng, 200)
        pairs.append((base, edit(rng, base, changes)))
    sigs = native.minhash_signatures([t for p in pairs for t in p], 260, 7, 5)
    est = (sigs[0::2] == sigs[1::2]).mean(axis=1)
    exact = np.array([ref.jaccard(ref.shingles(a), ref.shingles(b)) for a, b in pairs])
    assert exact.min() < 0.3 < 0.9 < exact.max()
    assert np.abs(est - exact).max() < 0.1  # 260 permutations: standard error <= 0.031
    assert np.abs(est - exact).mean() < 0.04


def test_vector_and_plain_paths_agree_and_the_seed_decides():
    texts = planted(2, 10)
    # 15 slots = 8 on the AVX2 path + 7 plain; the first 7 permutations are those of 7 slots
    assert np.array_equal(native.minhash_signatures(texts, 15, 3, 5)[:, :7],
                          native.minhash_signatures(texts, 7, 3, 5))
    again = native.minhash_signatures(texts, 64, 3, 5, threads=1)
    assert np.array_equal(native.minhash_signatures(texts, 64, 3, 5, threads=2), again)
    assert not np.array_equal(native.minhash_signatures(texts, 64, 4, 5), again)


def test_normalisation_and_short_and_empty_texts():
    sigs = native.minhash_signatures(["Hello  World\tAgain now friend", "hello world again now "
                                      "FRIEND", "two words", "", "   "], 32, 1, 5)
    assert np.array_equal(sigs[0], sigs[1])  # case and whitespace do not count
    assert (sigs[2] != 0xFFFFFFFF).all()  # fewer than 5 words: the whole text is one shingle
    assert (sigs[3] == 0xFFFFFFFF).all() and (sigs[4] == 0xFFFFFFFF).all()
    groups, *_ = native.lsh_groups(np.ascontiguousarray(sigs[[3, 4, 3]]), 4, 8, 0.5)
    assert groups.tolist() == [0, 1, 2]  # empty texts are nobody's near duplicate


def test_groups_equal_the_exact_jaccard_groups():
    texts = planted(3)
    found = near_groups(native.minhash_signatures(texts, 260, 42, 5), 0.8)
    assert np.array_equal(found.groups, ref.groups(texts, 0.8))
    assert found.n_groups > 10
    assert (found.pairs[:, 0] < found.pairs[:, 1]).all()
    assert found.similarity.shape[0] == found.pairs.shape[0]


def test_group_properties_hold_for_any_seed_and_threshold():
    texts = planted(4)
    for seed in (0, 1, 99):
        sigs = native.minhash_signatures(texts, 260, seed, 5)
        for threshold in (0.5, 0.8, 0.95):
            g = near_groups(sigs, threshold).groups
            assert (g <= np.arange(g.size)).all() and np.array_equal(g[g], g)  # a partition
            assert np.array_equal(g, near_groups(sigs.copy(), threshold).groups)  # same seed


def test_selection_keeps_the_best_scored_member_and_names_it():
    texts = planted(5)
    n = len(texts)
    rng = np.random.default_rng(5)
    scores = rng.normal(size=n)
    scores[rng.choice(n, 5, replace=False)] = np.nan
    groups = near_groups(native.minhash_signatures(texts, 260, 42, 5), 0.8).groups
    ids = [f"id{i}" for i in range(n)]
    sel = select_car(scores, np.zeros(n, dtype=np.int64), n1=n, n2=0, near_groups=groups,
                     ids=ids)
    picked = set(sel.order.tolist())
    for root in np.unique(groups):
        members = np.flatnonzero(groups == root)
        valid = members[~np.isnan(scores[members])]
        if valid.size == 0:
            continue
        best = valid[np.lexsort((valid, -scores[valid]))][0]
        assert best in picked
        for m in valid[valid != best]:
            assert m not in picked
            assert sel.why[m] == WHY_NEAR.format(ids[best]) != WHY_NEAR.format(ids[m])
    assert sel.counts["near_duplicates"] == sum(str(w).startswith("not selected: near")
                                                for w in sel.why)
    assert sel.counts["near_duplicates"] > 0


def test_bad_threshold_or_eps_is_a_usage_error(tmp_path, capsys):
    for flags in (["--near-dup-threshold", "0"], ["--near-dup-threshold", "1.5"],
                  ["--semdedup-eps", "0"], ["--semdedup-eps", "1"]):
        code = main(["run", "builtin:sharegpt", "--out", str(tmp_path / "r"), "--near-dup",
                     *flags])
        assert code == 2, flags
        assert flags[0] in capsys.readouterr().err
    assert main(["run", "x.jsonl", "--out", str(tmp_path / "r"), "--method", "ifd",
                 "--near-dup"]) == 2
    assert not (tmp_path / "r").exists()
    with pytest.raises(Exception, match="near-dup-threshold"):
        RunConfig(near_dup=True, near_dup_threshold=-1).check()


def _read_stage(run_dir: Path, shards: int, rows: int) -> StageDir:
    """A read stage written directly: ``shards`` records shards of ``rows`` long texts."""
    rng = np.random.default_rng(6)
    stage = StageDir(run_dir, "read", fingerprint("read", {"test": shards}, []))
    names = []
    for s in range(shards):
        texts = [random_text(rng, 300) for _ in range(rows)]
        table = pa.table({"id": [f"{s}-{i}" for i in range(rows)],
                          "instruction": texts, "input": [""] * rows, "output": texts,
                          "turns": pa.array([None] * rows, pa.string())})
        names.append(f"records-{s:05d}.parquet")
        write_parquet(stage.file(names[-1]), table)
        stage.mark_done(names[-1])
    stage.mark_complete(shards=names, sizes=[rows] * shards, items=shards * rows, rejected=0)
    return stage


CHILD = """
import sys
from pathlib import Path
from car_engine.config import RunConfig
from car_engine.pipeline.duplicates import signature_stage
from car_engine.rundir import StageDir
read = StageDir(Path(sys.argv[1]), "read", sys.argv[2])
signature_stage(read, Path(sys.argv[1]), RunConfig(near_dup=True), False)
"""


def test_signature_stage_resumes_after_kill_9(tmp_path):
    from car_engine.pipeline.duplicates import signature_stage

    read = _read_stage(tmp_path, 10, 400)
    manifest = tmp_path / "stages" / "minhash" / "manifest.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    victim = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), read.fingerprint],
                              env=env)
    try:
        done: dict = {}
        deadline = time.time() + 60
        while time.time() < deadline and victim.poll() is None:
            try:
                done = json.loads(manifest.read_text())["files"]
            except (OSError, ValueError):
                done = {}
            if len(done) >= 1:
                os.kill(victim.pid, signal.SIGKILL)  # mid-stage: no cleanup of any kind
                break
            time.sleep(0.005)
        victim.wait(10)
    finally:
        if victim.poll() is None:
            victim.kill()
    state = json.loads(manifest.read_text())
    assert victim.returncode == -signal.SIGKILL and not state["complete"], "killed too late"
    kept = {name: (tmp_path / "stages" / "minhash" / name).stat().st_mtime_ns
            for name in state["files"]}
    stage = signature_stage(read, tmp_path, RunConfig(near_dup=True), False)
    assert stage.complete and len(stage.info["shards"]) == 10
    for name, mtime in kept.items():  # what the killed run finished is not computed again
        assert stage.file(name).stat().st_mtime_ns == mtime
    import pyarrow.parquet as pq

    first = pq.read_table(read.file(read.info["shards"][-1]))
    assert np.array_equal(np.load(stage.file(stage.info["shards"][-1])),
                          signatures(first, NearDupParams()))
    # another threshold reuses the signatures: the stage's fingerprint does not hold it
    again = signature_stage(read, tmp_path, RunConfig(near_dup=True, near_dup_threshold=0.6),
                            False)
    assert again.complete and again.fingerprint == stage.fingerprint


def test_select_tables_collapse_near_copies_and_need_the_record_fields():
    from car_engine.errors import CorpusError
    from car_engine.select import select_car_table

    texts = planted(7, 20)
    n = len(texts)
    scores = pa.table({"id": [f"r{i}" for i in range(n)], "iqs": np.linspace(0, 1, n),
                       "instruction": texts, "input": [""] * n, "output": ["same"] * n})
    clusters = pa.table({"id": scores["id"], "cluster": np.zeros(n, dtype=np.int64)})
    table, sel = select_car_table(scores, clusters, n1=n, n2=0, near_dup=True)
    groups = near_groups(signatures(table), 0.8).groups
    collapsed = sel.counts["near_duplicates"] + sel.counts["duplicates_collapsed"]
    assert collapsed == n - np.unique(groups).size and sel.counts["near_duplicates"] > 0
    for row in range(n):
        best = np.flatnonzero(groups == groups[row]).max()  # iqs rises with the row
        if row != best:  # exact copies go first, then the near ones name the kept member
            assert sel.why[row] in (WHY_NEAR.format(f"r{best}"), WHY_DUPLICATE)
    with pytest.raises(CorpusError, match="give --corpus"):
        select_car_table(scores.drop_columns(["output"]), clusters, near_dup=True)
