"""Where a stage's shards run: in this process (local) or on a Ray cluster (ray).

A backend maps a stage's worker class over shard files: ``map_shards(worker, params, jobs,
on_done)`` where each job is (input records shard, output path) and ``worker(params)`` is built
once per process or actor. Outputs are written atomically, and
``on_done(job)`` is called in the driver as each one lands, so the manifest stays exact.
Stages do not know which backend runs them.
"""

from __future__ import annotations

from car_engine.backends.base import Backend, ShardJob
from car_engine.config import BACKENDS, WORKERS
from car_engine.errors import UsageError


def get_backend(name: str, *, workers: int = WORKERS, progress: bool = True) -> Backend:
    """The backend called ``name`` ("local" or "ray")."""
    if name == "local":
        from car_engine.backends.local import LocalBackend

        return LocalBackend(progress=progress)
    if name == "ray":
        from car_engine.backends.ray import RayBackend

        return RayBackend(workers=workers, progress=progress)
    raise UsageError(f"unknown backend '{name}' (choose from {', '.join(BACKENDS)})")


__all__ = ["BACKENDS", "Backend", "ShardJob", "get_backend"]
