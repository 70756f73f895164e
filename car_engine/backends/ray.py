"""Run shards on a Ray cluster: Ray Data ``map_batches`` over an actor pool, one model per
actor, a GPU fraction per actor when the cluster has GPUs.

Point it at a real cluster with ``RAY_ADDRESS=ray://head:10001`` (or ``auto`` on a node of
the cluster); without it a local cluster with ``workers`` CPUs is started. Shard files must
be on storage every node sees (a shared filesystem), since actors read and write them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from tqdm import tqdm

from car_engine.backends.base import Backend, ShardJob, process_shard
from car_engine.config import WORKERS
from car_engine.errors import UsageError
from car_engine.workers import Worker


def gpu_fraction(gpus: float, workers: int) -> float:
    """The GPU share each of ``workers`` actors asks for so that all of them fit on ``gpus``
    whole GPUs: ``1 / ceil(workers / gpus)`` (at most 1; 0 without GPUs). ``gpus / workers``
    is 0.667 for 2 GPUs and 3 workers, and only 2 such actors fit: the third never starts."""
    whole = int(gpus)  # Ray packs fractions within one GPU; a fraction of a GPU holds none
    if whole < 1:
        return 0.0
    return 1.0 / math.ceil(max(1, workers) / whole)


class _ShardActor:
    """A Ray actor: builds the stage worker once, then processes batches of shard jobs."""

    def __init__(self, worker: type[Worker], params: Any) -> None:
        self.worker = worker(params)

    def __call__(self, batch: dict) -> dict:
        runtimes = [process_shard(self.worker, ShardJob(str(source), str(target))).runtime
                    for source, target in zip(batch["source"], batch["target"])]
        return {"source": batch["source"], "target": batch["target"], "runtime": runtimes}


class RayBackend(Backend):
    def __init__(self, *, workers: int = WORKERS, progress: bool = True) -> None:
        try:
            import ray
        except ImportError as err:
            raise UsageError("--backend ray needs Ray: pip install 'car-engine[ray]'") from err
        self.ray = ray
        self.workers = max(1, workers)
        self.progress = progress
        self._started_here = not ray.is_initialized()
        if self._started_here:
            address = os.environ.get("RAY_ADDRESS")
            ray.init(address=address, num_cpus=None if address else self.workers,
                     include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False

    def gpu_fraction(self) -> float:
        """Each actor's share of a GPU (see :func:`gpu_fraction`)."""
        return gpu_fraction(self.ray.cluster_resources().get("GPU", 0), self.workers)

    def map_shards(self, worker: type[Worker], params: Any, jobs: Sequence[ShardJob],
                   on_done: Callable[[ShardJob], None]) -> None:
        if not jobs:
            return
        items = [{"source": j.source, "target": j.target} for j in jobs]
        data = self.ray.data.from_items(items, override_num_blocks=len(items))
        # An actor that dies (OOM, a lost node, kill -9) is restarted and its shard retried,
        # so it costs only that shard; said here, not left to Ray Data's defaults.
        done = data.map_batches(
            _ShardActor,
            fn_constructor_args=(worker, params),
            batch_size=1,
            compute=self.ray.data.ActorPoolStrategy(size=min(self.workers, len(items))),
            num_cpus=1,
            num_gpus=self.gpu_fraction(),
            max_restarts=-1,
            max_task_retries=-1,
        )
        for row in tqdm(done.iter_rows(), total=len(items), desc=f"{worker.stage} (ray)",
                        unit="shard", disable=not self.progress):
            on_done(ShardJob(str(row["source"]), str(row["target"]), str(row["runtime"])))

    def topk_lists(self, score_shards: Sequence[Any], k: int) -> list:
        """Per-shard top-k lists computed by Ray tasks: [(scores, global ids), ...]."""
        @self.ray.remote(num_cpus=1)
        def shard_topk(scores, offset, k):
            from car_engine import native

            top = native.topk(scores, k)
            return scores[top], top + offset

        refs, offset = [], 0
        for scores in score_shards:
            refs.append(shard_topk.remote(scores, offset, k))
            offset += len(scores)
        return self.ray.get(refs)

    def shutdown(self) -> None:
        if self._started_here and self.ray.is_initialized():
            self.ray.shutdown()
