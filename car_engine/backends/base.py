"""What every backend shares: the job shape and how one shard is processed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from car_engine.io import write_npy, write_parquet
from car_engine.workers import Worker


@dataclass(frozen=True)
class ShardJob:
    """One unit of work: score the records in ``source``, write the result to ``target``."""

    source: str
    target: str
    runtime: str = ""  # where the worker ran it (its describe()), once done


def process_shard(worker: Callable[[pa.Table], Any], job: ShardJob) -> ShardJob:
    """Run a worker on one records shard and write its output atomically (a table becomes
    Parquet, a matrix becomes .npy)."""
    records = pq.read_table(job.source)
    result = worker(records)
    if isinstance(result, np.ndarray):
        if result.shape[0] != records.num_rows:
            raise RuntimeError(f"{job.source}: worker returned {result.shape[0]} rows "
                               f"for {records.num_rows} records")
        write_npy(job.target, result)
    else:
        if result.num_rows != records.num_rows:
            raise RuntimeError(f"{job.source}: worker returned {result.num_rows} rows "
                               f"for {records.num_rows} records")
        write_parquet(job.target, result)
    describe = getattr(worker, "describe", None)
    return ShardJob(job.source, job.target, describe() if describe is not None else "")


class Backend:
    """Runs a stage worker over shards; subclasses decide where."""

    def map_shards(self, worker: type[Worker], params: Any, jobs: Sequence[ShardJob],
                   on_done: Callable[[ShardJob], None]) -> None:
        """Run ``worker(params)`` over ``jobs``; call ``on_done(job)`` as each output lands."""
        raise NotImplementedError

    def topk_lists(self, score_shards: Sequence[np.ndarray], k: int) -> list:
        """Per-shard top-k lists, best first: [(scores, global row ids), ...]."""
        from car_engine import native

        lists, offset = [], 0
        for scores in score_shards:
            top = native.topk(scores, k)
            lists.append((scores[top], top + offset))
            offset += len(scores)
        return lists

    def sharded_topk(self, scores: np.ndarray, k: int, shard_sizes: Sequence[int]) -> np.ndarray:
        """Global top-k row ids of ``scores`` from per-shard top-k lists merged natively:
        the distributed way, equal to one top-k over everything."""
        from car_engine import native

        bounds = np.cumsum([0, *shard_sizes])
        shards = [scores[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
        return native.merge_topk(self.topk_lists(shards, k), k)[1]

    def shutdown(self) -> None:
        """Release what the backend holds (workers, cluster connection)."""

