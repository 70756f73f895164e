"""The stages of a run, each writing shards under ``RUN_DIR/stages/<stage>/``.

read -> (iqs | ifd | embed, shard by shard on a backend) -> cluster. Each stage is resumable:
a stage whose manifest says complete (and whose files are intact) is skipped; a scoring stage
reruns only the shards not yet done. Scoring stages work shard by shard, so their memory does
not grow with the corpus.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from car_engine.backends import Backend, ShardJob
from car_engine.config import RunConfig, params_dict
from car_engine.corpus import FieldMap, read_corpus, say_mapping, source_files
from car_engine.dedup import content_hashes
from car_engine.io import atomic_path, write_jsonl, write_npy, write_parquet
from car_engine.rundir import StageDir, file_digest, fingerprint
from car_engine.score_cache import keys_column, models_digest, record_keys
from car_engine.workers import Worker


def source_identity(source: str) -> dict[str, Any]:
    """What the read stage's output depends on in the corpus: its name, resolved path (the
    rejections name it) and the SHA-256 of its bytes. A digest, not size and mtime: a file
    edited in place with both kept (``cp -p``, ``touch -r``, a coarse clock) must be read
    again, and a file only touched need not be. It costs one streamed read of the file per
    run: about 1.1-1.3 s per GB from the page cache (SHA-256 at ~750-900 MB/s on one
    core), against ~90 s per GB for the read stage itself, measured on ShareGPT JSONL.
    A folder or glob of shards: every file's path, size and digest, in reading order."""
    files = source_files(source)
    each = [{"path": str(path.resolve()), "size": path.stat().st_size,
             "sha256": file_digest(path)} for path in files]
    if str(source).startswith("builtin:") or Path(str(source)).is_file():
        return {"source": str(source), **each[0]}  # one file: the identity it always had
    return {"source": str(source), "files": each}


def read_params(source: str, cfg: RunConfig) -> dict[str, Any]:
    """The read stage's parameters: the source's identity and how it is read (with
    ``--fields``, the field names too)."""
    params = {**source_identity(source), "limit": cfg.limit, "strict": cfg.strict,
              "shard_size": cfg.shard_size}
    if cfg.fields is not None:
        params["fields"] = cfg.fields
    return params


def read_stage(source: str, run_dir: Path, cfg: RunConfig, progress: bool,
               params: dict[str, Any] | None = None) -> StageDir:
    """Split the corpus into records shards (with content hashes) and collect rejections;
    ``params`` are :func:`read_params` when the caller has them already."""
    if params is None:
        params = read_params(source, cfg)
    stage = StageDir(run_dir, "read", fingerprint("read", params, []))
    if stage.complete:
        return stage
    shards: list[str] = []
    sizes: list[int] = []
    rejected: list[dict[str, Any]] = []
    items = 0
    field_map = FieldMap(cfg.fields, say_mapping)
    batches = read_corpus(source, batch_size=cfg.shard_size, strict=cfg.strict, limit=cfg.limit,
                          fail_unreadable=True, fields=field_map)
    for batch in tqdm(batches, desc="read", unit="shard", disable=not progress):
        # a fault between items (a trailing comma) is rejected but holds no item
        items += batch.records.num_rows + sum(r.item for r in batch.rejected)
        rejected.extend(r.to_dict() for r in batch.rejected)
        if batch.records.num_rows == 0:
            continue
        name = f"records-{len(shards):05d}.parquet"
        hashes = pa.array(content_hashes(batch.records))
        keys = keys_column(record_keys(batch.records))  # exact: the score cache's key
        write_parquet(stage.file(name), batch.records.append_column("content_hash", hashes)
                      .append_column("cache_key", keys))
        shards.append(name)
        sizes.append(batch.records.num_rows)
    write_jsonl(stage.file("rejected.jsonl"), rejected)
    for name in [*shards, "rejected.jsonl"]:
        stage.mark_done(name)
    stage.mark_complete(shards=shards, sizes=sizes, items=items, rejected=len(rejected),
                        **({"field_names": field_map.used} if field_map.used else {}))
    return stage


def shard_stage(worker: type[Worker], params: Any, read: StageDir, run_dir: Path,
                backend: Backend, cache: Path | None = None) -> StageDir:
    """Run a scoring stage over every records shard not yet done, taking the records the
    score cache folder ``cache`` (when given) already holds from it."""
    name = worker.stage
    # the model files' contents, not just their names: `default` is whatever model ships
    # with the package, and a user may retrain into the same folder
    identity = {**params_dict(params), "models": models_digest(worker.model_files(params))}
    stage = StageDir(run_dir, name, fingerprint(name, identity, [read.fingerprint]))
    if stage.complete:
        return stage
    outputs = [s.replace("records-", f"{name}-").replace(".parquet", worker.suffix)
               for s in read.info["shards"]]
    todo = [(read.file(src), out) for src, out in zip(read.info["shards"], outputs)
            if not stage.is_done(out)]
    runtimes: set[str] = set()  # where each shard ran (device, runtime, precision)
    if cache is not None:
        from car_engine.pipeline.cached import run_cached

        runtimes = run_cached(worker, params, stage, todo, cache, backend)
    else:
        def done(job: ShardJob) -> None:
            stage.mark_done(Path(job.target).name)
            if job.runtime:
                runtimes.add(job.runtime)

        jobs = [ShardJob(str(src), str(stage.file(out))) for src, out in todo]
        backend.map_shards(worker, params, jobs, done)
    counts = [stage.facts(out) for out in outputs]
    stage.mark_complete(shards=outputs, runtimes=sorted(runtimes),
                        cached=sum(c.get("cached", 0) for c in counts),
                        computed=sum(c.get("computed", n) for c, n in
                                     zip(counts, read.info["sizes"])))
    return stage


def split_encoded(encode: StageDir, run_dir: Path) -> tuple[StageDir, StageDir]:
    """The one-pass stage's shards as an ``iqs`` stage (parquet, its IQS columns) and an
    ``embed`` stage (.npy), laid out as the two-pass stages are, so that everything after them
    reads one layout. Each is derived from the encode stage's fingerprint alone."""
    derived = []
    for name, suffix in (("iqs", ".parquet"), ("embed", ".npy")):
        stage = StageDir(run_dir, name, fingerprint(name, {"from": "encode"},
                                                    [encode.fingerprint]))
        derived.append(stage)
        if stage.complete:
            continue
        outputs = []
        for shard in encode.info["shards"]:
            out = shard.replace("encode-", f"{name}-").replace(".parquet", suffix)
            outputs.append(out)
            if stage.is_done(out):
                continue
            table = pq.read_table(encode.file(shard))
            if name == "iqs":
                write_parquet(stage.file(out), table.drop_columns(["embedding"]))
            else:
                column = table.column("embedding").combine_chunks()
                write_npy(stage.file(out), column.flatten().to_numpy()
                          .reshape(len(column), column.type.list_size))
            stage.mark_done(out)
        stage.mark_complete(**{**encode.info, "shards": outputs})
    return derived[0], derived[1]


def cluster_stage(embed: StageDir, read: StageDir, run_dir: Path, cfg: RunConfig,
                  progress: bool) -> StageDir:
    """Gather the embedding shards into one memory-mapped .npy, then PCA + k-means."""
    from car_engine.cluster import cluster

    params = params_dict(cfg.cluster)
    stage = StageDir(run_dir, "cluster", fingerprint("cluster", params, [embed.fingerprint]))
    if stage.complete:
        return stage
    n = sum(read.info["sizes"])
    first = np.load(embed.file(embed.info["shards"][0]), mmap_mode="r")
    with atomic_path(stage.file("embeddings.npy")) as tmp:
        vectors = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                            shape=(n, first.shape[1]))
        row = 0
        for shard in embed.info["shards"]:
            part = np.load(embed.file(shard), mmap_mode="r")
            vectors[row:row + len(part)] = part
            row += len(part)
        vectors.flush()
        del vectors
    vectors = np.load(stage.file("embeddings.npy"), mmap_mode="r")
    result = cluster(np.asarray(vectors), k=cfg.k, pca_var=cfg.pca_var, pca_dim=cfg.pca_dim,
                     seed=cfg.seed, progress=progress, device=cfg.device, n_init=cfg.n_init,
                     refine_rounds=cfg.refine_rounds)
    table = pa.table({"cluster": pa.array(result.labels, pa.int64()),
                      "distance": pa.array(result.distances, pa.float32())})
    write_parquet(stage.file("clusters.parquet"), table)
    for name in ("embeddings.npy", "clusters.parquet"):
        stage.mark_done(name)
    stage.mark_complete(k=int(result.centroids.shape[0]), n_components=int(result.n_components),
                        explained_variance=float(result.explained_variance),
                        runtimes=[result.runtime],
                        embed_runtimes=embed.info.get("runtimes", []))  # for summary.json
    return stage


def concat_shards(stage: StageDir) -> pa.Table:
    """A scoring stage's shards as one table, in record order."""
    return pa.concat_tables([pq.read_table(stage.file(s)) for s in stage.info["shards"]])


def per_record(read: StageDir, column: str, fn: Callable[[list], np.ndarray]) -> np.ndarray:
    """``fn`` of one column of the records, shard by shard (only one shard's texts in
    memory), in input order."""
    return np.concatenate([fn(pq.read_table(read.file(s), columns=[column])[column].to_pylist())
                           for s in read.info["shards"]])


def records_columns(read: StageDir, columns: list[str]) -> pa.Table:
    """``columns`` of every record, in input order."""
    return pa.concat_tables([pq.read_table(read.file(s), columns=columns)
                             for s in read.info["shards"]])
