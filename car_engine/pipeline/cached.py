"""A scoring stage's shards through the score cache: each shard's records already scored by
the same scorer are taken from the cache, only the others go to the backend, and the two are
put back together in record order (so a shard reads as if it was computed whole).

The driver process is the cache's only writer in a run: workers never see the cache (they
get a shard of the missing records), and each computed part is added as a segment once it
has landed. A shard whose records were all seen is written without any model loading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from car_engine.backends import Backend, ShardJob
from car_engine.config import params_dict
from car_engine.io import write_npy, write_parquet
from car_engine.rundir import StageDir, fingerprint
from car_engine.score_cache import ScoreCache, keys_of, models_digest
from car_engine.workers import Worker


def scorer_fingerprint(worker: type[Worker], params: Any) -> str:
    """What a stage's per-record output depends on: its parameters, the contents of its model
    files and the engine version (in :func:`~car_engine.rundir.fingerprint`)."""
    digest = models_digest(worker.model_files(params))
    return fingerprint(worker.stage, params_dict(params), [digest])


@dataclass
class _Pending:
    """A shard waiting for its missing records: where it goes and what the cache gave."""

    output: str
    keys: np.ndarray
    found: np.ndarray
    cached: pa.Table | np.ndarray | None
    ids: pa.Array


def run_cached(worker: type[Worker], params: Any, stage: StageDir, shards: list[tuple[Path, str]],
               root: Path, backend: Backend) -> set[str]:
    """Produce each ``(records file, output name)`` of ``shards`` in ``stage`` through the
    score cache at ``root``; each output's manifest entry says how many rows were cached.
    Returns where the computed parts ran (device, runtime, precision)."""
    cache = ScoreCache(root, worker.stage, scorer_fingerprint(worker, params))
    for leftover in [*stage.path.glob("todo-*"), *stage.path.glob("part-*")]:
        leftover.unlink()  # of a run killed mid-stage (the run lock is ours)
    jobs: list[ShardJob] = []
    runtimes: set[str] = set()
    pending: dict[str, _Pending] = {}
    for source, output in shards:
        records = pq.read_table(source)
        keys = keys_of(records)
        found, cached = cache.lookup(keys)
        ids = records.column("id").cast(pa.string()).combine_chunks()
        if found.all():
            _write(stage.file(output), _assemble(ids, found, cached, None))
            stage.mark_done(output, cached=int(found.size), computed=0)
            continue
        if found.any():  # the job reads only the records the cache lacks
            todo = stage.file("todo-" + Path(output).stem + ".parquet")
            write_parquet(todo, records.filter(pa.array(~found)))
        else:  # none of them: the read stage's shard as it is
            todo = source
        part = stage.file("part-" + output)
        jobs.append(ShardJob(str(todo), str(part)))
        pending[str(part)] = _Pending(output, keys, found, cached, ids)

    def land(job: ShardJob) -> None:
        shard = pending.pop(job.target)
        computed = _load(Path(job.target))
        _write(stage.file(shard.output), _assemble(shard.ids, shard.found, shard.cached, computed))
        cache.add(shard.keys[~shard.found], _values(computed))
        stage.mark_done(shard.output, cached=int(shard.found.sum()),
                        computed=int((~shard.found).sum()))
        if Path(job.source).name.startswith("todo-"):
            Path(job.source).unlink()
        Path(job.target).unlink()
        if job.runtime:
            runtimes.add(job.runtime)

    backend.map_shards(worker, params, jobs, land)
    return runtimes


def _load(path: Path) -> pa.Table | np.ndarray:
    return np.load(path) if path.suffix == ".npy" else pq.read_table(path)


def _write(path: Path, value: pa.Table | np.ndarray) -> None:
    if isinstance(value, np.ndarray):
        write_npy(path, value)
    else:
        write_parquet(path, value)


def _values(output: pa.Table | np.ndarray) -> pa.Table | np.ndarray:
    """What the cache keeps of a worker's output: everything but the record ids."""
    return output if isinstance(output, np.ndarray) else output.drop_columns(["id"])


def _assemble(ids: pa.Array, found: np.ndarray, cached: pa.Table | np.ndarray | None,
              computed: pa.Table | np.ndarray | None) -> pa.Table | np.ndarray:
    """A shard's output in record order from its cached rows (``found``) and computed rows."""
    if computed is None:
        assert cached is not None
        if isinstance(cached, np.ndarray):
            return cached
        return cached.add_column(0, "id", ids)
    if cached is None:
        return computed
    order = np.concatenate([np.flatnonzero(found), np.flatnonzero(~found)])
    where = np.empty_like(order)
    where[order] = np.arange(order.size)  # output row r is stacked row where[r]
    if isinstance(computed, np.ndarray):
        assert isinstance(cached, np.ndarray)
        return np.concatenate([cached, computed])[where]
    assert isinstance(cached, pa.Table)
    restored = cached.add_column(0, "id", ids.filter(pa.array(found)))
    stacked = pa.concat_tables([restored.cast(computed.schema), computed])
    return stacked.take(pa.array(where)).combine_chunks()
