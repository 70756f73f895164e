"""A run's final files: the selection over every record, then selected.jsonl,
scores.parquet, rejected.jsonl and summary.json in the run folder (each written atomically)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from car_engine.backends import Backend
from car_engine.config import RunConfig
from car_engine.io import write_bytes, write_json, write_jsonl, write_parquet
from car_engine.pipeline.duplicates import Duplicates, find_duplicates
from car_engine.pipeline.selected import selected_items
from car_engine.pipeline.stages import concat_shards, per_record, records_columns
from car_engine.quality_guard import below_floor, floors_for, guard_on
from car_engine.relevance import RELEVANCE_COLUMN
from car_engine.repetition import REPETITION_COLUMN, answers_repetition
from car_engine.rundir import StageDir, take_records
from car_engine.score_tables import attach, float_column
from car_engine.select import (
    Selection,
    ifd_rule,
    picked_rows,
    scored_ifd,
    select_car,
    select_car_ifd,
    select_ifd,
)


def scores_table(read: StageDir, iqs: StageDir | None, ifd: StageDir | None,
                 clusters: StageDir | None, pre: StageDir | None = None,
                 cfg: RunConfig | None = None, relevance: StageDir | None = None) -> pa.Table:
    """One row per record, in input order: id, position, every score, cluster (with ``pre``:
    the instruction perplexity and the k-means cluster of the instruction vectors; with
    ``relevance``: the quality guard's relevance of each answer to its instruction; when the
    guard is on, each answer's repetition, read from the records: no model, no stage)."""
    table = records_columns(read, ["id", "position", "content_hash"])
    if iqs is not None:
        iqs_table = concat_shards(iqs)  # with --turns all, also the per-turn scores
        table = attach(table, iqs_table, [c for c in ("iqs", "turn_iqs")
                                          if c in iqs_table.column_names], "iqs stage",
                       required=True)
    if ifd is not None:
        # The IFD scorer's columns as scores.parquet names them ("status" is "ifd_status").
        # With --turns all the table also has the per-turn columns (ifd_turns.TURN_COLUMNS).
        ifd_table = concat_shards(ifd)
        named = ["ifd_status" if c == "status" else c for c in ifd_table.column_names]
        ifd_table = ifd_table.rename_columns(named)
        table = attach(table, ifd_table, [c for c in named if c != "id"], "ifd stage",
                       required=True)
    if relevance is not None:
        table = attach(table, concat_shards(relevance), [RELEVANCE_COLUMN], "relevance stage",
                       required=True)
    if cfg is not None and guard_on(cfg):
        table = table.append_column(REPETITION_COLUMN, pa.array(
            per_record(read, "output", answers_repetition), pa.float64()))
    if pre is not None:
        table = _with_pre_clusters(table, concat_shards(pre), cfg or RunConfig())
    if clusters is not None:
        cl = pq.read_table(clusters.file("clusters.parquet"))
        table = table.append_column("cluster", cl["cluster"]).append_column(
            "distance", cl["distance"])
    return table


def _with_pre_clusters(table: pa.Table, pre: pa.Table, cfg: RunConfig) -> pa.Table:
    """The pre-experience columns joined by id, and each record's k-means cluster of the
    instruction vectors (k = --pre-k, seeded by --seed)."""
    from car_engine.pre_experience import cluster_labels

    table = attach(table, pre, ["instruction_ppl", "instruction_tokens"], "pre stage",
                   required=True)
    vectors = np.asarray(pre["vector"].combine_chunks().flatten().to_numpy(
        zero_copy_only=False), dtype=np.float32).reshape(pre.num_rows, -1)
    labels = cluster_labels(vectors, cfg.pre.k, seed=cfg.seed)
    return table.append_column("cluster", pa.array(labels, pa.int64()))


def quality_guard(table: pa.Table, cfg: RunConfig) -> np.ndarray | None:
    """The rows the IFD quality guard drops (car_engine/quality_guard.py), None when off."""
    if not guard_on(cfg):
        return None
    # no IQS stage: no IQS column, and no IQS floor applies (floors_for)
    iqs, loss, relevance, repetition = (
        float_column(table, c, "scores") if c in table.column_names else None
        for c in ("iqs", "loss_direct", RELEVANCE_COLUMN, REPETITION_COLUMN))
    return below_floor(floors_for(cfg), iqs, loss, relevance, repetition)


def select(table: pa.Table, cfg: RunConfig, backend: Backend, sizes: list[int],
           items: int, duplicates: Duplicates | None = None) -> Selection:
    """The run's method over the scores table (every rule lives in car_engine.select);
    ``duplicates`` are the near and semantic groups to collapse after exact duplicates."""
    column, keep_equal_one = ifd_rule(cfg.ifd.compat, cfg.keep_equal_one)
    if cfg.uses_pre:
        from car_engine.select_pre import select_pre_experience

        ppl = table["instruction_ppl"].to_numpy(zero_copy_only=False).astype(np.float64)
        return select_pre_experience(ppl, table["cluster"].to_numpy(),
                                     per_cluster=cfg.pre.per_cluster, low=cfg.pre.low,
                                     high=cfg.pre.high)
    guard = quality_guard(table, cfg)
    if not cfg.uses_car:
        return select_ifd(scored_ifd(table, column, "ifd_status"), fraction=cfg.ifd_frac,
                          base=items, keep_equal_one=keep_equal_one, guard=guard)
    car: dict[str, Any] = dict(
        n1=cfg.n1, n2=cfg.n2, strategy=cfg.strategy,
        hashes=table["content_hash"].to_numpy() if cfg.dedup else None,
        topk=lambda s, k: backend.sharded_topk(s, k, sizes))
    if duplicates is not None and (duplicates.near or duplicates.semantic):
        car.update(near_groups=None if duplicates.near is None else duplicates.near.groups,
                   semantic_groups=None if duplicates.semantic is None
                   else duplicates.semantic.groups,
                   ids=table["id"].cast(pa.string()).to_pylist())
    iqs = table["iqs"].to_numpy(zero_copy_only=False).astype(np.float64)
    labels = table["cluster"].to_numpy()
    if cfg.uses_ifd:
        ifd = table[column].to_numpy(zero_copy_only=False).astype(float)
        return select_car_ifd(iqs, ifd, labels, keep_equal_one=keep_equal_one, guard=guard,
                              **car)
    return select_car(iqs, labels, **car)


def selected_rows(source: str, read: StageDir, table: pa.Table, selection: Selection,
                  cfg: RunConfig) -> list[dict]:
    """The selected items as they came (or as --output-format asks), in final order, each
    with its scores under ``car_engine`` (see pipeline/selected.py)."""
    picked = picked_rows(table, selection).drop_columns(["content_hash"])
    picked = picked.append_column("why", pa.array(selection.why[selection.order].tolist(),
                                                  pa.string()))
    texts = take_records(read.path, read.info["shards"], read.info["sizes"], selection.order,
                         ["instruction", "input", "output"])
    return selected_items(source, picked, texts, cfg)


def write_outputs(read: StageDir, iqs: StageDir | None, ifd: StageDir | None,
                  clusters: StageDir | None, run_dir: Path, cfg: RunConfig,
                  backend: Backend, score_cache: dict[str, Any] | None = None,
                  pre: StageDir | None = None, minhash: StageDir | None = None,
                  relevance: StageDir | None = None, *, source: str) -> dict[str, int]:
    """Select, then write selected.jsonl, scores.parquet, rejected.jsonl and summary.json
    (with ``score_cache``: the cache folder and each scoring stage's cached/computed counts;
    near duplicates from the ``minhash`` signature stage when it ran; the guard's
    ``relevance`` stage when it ran). ``source`` is the corpus the selected items are read
    back from."""
    table = scores_table(read, iqs, ifd, clusters, pre, cfg, relevance)
    items = int(read.info["items"])
    duplicates = find_duplicates(minhash, clusters, cfg)
    selection = select(table, cfg, backend, read.info["sizes"], items, duplicates)
    selected = np.zeros(table.num_rows, dtype=bool)
    selected[selection.order] = True
    rank = np.full(table.num_rows, -1, dtype=np.int64)
    rank[selection.order] = np.arange(selection.order.size)
    scores = (table.drop_columns(["content_hash"])
              .append_column("selected", pa.array(selected))
              .append_column("rank", pa.array(rank))
              .append_column("why", pa.array(selection.why.tolist(), pa.string())))
    rows = selected_rows(source, read, table, selection, cfg)
    write_jsonl(run_dir / "selected.jsonl", rows)
    write_parquet(run_dir / "scores.parquet", scores)
    write_bytes(run_dir / "rejected.jsonl", read.file("rejected.jsonl").read_bytes())
    counts = {"items": items, "records": table.num_rows, "rejected": int(read.info["rejected"]),
              **selection.counts}
    if clusters is not None:
        counts["clusters"] = int(clusters.info["k"])
    config = json.loads(json.dumps(asdict(cfg), default=str))
    # Where every stage ran (device, runtime, precision), as its workers reported it.
    ran = {name: stage.info.get("runtimes", []) for name, stage in
           (("iqs", iqs), ("ifd", ifd), ("cluster", clusters), ("relevance", relevance))
           if stage is not None}
    if clusters is not None:  # the embedding stage is seen through the clusters made from it
        ran["embed"] = clusters.info.get("embed_runtimes", [])
    summary = {"method": cfg.method, "counts": counts, "config": config, "runtimes": ran}
    summary["quality_guard"] = {"on": guard_on(cfg), **floors_for(cfg).as_dict()}
    if score_cache is not None:
        summary["score_cache"] = score_cache
    if read.info.get("field_names"):
        summary["field_names"] = read.info["field_names"]
    if duplicates.near is not None or duplicates.semantic is not None:
        ids = table["id"].cast(pa.string()).to_pylist()
        summary["duplicates"] = duplicates.summary(ids, selection.why)
    write_json(run_dir / "summary.json", summary)
    return counts
