"""Run shards one after another in this process, with one worker (one model load)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tqdm import tqdm

from car_engine.backends.base import Backend, ShardJob, process_shard
from car_engine.workers import Worker


class LocalBackend(Backend):
    def __init__(self, *, progress: bool = True) -> None:
        self.progress = progress

    def map_shards(self, worker: type[Worker], params: Any, jobs: Sequence[ShardJob],
                   on_done: Callable[[ShardJob], None]) -> None:
        if not jobs:
            return
        run = worker(params)
        for job in tqdm(jobs, desc=worker.stage, unit="shard", disable=not self.progress):
            on_done(process_shard(run, job))
