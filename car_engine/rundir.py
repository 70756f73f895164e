"""The run folder: stage folders and their manifests, fingerprints, checksums and the lock.

``RUN_DIR/stages/<stage>/manifest.json`` records which of a stage's files are done, each with
its size and SHA-256, under which parameters. A stage's *fingerprint* hashes its own
parameters and its upstream stages' fingerprints, so changing a parameter invalidates that
stage and everything after it, and nothing before. A file is written atomically before it is
recorded, and checked against its record on resume: a file truncated or altered after it was
recorded is recomputed, never trusted; temp files of writes a kill cut short are deleted.
``RUN_DIR/.lock`` keeps two runs from interleaving. ``RUN_DIR/.outputs.json`` names the
fingerprint the final files (selected.jsonl, ...) were all written for; a run for another one
removes them before it starts, so a run that fails leaves no outputs of a different input.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from car_engine import __version__
from car_engine.errors import RunDirBusy
from car_engine.io import write_json

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 2  # 2: every file recorded with its size and SHA-256
LOCK = ".lock"
OUTPUTS_RECORD = ".outputs.json"
# A run's final files: outputs.py writes the first four, report.py the page and its plots
# (SVG; an older version's PNGs of the same names are removed with them).
PLOTS = ("iqs_hist", "ifd_hist", "iqs_vs_ifd", "cluster_sizes", "cluster_map", "answer_lengths",
         "turns", "near_dup_hist", "semantic_dup_hist")
OUTPUTS = ("selected.jsonl", "scores.parquet", "rejected.jsonl", "summary.json", "report.html",
           *(f"{plot}.{ext}" for ext in ("svg", "png") for plot in PLOTS))
TEMP_FILES = ".*.tmp"  # how io.atomic_path names a file being written


def fingerprint(stage: str, params: dict[str, Any], upstream: list[str]) -> str:
    """A stable hash of what determines a stage's output."""
    blob = json.dumps({"stage": stage, "params": params, "upstream": upstream,
                       "version": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


class StageDir:
    """``RUN_DIR/stages/<name>/`` with its ``manifest.json``."""

    def __init__(self, run_dir: Path, name: str, fp: str) -> None:
        self.name = name
        self.fingerprint = fp
        self.path = Path(run_dir) / "stages" / name
        self._verified: dict[str, tuple[int, int]] = {}  # file -> (size, mtime) checked
        self._state = self._load()
        self._drop_temp_files()

    def _load(self) -> dict[str, Any]:
        manifest = self.path / MANIFEST
        if manifest.is_file():
            try:
                state = json.loads(manifest.read_text())
            except (ValueError, OSError):
                state = {}
            if (state.get("fingerprint") == self.fingerprint
                    and state.get("format") == MANIFEST_FORMAT):
                return state
            shutil.rmtree(self.path)  # parameters changed: this stage's outputs are stale
        self.path.mkdir(parents=True, exist_ok=True)
        state = {"format": MANIFEST_FORMAT, "fingerprint": self.fingerprint, "files": {},
                 "complete": False, "info": {}}
        self._save(state)
        return state

    def _save(self, state: dict[str, Any]) -> None:
        write_json(self.path / MANIFEST, state)

    def _drop_temp_files(self) -> None:
        # Temp files of writes that never finished (a run or an actor killed mid-write). A
        # stage is only written under the run lock, so none of them is anyone's any more.
        for tmp in self.path.glob(TEMP_FILES):
            tmp.unlink(missing_ok=True)

    def file(self, name: str) -> Path:
        return self.path / name

    def _intact(self, name: str) -> bool:
        """Whether ``name`` is on disk exactly as recorded (hashed once per process)."""
        record = self._state["files"].get(name)
        path = self.file(name)
        if record is None or not path.is_file():
            return False
        stat = path.stat()
        if self._verified.get(name) == (stat.st_size, stat.st_mtime_ns):
            return True
        if stat.st_size == record["size"] and file_digest(path) == record["sha256"]:
            self._verified[name] = (stat.st_size, stat.st_mtime_ns)
            return True
        print(f"car-engine: {path} does not match its manifest entry (truncated or changed "
              "after it was written); recomputing it", file=sys.stderr)
        del self._state["files"][name]
        self._state["complete"] = False
        self._save(self._state)
        path.unlink(missing_ok=True)
        return False

    def is_done(self, name: str) -> bool:
        """Whether file ``name`` was recorded and is still intact."""
        return self._intact(name)

    def mark_done(self, name: str, **facts: Any) -> None:
        """Record a finished file (already in place) with its size and SHA-256, and any
        ``facts`` about it (e.g. how many of its rows came from the score cache)."""
        path = self.file(name)
        stat = path.stat()
        self._state["files"][name] = {"size": stat.st_size, "sha256": file_digest(path),
                                      **facts}
        self._verified[name] = (stat.st_size, stat.st_mtime_ns)
        self._save(self._state)

    def facts(self, name: str) -> dict[str, Any]:
        """What :meth:`mark_done` recorded of ``name`` besides its size and digest."""
        record = self._state["files"].get(name, {})
        return {k: v for k, v in record.items() if k not in ("size", "sha256")}

    @property
    def done(self) -> list[str]:
        """The recorded files, in the order they were recorded."""
        return list(self._state["files"])

    @property
    def complete(self) -> bool:
        """Every file recorded and intact, and the stage marked complete."""
        if not self._state["complete"]:
            return False
        return all([self._intact(name) for name in list(self._state["files"])])

    def mark_complete(self, **info: Any) -> None:
        """Record that every file of the stage is done, with a few facts about the result."""
        self._state["complete"] = True
        self._state["info"] = info
        self._save(self._state)
        self._drop_temp_files()

    @property
    def info(self) -> dict[str, Any]:
        return self._state["info"]


def read_manifest(run_dir: Path, stage: str) -> dict[str, Any]:
    """A stage's manifest as recorded (for readers of a finished run, such as the report)."""
    path = Path(run_dir) / "stages" / stage / MANIFEST
    return json.loads(path.read_text())


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``RUN_DIR/.lock`` for the block, or raise :class:`RunDirBusy` naming the holder.

    The lock is an ``flock``: the kernel drops it when its process dies, so a lock left by a
    killed run is simply taken over; the pid in the file only names the holder."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirBusy(f"{run_dir} is in use by another car-engine run (pid {holder}); "
                             "wait for it to finish, or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def clear_outputs(run_dir: Path, fp: str | None) -> list[str]:
    """Remove the final files of an earlier run unless ``RUN_DIR/.outputs.json`` says they were
    all written for fingerprint ``fp`` (a run that then fails must not leave outputs that
    describe another input or other parameters); says on stderr what went. Returns the names
    removed. An identical rerun keeps them: it rewrites the same bytes."""
    run_dir = Path(run_dir)
    record = run_dir / OUTPUTS_RECORD
    try:
        if fp is not None and json.loads(record.read_text()) == {"fingerprint": fp}:
            return []
    except (OSError, ValueError):
        pass  # no record (or a broken one): nothing here is known to belong to this run
    removed = [name for name in OUTPUTS if (run_dir / name).is_file()]
    record.unlink(missing_ok=True)  # first: a kill below must not leave files it vouches for
    for name in removed:
        (run_dir / name).unlink()
    if removed:
        print(f"car-engine: removed {', '.join(removed)} of an earlier run from {run_dir} (they "
              "describe other inputs or parameters); this run writes them anew", file=sys.stderr)
    return removed


def record_outputs(run_dir: Path, fp: str) -> None:
    """Record that the final files now in ``run_dir`` were all written for fingerprint ``fp``."""
    write_json(Path(run_dir) / OUTPUTS_RECORD, {"fingerprint": fp})


def take_records(folder: Path, shards: list[str], sizes: list[int], rows: np.ndarray,
                 columns: list[str]) -> pa.Table:
    """``columns`` of the records at global ``rows``, in that order, reading only the shards
    that hold them (a few picks must not load a million records' texts)."""
    rows = np.asarray(rows, dtype=np.int64)
    bounds = np.cumsum([0, *sizes])
    shard_of = np.searchsorted(bounds, rows, side="right") - 1
    parts, order = [], []
    for shard in np.unique(shard_of):
        mine = np.flatnonzero(shard_of == shard)
        table = pq.read_table(folder / shards[shard], columns=columns)
        parts.append(table.take(pa.array(rows[mine] - bounds[shard])))
        order.append(mine)
    if not parts:
        return pq.read_table(folder / shards[0], columns=columns).slice(0, 0)
    merged = pa.concat_tables(parts)
    return merged.take(pa.array(np.argsort(np.concatenate(order), kind="stable")))


def take_run_records(run_dir: Path, rows: np.ndarray, columns: list[str]) -> pa.Table:
    """``columns`` of the records at global ``rows`` of a finished run's read stage."""
    info = read_manifest(run_dir, "read")["info"]
    return take_records(Path(run_dir) / "stages" / "read", info["shards"], info["sizes"], rows,
                        columns)
