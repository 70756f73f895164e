"""The score cache (SPEC §10): exact keys, segments that commit atomically, readers beside a
writer, compaction, and a rerun on a grown, edited and shuffled corpus that scores only what it
has not seen and selects exactly what a fresh run selects."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from car_engine.cli import main
from car_engine.score_cache import (
    KEY_DTYPE,
    KEYS_SUFFIX,
    ScoreCache,
    keys_column,
    keys_of,
    record_keys,
)


def records(texts: list[str]) -> pa.Table:
    return pa.table({"id": [str(i) for i in range(len(texts))], "instruction": texts,
                     "input": [""] * len(texts), "output": [t[::-1] for t in texts],
                     "turns": [None] * len(texts)}).cast(pa.schema(
                         [("id", pa.string()), ("instruction", pa.string()),
                          ("input", pa.string()), ("output", pa.string()),
                          ("turns", pa.string())]))


def test_keys_are_exact_and_ignore_ids():
    keys = record_keys(records(["Say hi", "say hi", "Say  hi", "Say hi"]))
    assert keys[0] == keys[3]  # same content, another id
    assert len({bytes(k) for k in keys[:3]}) == 3  # case and whitespace count: scorers see them
    a = records(["a"]).set_column(2, "input", pa.array(["b"]))
    b = records(["a"]).set_column(3, "output", pa.array(["b"]))
    assert record_keys(a)[0] != record_keys(b)[0]  # fields never run into each other


def test_keys_ending_in_zero_bytes_survive_the_read_stage_column():
    keys = np.zeros(4, dtype=KEY_DTYPE)  # numpy's S16 would cut these trailing NULs
    keys["hi"] = [1, 0, 2**63, 5]
    keys["lo"] = [0, 0, 7, 2**64 - 1]
    table = pa.table({"cache_key": keys_column(keys)})
    assert table.schema.field("cache_key").type == pa.binary(16)
    assert np.array_equal(keys_of(table), keys)
    assert np.array_equal(keys_of(table.slice(1, 2)), keys[1:3])


def test_lookup_gives_back_what_was_added_in_any_order(tmp_path):
    keys = record_keys(records([f"q{i}" for i in range(10)]))
    cache = ScoreCache(tmp_path, "iqs", "fp")
    cache.add(keys[:6], pa.table({"iqs": np.arange(6, dtype=np.float64)}))
    cache.add(keys[6:8], pa.table({"iqs": [6.0, 7.0]}))
    order = np.array([9, 7, 0, 5, 8, 2])
    found, values = ScoreCache(tmp_path, "iqs", "fp").lookup(keys[order])
    assert found.tolist() == [False, True, True, True, False, True]
    assert values["iqs"].to_pylist() == [7.0, 0.0, 5.0, 2.0]
    other = ScoreCache(tmp_path, "iqs", "other-scorer")  # another fingerprint sees nothing
    assert not other.lookup(keys)[0].any()


def test_matrices_and_compaction(tmp_path):
    keys = record_keys(records([f"q{i}" for i in range(9)]))
    vectors = np.random.default_rng(0).standard_normal((9, 4)).astype(np.float32)
    cache = ScoreCache(tmp_path, "embed", "fp")
    for start in range(0, 9, 3):
        cache.add(keys[start:start + 3], vectors[start:start + 3])
    cache.add(keys[:2], vectors[:2])  # a key added twice is kept once by the compaction
    assert len(cache.segments()) == 4
    cache.compact()
    assert len(cache.segments()) == 1
    found, got = cache.lookup(keys[::-1])
    assert found.all() and np.array_equal(got, vectors[::-1])


def test_an_interrupted_writer_leaves_nothing_visible(tmp_path):
    keys = record_keys(records(["a", "b"]))
    cache = ScoreCache(tmp_path, "iqs", "fp")
    cache.add(keys[:1], pa.table({"iqs": [1.0]}))
    # killed between the values file and the keys file that commits it, and mid-write of a
    # temp file: neither is a segment
    pq.write_table(pa.table({"iqs": [2.0]}), cache.folder / "seg-dead.parquet")
    (cache.folder / f".seg-x{KEYS_SUFFIX}.123.tmp").write_bytes(b"\x93NUMPY half")
    found, values = ScoreCache(tmp_path, "iqs", "fp").lookup(keys)
    assert found.tolist() == [True, False] and values["iqs"].to_pylist() == [1.0]


def _reader(folder: str, keys: np.ndarray, rounds: int, out: mp.Queue) -> None:
    seen = []
    for _ in range(rounds):
        found, values = ScoreCache(folder, "iqs", "fp").lookup(keys)
        if found.any():  # whatever is visible is exactly what was written
            assert values["iqs"].to_pylist() == np.flatnonzero(found).astype(float).tolist()
        seen.append(int(found.sum()))
    out.put(seen)


def test_a_reader_beside_a_writer_and_its_compactions(tmp_path):
    keys = record_keys(records([f"q{i}" for i in range(140)]))
    context = mp.get_context("spawn")
    queue = context.Queue()
    reader = context.Process(target=_reader, args=(str(tmp_path), keys, 60, queue))
    reader.start()
    writer = ScoreCache(tmp_path, "iqs", "fp")
    for start in range(0, 140, 2):  # 70 segments: the writer compacts at 64
        writer.add(keys[start:start + 2], pa.table({"iqs": [float(start), start + 1.0]}))
    reader.join(120)
    assert reader.exitcode == 0
    seen = queue.get(timeout=5)
    assert seen == sorted(seen)  # segments only ever appear, compaction loses none
    assert ScoreCache(tmp_path, "iqs", "fp").lookup(keys)[0].all()


def _items(table: pa.Table) -> list[dict]:
    return [{"instruction": r["instruction"], "input": r["input"], "output": r["output"]}
            for r in table.to_pylist()]


def _write(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


@pytest.mark.slow
def test_rerun_on_a_changed_corpus_scores_only_what_is_new(tmp_path, sharegpt_records):
    first = _items(sharegpt_records.slice(0, 40))
    grown = first + _items(sharegpt_records.slice(40, 8))  # 20% new
    grown[3] = {**grown[3], "output": grown[3]["output"] + " (edited)"}  # 5% edited
    grown[11] = {**grown[11], "instruction": grown[11]["instruction"].upper()}
    order = np.random.default_rng(1).permutation(len(grown))
    changed = _write(tmp_path / "grown.jsonl", [grown[i] for i in order])
    flags = ["--n1", "4", "--n2", "1", "--shard-size", "16", "--quiet", "--no-report"]
    cache = tmp_path / "shared-cache"
    assert main(["run", str(_write(tmp_path / "first.jsonl", first)), "--out",
                 str(tmp_path / "a"), "--score-cache", str(cache), *flags]) == 0
    assert main(["run", str(changed), "--out", str(tmp_path / "b"), "--score-cache", str(cache),
                 *flags]) == 0
    assert main(["run", str(changed), "--out", str(tmp_path / "fresh"), "--no-score-cache",
                 *flags]) == 0
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())["score_cache"]
    for stage in ("iqs", "embed"):  # 8 new + 2 edited records are all that was scored
        assert summary[stage] == {"cached": 38, "computed": 10}
    b, fresh = tmp_path / "b", tmp_path / "fresh"
    assert (b / "selected.jsonl").read_bytes() == (fresh / "selected.jsonl").read_bytes()
    got, want = pq.read_table(b / "scores.parquet"), pq.read_table(fresh / "scores.parquet")
    assert got.schema == want.schema
    for name in got.column_names:  # every score too: the one pass is batch-invariant
        assert got[name].equals(want[name]), name
