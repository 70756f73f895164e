"""Near and semantic duplicates in a run (SPEC §9).

The MinHash signatures are a stage of their own (``RUN_DIR/stages/minhash/``), one .npy per
records shard, resumable shard by shard like the scoring stages; its fingerprint holds only
what the signatures depend on (permutations, shingle size, seed, the read stage), so a rerun
with another ``--near-dup-threshold`` reuses them and redoes only the grouping, which is quick.
Semantic groups come from the cluster stage's embeddings and labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from car_engine.config import RunConfig, params_dict
from car_engine.io import write_npy
from car_engine.rundir import StageDir, fingerprint
from car_engine.select import WHY_NEAR, WHY_SEMANTIC

if TYPE_CHECKING:
    from car_engine.near_dup import NearGroups
    from car_engine.semdedup import SemanticGroups


def signature_stage(read: StageDir, run_dir: Path, cfg: RunConfig, progress: bool) -> StageDir:
    """MinHash signatures of every records shard not yet done (uint32 [rows, num_perm])."""
    from car_engine.near_dup import signatures

    params = params_dict(cfg.near)
    stage = StageDir(run_dir, "minhash", fingerprint("minhash", params, [read.fingerprint]))
    if stage.complete:
        return stage
    outputs = [s.replace("records-", "minhash-").replace(".parquet", ".npy")
               for s in read.info["shards"]]
    todo = [(src, out) for src, out in zip(read.info["shards"], outputs)
            if not stage.is_done(out)]
    for src, out in tqdm(todo, desc="minhash", unit="shard", disable=not progress):
        table = pq.read_table(read.file(src), columns=["instruction", "input", "output", "turns"])
        write_npy(stage.file(out), signatures(table, cfg.near, name=str(read.file(src))))
        stage.mark_done(out)
    stage.mark_complete(shards=outputs)
    return stage


@dataclass
class Duplicates:
    """The groups a run collapses after exact duplicates (None: not asked for)."""

    near: NearGroups | None = None
    semantic: SemanticGroups | None = None

    def summary(self, ids: list[str], why: np.ndarray) -> dict[str, Any]:
        """summary.json's account of each kind: the similarity distribution with the cut, the
        number of groups, and a few example groups by id (the kept member first)."""
        from car_engine.near_dup import dedup_summary, example_groups
        from car_engine.semdedup import semantic_summary

        out: dict[str, Any] = {}
        if self.near is not None:
            kept = ~_starts(why, WHY_NEAR)
            out["near_dup"] = dedup_summary(self.near, ids, kept)
        if self.semantic is not None:
            kept = ~_starts(why, WHY_SEMANTIC)
            out["semantic_dup"] = {**semantic_summary(self.semantic),
                                   "examples": example_groups(self.semantic.groups, ids, kept, 3)}
        return out


def _starts(why: np.ndarray, reason: str) -> np.ndarray:
    prefix = reason.split("{")[0]
    return np.array([str(w).startswith(prefix) for w in why], dtype=bool)


def find_duplicates(minhash: StageDir | None, clusters: StageDir | None,
                    cfg: RunConfig) -> Duplicates:
    """Near groups from the signature stage (when it ran) and semantic groups from the
    cluster stage's embeddings and labels (with ``cfg.semdedup_eps``)."""
    from car_engine.near_dup import near_groups
    from car_engine.semdedup import semantic_groups

    found = Duplicates()
    if minhash is not None and cfg.near_dup:
        sigs = np.concatenate([np.load(minhash.file(s)) for s in minhash.info["shards"]])
        found.near = near_groups(sigs, cfg.near_dup_threshold, cfg.near)
    if clusters is not None and cfg.semdedup_eps is not None:
        vectors = np.load(clusters.file("embeddings.npy"), mmap_mode="r")
        labels = pq.read_table(clusters.file("clusters.parquet"))["cluster"].to_numpy()
        found.semantic = semantic_groups(vectors, labels, cfg.semdedup_eps)
    return found
