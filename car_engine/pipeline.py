"""`car-engine run`: corpus -> scores/embeddings -> clusters -> selection -> output + report.

Each stage writes shards under ``RUN_DIR/stages/<stage>/`` and records them in a manifest
(see manifest.py); running the same command again skips what is done. Scoring stages work
shard by shard, so their memory does not grow with the corpus.

Methods:
- ``car``: IQS ranks; the top n1 plus the top n2 of every embedding cluster (SPEC §4).
- ``ifd``: drop IFD >= 1, keep the top ``ifd_frac`` of the input by IFD (SPEC §2).
- ``car+ifd``: CaR where records with IFD >= 1 are dropped first (their instruction does not
  help the model predict the answer); IQS then ranks what is left. Records IFD could not
  score (e.g. no room for the answer) stay eligible on IQS alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from car_engine import native
from car_engine.backends import Backend, ShardJob, get_backend
from car_engine.corpus import (
    CorpusError,
    atomic_path,
    pair_texts,
    read_corpus,
    resolve_source,
    write_jsonl,
    write_parquet,
)
from car_engine.errors import UsageError
from car_engine.manifest import StageDir, fingerprint
from car_engine.select import (
    STRATEGIES,
    WHY_MISALIGNED,
    Selection,
    scored_ifd,
    select_car,
    select_ifd,
)
from car_engine.stages import EmbedParams, IFDParams, IQSParams, params_dict

METHODS = ("car", "ifd", "car+ifd")
IFD_SCORE_COLUMNS = ["loss_cond", "loss_direct", "ppl_cond", "ppl_direct", "ifd_ppl", "ifd_loss",
                     "n_tokens", "truncated", "status"]


@dataclass
class RunConfig:
    """Everything that decides a run's output (the CLI maps its flags onto these)."""

    method: str = "car"
    n1: int = 1000
    n2: int = 1
    strategy: str = "n1+k*n2"
    ifd_frac: float = 0.05
    keep_equal_one: bool = False
    limit: int | None = None
    strict: bool = False
    dedup: bool = True
    shard_size: int = 2000
    k: int | None = None
    pca_var: float = 0.95
    pca_dim: int | None = None
    seed: int = 42
    iqs: IQSParams = field(default_factory=IQSParams)
    ifd: IFDParams = field(default_factory=IFDParams)
    embed: EmbedParams = field(default_factory=EmbedParams)

    def check(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"unknown method '{self.method}' (choose from {', '.join(METHODS)})")
        if self.strategy not in STRATEGIES:
            raise UsageError(f"unknown strategy '{self.strategy}'")
        if self.shard_size < 1:
            raise UsageError("shard size must be >= 1")
        if not 0 <= self.ifd_frac <= 1:
            raise UsageError("--ifd-frac must be in [0, 1]")

    @property
    def uses_car(self) -> bool:
        return self.method in ("car", "car+ifd")

    @property
    def uses_ifd(self) -> bool:
        return self.method in ("ifd", "car+ifd")


@dataclass
class RunResult:
    """Where a run's outputs are and what it selected."""

    run_dir: Path
    counts: dict[str, int]

    @property
    def selected_path(self) -> Path:
        return self.run_dir / "selected.jsonl"

    @property
    def scores_path(self) -> Path:
        return self.run_dir / "scores.parquet"

    @property
    def report_path(self) -> Path:
        return self.run_dir / "report.html"


# --------------------------------------------------------------------------- stages


def _source_identity(source: str) -> dict[str, Any]:
    path = resolve_source(source)
    stat = path.stat()
    return {"source": str(source), "path": str(path.resolve()), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns}


def read_stage(source: str, run_dir: Path, cfg: RunConfig, progress: bool) -> StageDir:
    """Split the corpus into records shards (with content hashes) and collect rejections."""
    params = {**_source_identity(source), "limit": cfg.limit, "strict": cfg.strict,
              "shard_size": cfg.shard_size}
    stage = StageDir(run_dir, "read", fingerprint("read", params, []))
    if stage.complete:
        return stage
    shards, sizes, rejected, items = [], [], [], 0
    batches = read_corpus(source, batch_size=cfg.shard_size, strict=cfg.strict, limit=cfg.limit)
    for batch in tqdm(batches, desc="read", unit="shard", disable=not progress):
        items += batch.records.num_rows + len(batch.rejected)
        rejected.extend(r.to_dict() for r in batch.rejected)
        if batch.records.num_rows == 0:
            continue
        name = f"records-{len(shards):05d}.parquet"
        hashes = pa.array(native.hash_texts(pair_texts(batch.records)))
        write_parquet(stage.file(name), batch.records.append_column("content_hash", hashes))
        shards.append(name)
        sizes.append(batch.records.num_rows)
    write_jsonl(stage.file("rejected.jsonl"), rejected)
    for name in shards:
        stage.mark_done(name)
    stage.mark_complete(shards=shards, sizes=sizes, items=items, rejected=len(rejected))
    return stage


def shard_stage(name: str, params: Any, read: StageDir, run_dir: Path, backend: Backend,
                suffix: str) -> StageDir:
    """Run a scoring stage over every records shard not yet done."""
    stage = StageDir(run_dir, name, fingerprint(name, params_dict(params), [read.fingerprint]))
    if stage.complete:
        return stage
    outputs = [s.replace("records-", f"{name}-").replace(".parquet", suffix)
               for s in read.info["shards"]]
    jobs = [ShardJob(str(read.file(src)), str(stage.file(out)))
            for src, out in zip(read.info["shards"], outputs) if not stage.is_done(out)]
    backend.map_shards(name, params, jobs, lambda job: stage.mark_done(Path(job.target).name))
    stage.mark_complete(shards=outputs)
    return stage


def cluster_stage(embed: StageDir, read: StageDir, run_dir: Path, cfg: RunConfig,
                  progress: bool) -> StageDir:
    """Gather the embedding shards into one memory-mapped .npy, then PCA + k-means."""
    from car_engine.cluster import cluster

    params = {"k": cfg.k, "pca_var": cfg.pca_var, "pca_dim": cfg.pca_dim, "seed": cfg.seed}
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
                     seed=cfg.seed, progress=progress)
    table = pa.table({"cluster": pa.array(result.labels, pa.int64()),
                      "distance": pa.array(result.distances, pa.float32())})
    write_parquet(stage.file("clusters.parquet"), table)
    stage.mark_complete(k=int(result.centroids.shape[0]), n_components=int(result.n_components),
                        explained_variance=float(result.explained_variance))
    return stage


def _concat_shards(stage: StageDir) -> pa.Table:
    return pa.concat_tables([pq.read_table(stage.file(s)) for s in stage.info["shards"]])


def _records_columns(read: StageDir, columns: list[str]) -> pa.Table:
    return pa.concat_tables([pq.read_table(read.file(s), columns=columns)
                             for s in read.info["shards"]])


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


# --------------------------------------------------------------------------- selection


def _scores_table(read: StageDir, iqs: StageDir | None, ifd: StageDir | None,
                  clusters: StageDir | None) -> pa.Table:
    """One row per record, in input order: id, position, every score, cluster."""
    table = _records_columns(read, ["id", "position", "content_hash"])
    if iqs is not None:
        table = table.append_column("iqs", _aligned(table, _concat_shards(iqs), "iqs"))
    if ifd is not None:
        ifd_table = _concat_shards(ifd)
        for col in IFD_SCORE_COLUMNS:
            out = "ifd_status" if col == "status" else col
            table = table.append_column(out, _aligned(table, ifd_table, col))
    if clusters is not None:
        cl = pq.read_table(clusters.file("clusters.parquet"))
        table = table.append_column("cluster", cl["cluster"]).append_column(
            "distance", cl["distance"])
    return table


def _aligned(base: pa.Table, scores: pa.Table, column: str) -> pa.ChunkedArray:
    """``scores[column]`` reordered to ``base``'s ids (a scorer must return every id)."""
    where = pc.index_in(base["id"], value_set=scores["id"].cast(pa.string()))
    if where.null_count:
        missing = base["id"].filter(pc.is_null(where))[0]
        raise CorpusError(f"stage output lacks a row for record id '{missing}'")
    return scores[column].take(where)


def _select(table: pa.Table, cfg: RunConfig, backend: Backend, sizes: list[int],
            items: int) -> Selection:
    if not cfg.uses_car:
        ifd = scored_ifd(table, "ifd_ppl", "ifd_status")
        return select_ifd(ifd, fraction=cfg.ifd_frac, base=items,
                          keep_equal_one=cfg.keep_equal_one)
    iqs = table["iqs"].to_numpy(zero_copy_only=False).astype(np.float64)
    misaligned = np.zeros(len(iqs), dtype=bool)
    if cfg.uses_ifd:
        ifd = table["ifd_ppl"].to_numpy(zero_copy_only=False).astype(float)
        with np.errstate(invalid="ignore"):
            misaligned = (ifd > 1) if cfg.keep_equal_one else (ifd >= 1)
        iqs = np.where(misaligned, np.nan, iqs)
    selection = select_car(
        iqs, table["cluster"].to_numpy(), n1=cfg.n1, n2=cfg.n2, strategy=cfg.strategy,
        hashes=table["content_hash"].to_numpy() if cfg.dedup else None,
        topk=lambda s, k: backend.sharded_topk(s, k, sizes),
    )
    selection.why[misaligned] = WHY_MISALIGNED
    selection.counts["dropped_by_ifd"] = int(misaligned.sum())
    return selection


def _selected_rows(read: StageDir, table: pa.Table, selection: Selection) -> list[dict]:
    """The selected records with their scores, in final order."""
    picked = table.take(pa.array(selection.order, pa.int64()))
    picked = picked.append_column("selected_by", pa.array(selection.via, pa.string()))
    texts = take_records(read.path, read.info["shards"], read.info["sizes"], selection.order,
                         ["instruction", "input", "output", "turns"])
    score_cols = [c for c in ("iqs", "ifd_ppl", "ifd_loss", "cluster") if c in picked.column_names]
    rows = []
    for rec, sc in zip(texts.to_pylist(), picked.to_pylist()):
        row = {"id": sc["id"], "instruction": rec["instruction"], "input": rec["input"],
               "output": rec["output"]}
        if rec["turns"]:
            row["conversations"] = json.loads(rec["turns"])
        row.update({c: sc[c] for c in score_cols})
        row["selected_by"] = sc["selected_by"]
        rows.append(row)
    return rows


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and not np.isfinite(value) else value


def select_stage(read: StageDir, iqs: StageDir | None, ifd: StageDir | None,
                 clusters: StageDir | None, run_dir: Path, cfg: RunConfig,
                 backend: Backend) -> dict[str, int]:
    """Select, then write selected.jsonl, scores.parquet, rejected.jsonl and summary.json."""
    table = _scores_table(read, iqs, ifd, clusters)
    items = int(read.info["items"])
    selection = _select(table, cfg, backend, read.info["sizes"], items)
    selected = np.zeros(table.num_rows, dtype=bool)
    selected[selection.order] = True
    rank = np.full(table.num_rows, -1, dtype=np.int64)
    rank[selection.order] = np.arange(selection.order.size)
    scores = (table.drop_columns(["content_hash"])
              .append_column("selected", pa.array(selected))
              .append_column("rank", pa.array(rank))
              .append_column("why", pa.array(selection.why.tolist(), pa.string())))
    rows = [{k: _clean(v) for k, v in r.items()} for r in _selected_rows(read, table, selection)]
    write_jsonl(run_dir / "selected.jsonl", rows)
    write_parquet(run_dir / "scores.parquet", scores)
    rejected = read.file("rejected.jsonl").read_bytes()
    with atomic_path(run_dir / "rejected.jsonl") as tmp:
        tmp.write_bytes(rejected)
    counts = {"items": items, "records": table.num_rows, "rejected": int(read.info["rejected"]),
              **selection.counts}
    if clusters is not None:
        counts["clusters"] = int(clusters.info["k"])
    summary = {"method": cfg.method, "counts": counts, "config": _config_dict(cfg)}
    with atomic_path(run_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1, sort_keys=True))
    return counts


def _config_dict(cfg: RunConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg), default=str))


# --------------------------------------------------------------------------- the run


def run(
    source: str,
    out_dir: str | Path,
    config: RunConfig | None = None,
    *,
    backend: str = "local",
    workers: int = 1,
    progress: bool = True,
    report: bool = True,
) -> RunResult:
    """Run the whole selection job on ``source`` (a corpus path or ``builtin:sharegpt``) into
    ``out_dir``, resuming whatever an earlier run with the same parameters finished.

    Writes ``selected.jsonl`` (the picks, in final order), ``scores.parquet`` (every record:
    scores, cluster, selected or not, why), ``rejected.jsonl``, ``summary.json`` and
    ``report.html``. Returns the output paths and the counts.
    """
    cfg = config or RunConfig()
    cfg.check()
    run_dir = Path(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    read = read_stage(source, run_dir, cfg, progress)
    if not read.info["shards"]:
        raise CorpusError(f"{source}: no valid records (rejected {read.info['rejected']} "
                          f"items; see {read.file('rejected.jsonl')})")
    runner = get_backend(backend, workers=workers, progress=progress)
    try:
        iqs = shard_stage("iqs", cfg.iqs, read, run_dir, runner, ".parquet") \
            if cfg.uses_car else None
        ifd = shard_stage("ifd", cfg.ifd, read, run_dir, runner, ".parquet") \
            if cfg.uses_ifd else None
        clusters = None
        if cfg.uses_car:
            embed = shard_stage("embed", cfg.embed, read, run_dir, runner, ".npy")
            clusters = cluster_stage(embed, read, run_dir, cfg, progress)
        counts = select_stage(read, iqs, ifd, clusters, run_dir, cfg, runner)
    finally:
        runner.shutdown()
    if report:
        from car_engine.report import build_report

        build_report(run_dir)
    return RunResult(run_dir, counts)
