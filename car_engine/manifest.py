"""A stage's folder and manifest: which shards are done, under which parameters.

A stage's *fingerprint* hashes its own parameters and its upstream stages' fingerprints, so
changing a parameter invalidates that stage and everything after it, and nothing before.
Shard files are written atomically before they are recorded, so a shard listed in the
manifest is complete, and a run killed at any moment resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from car_engine import __version__
from car_engine.corpus import atomic_path


def fingerprint(stage: str, params: dict[str, Any], upstream: list[str]) -> str:
    """A stable hash of what determines a stage's output."""
    blob = json.dumps({"stage": stage, "params": params, "upstream": upstream,
                       "version": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class StageDir:
    """``RUN_DIR/stages/<name>/`` with its ``manifest.json``."""

    def __init__(self, run_dir: Path, name: str, fp: str) -> None:
        self.name = name
        self.fingerprint = fp
        self.path = Path(run_dir) / "stages" / name
        self._state = self._load()

    def _load(self) -> dict[str, Any]:
        manifest = self.path / "manifest.json"
        if manifest.is_file():
            state = json.loads(manifest.read_text())
            if state.get("fingerprint") == self.fingerprint:
                return state
            shutil.rmtree(self.path)  # parameters changed: this stage's outputs are stale
        self.path.mkdir(parents=True, exist_ok=True)
        state = {"fingerprint": self.fingerprint, "done": [], "complete": False, "info": {}}
        self._save(state)
        return state

    def _save(self, state: dict[str, Any]) -> None:
        with atomic_path(self.path / "manifest.json") as tmp:
            tmp.write_text(json.dumps(state, indent=1, sort_keys=True))

    def file(self, name: str) -> Path:
        return self.path / name

    def is_done(self, shard: str) -> bool:
        return shard in self._state["done"] and self.file(shard).is_file()

    def mark_done(self, shard: str) -> None:
        """Record a finished shard (its file is already in place)."""
        if shard not in self._state["done"]:
            self._state["done"].append(shard)
            self._save(self._state)

    @property
    def complete(self) -> bool:
        return bool(self._state["complete"]) and all(self.is_done(s) for s in self._state["done"])

    def mark_complete(self, **info: Any) -> None:
        """Record that every shard of the stage is done, with a few facts about the result."""
        self._state["complete"] = True
        self._state["info"] = info
        self._save(self._state)

    @property
    def info(self) -> dict[str, Any]:
        return self._state["info"]
