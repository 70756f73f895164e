"""`car-engine run`: corpus -> scores/embeddings -> clusters -> selection -> output + report.

Each stage writes shards under ``RUN_DIR/stages/<stage>/`` and records them in a manifest
(see rundir.py); running the same command again skips what is done. The run folder is
locked for the whole run, so two runs never interleave in one folder. Final files of an
earlier run for another input or other parameters are removed before anything is read, so a
run that fails never leaves outputs that describe something else.

Methods (the rules live in car_engine.select):
- ``car``: IQS ranks; the top n1 plus the top n2 of every embedding cluster (SPEC §4).
- ``ifd``: drop IFD >= 1, keep the top ``ifd_frac`` of the input by IFD (SPEC §2); unless
  ``--no-quality-guard`` (or a ``--compat`` preset), records the quality guard calls noise
  are dropped first (car_engine/quality_guard.py; the IQS and relevance stages run too),
  also in car+ifd.
- ``car+ifd``: CaR where records with IFD >= 1 are dropped first (their instruction does not
  help the model predict the answer); IQS then ranks what is left. Records IFD could not
  score (e.g. no room for the answer) stay eligible on IQS alone.
- ``pre-experience``: Cherry LLM's first step (SPEC §8): the instruction-only pass on the IFD
  model, k-means on its vectors, a few records from each cluster's middle perplexity band.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from car_engine.backends import get_backend
from car_engine.config import INPUT_DIR, SCORE_CACHE, WORKERS, RunConfig, check_k
from car_engine.corpus.inputs import RecordsLike, input_file
from car_engine.errors import CorpusError
from car_engine.pipeline.duplicates import signature_stage
from car_engine.pipeline.outputs import write_outputs
from car_engine.pipeline.stages import (
    cluster_stage,
    read_params,
    read_stage,
    shard_stage,
    split_encoded,
)
from car_engine.quality_guard import needs_iqs, needs_relevance
from car_engine.rundir import clear_outputs, fingerprint, record_outputs, run_lock
from car_engine.workers import (
    EmbedWorker,
    EncodeWorker,
    IFDWorker,
    IQSWorker,
    PreWorker,
    RelevanceWorker,
)


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


def run(
    source: RecordsLike,
    out_dir: str | os.PathLike,
    config: RunConfig | None = None,
    *,
    backend: str = "local",
    workers: int = WORKERS,
    progress: bool = True,
    report: bool = True,
    score_cache: str | os.PathLike | bool = True,
) -> RunResult:
    """Run the whole selection job on ``source`` (a corpus path, folder or glob,
    ``builtin:sharegpt``, or in-memory data: a pyarrow/pandas/polars table, a ``Dataset``, a
    list of dicts, kept under ``out_dir/input/``) into ``out_dir``, resuming whatever an
    earlier run with the same parameters finished.

    Writes ``selected.jsonl`` (the picks, in final order), ``scores.parquet`` (every record:
    scores, cluster, selected or not, why), ``rejected.jsonl``, ``summary.json`` and
    ``report.html``. Returns the output paths and the counts. Raises
    :class:`~car_engine.errors.RunDirBusy` when another run holds ``out_dir``.

    ``score_cache``: where scores are kept by record content and scorer, so a rerun on a
    grown or edited corpus scores only the records it has not seen: True for
    ``out_dir/score-cache``, a folder (shareable between runs and corpora), or False for none.
    """
    cfg = config or RunConfig()
    cfg.check()
    if needs_iqs(cfg):
        cfg.iqs.check()  # the guard runs the IQS stage for --method ifd too
    run_dir = Path(out_dir)
    cache = cache_folder(run_dir, score_cache)
    with run_lock(run_dir):
        source = input_file(source, run_dir / INPUT_DIR)
        params, outputs_fp = _claim_outputs(source, run_dir, cfg)
        read = read_stage(source, run_dir, cfg, progress, params)
        if not read.info["shards"]:
            raise CorpusError(f"{source}: no valid records (rejected {read.info['rejected']} "
                              f"items; see {read.file('rejected.jsonl')})")
        if cfg.uses_car:
            check_k(cfg.k, sum(read.info["sizes"]))  # before any model loads
        # Signatures depend only on the records: before any model, resumable shard by shard.
        minhash = signature_stage(read, run_dir, cfg, progress) if cfg.near_dup else None
        runner = get_backend(backend, workers=workers, progress=progress)
        try:
            iqs, embed = None, None
            if one_pass(cfg, progress):
                encode = shard_stage(EncodeWorker, cfg.encode, read, run_dir, runner, cache)
                iqs, embed = split_encoded(encode, run_dir)
            elif needs_iqs(cfg):  # the quality guard (#22) needs the IQS for --method ifd too
                iqs = shard_stage(IQSWorker, cfg.iqs, read, run_dir, runner, cache)
            ifd = (shard_stage(IFDWorker, cfg.ifd, read, run_dir, runner, cache)
                   if cfg.uses_ifd else None)
            # the guard's relevance floor (#22): prompt and answer embedded on their own
            relevance = (shard_stage(RelevanceWorker, cfg.embed, read, run_dir, runner, cache)
                         if needs_relevance(cfg) else None)
            clusters = None
            if cfg.uses_car:
                if embed is None:
                    embed = shard_stage(EmbedWorker, cfg.embed, read, run_dir, runner, cache)
                clusters = cluster_stage(embed, read, run_dir, cfg, progress)
            pre = (shard_stage(PreWorker, cfg.ifd, read, run_dir, runner, cache)
                   if cfg.uses_pre else None)
            cached = {"folder": _named(cache, run_dir),
                      **{s.name: {"cached": s.info["cached"], "computed": s.info["computed"]}
                         for s in (iqs, ifd, embed, pre, relevance) if s is not None}}
            counts = write_outputs(read, iqs, ifd, clusters, run_dir, cfg, runner, cached,
                                   pre=pre, minhash=minhash, relevance=relevance,
                                   source=source)
        finally:
            runner.shutdown()
        record_outputs(run_dir, outputs_fp)
        if report:
            from car_engine.report import build_report

            build_report(run_dir)
    return RunResult(run_dir, counts)


def one_pass(cfg: RunConfig, progress: bool) -> bool:
    """Whether the run takes IQS and embeddings from one encoder pass (SPEC §10): a CaR
    method, ``one_pass`` on, and an IQS model whose backbone is the embedding model. When the
    models allow it but a setting does not, the run says why it makes two passes."""
    if not (cfg.uses_car and cfg.one_pass):
        return False
    from car_engine.one_pass import two_pass_reason

    reason = two_pass_reason(cfg.iqs, cfg.embed)
    if reason is not None and progress:
        print(f"car-engine: IQS and embeddings in two encoder passes: {reason}", file=sys.stderr)
    return reason is None


def cache_folder(run_dir: Path, score_cache: str | os.PathLike | bool) -> Path | None:
    """The score cache folder ``run``'s ``score_cache`` argument names (None: no cache)."""
    if score_cache is True:
        return run_dir / SCORE_CACHE
    if score_cache is False:
        return None
    return Path(score_cache)


def _named(cache: Path | None, run_dir: Path) -> str | None:
    """The cache folder as summary.json names it: relative to the run folder when inside it
    (a copied run folder then keeps byte-identical outputs), else as given."""
    if cache is None:
        return None
    try:
        return str(cache.relative_to(run_dir))
    except ValueError:
        return str(cache)


def _claim_outputs(source: str, run_dir: Path, cfg: RunConfig) -> tuple[dict[str, Any], str]:
    """The read stage's parameters and the fingerprint of this run's final files, after the
    final files of an earlier run for anything else are removed (all of them when the source
    cannot even be identified: this run writes none)."""
    try:
        params = read_params(source, cfg)
    except BaseException:
        clear_outputs(run_dir, None)
        raise
    outputs_fp = fingerprint("outputs", {"read": params, "config": asdict(cfg)}, [])
    clear_outputs(run_dir, outputs_fp)
    return params, outputs_fp


__all__ = ["RunConfig", "RunResult", "run"]
