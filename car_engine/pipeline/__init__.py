"""`car-engine run`: corpus -> scores/embeddings -> clusters -> selection -> output + report.

Each stage writes shards under ``RUN_DIR/stages/<stage>/`` and records them in a manifest
(see rundir.py); running the same command again skips what is done. The run folder is
locked for the whole run, so two runs never interleave in one folder. Final files of an
earlier run for another input or other parameters are removed before anything is read, so a
run that fails never leaves outputs that describe something else.

Methods (the rules live in car_engine.select):
- ``car``: IQS ranks; the top n1 plus the top n2 of every embedding cluster (SPEC §4).
- ``ifd``: drop IFD >= 1, keep the top ``ifd_frac`` of the input by IFD (SPEC §2).
- ``car+ifd``: CaR where records with IFD >= 1 are dropped first (their instruction does not
  help the model predict the answer); IQS then ranks what is left. Records IFD could not
  score (e.g. no room for the answer) stay eligible on IQS alone.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from car_engine.backends import get_backend
from car_engine.config import WORKERS, RunConfig, check_k
from car_engine.errors import CorpusError
from car_engine.pipeline.duplicates import signature_stage
from car_engine.pipeline.outputs import write_outputs
from car_engine.pipeline.stages import cluster_stage, read_params, read_stage, shard_stage
from car_engine.rundir import clear_outputs, fingerprint, record_outputs, run_lock
from car_engine.workers import EmbedWorker, IFDWorker, IQSWorker


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
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: RunConfig | None = None,
    *,
    backend: str = "local",
    workers: int = WORKERS,
    progress: bool = True,
    report: bool = True,
) -> RunResult:
    """Run the whole selection job on ``source`` (a corpus path or ``builtin:sharegpt``) into
    ``out_dir``, resuming whatever an earlier run with the same parameters finished.

    Writes ``selected.jsonl`` (the picks, in final order), ``scores.parquet`` (every record:
    scores, cluster, selected or not, why), ``rejected.jsonl``, ``summary.json`` and
    ``report.html``. Returns the output paths and the counts. Raises
    :class:`~car_engine.errors.RunDirBusy` when another run holds ``out_dir``.
    """
    cfg = config or RunConfig()
    cfg.check()
    source = str(source)
    run_dir = Path(out_dir)
    with run_lock(run_dir):
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
            iqs = shard_stage(IQSWorker, cfg.iqs, read, run_dir, runner) if cfg.uses_car else None
            ifd = shard_stage(IFDWorker, cfg.ifd, read, run_dir, runner) if cfg.uses_ifd else None
            clusters = None
            if cfg.uses_car:
                embed = shard_stage(EmbedWorker, cfg.embed, read, run_dir, runner)
                clusters = cluster_stage(embed, read, run_dir, cfg, progress)
            counts = write_outputs(read, iqs, ifd, clusters, run_dir, cfg, runner, minhash)
        finally:
            runner.shutdown()
        record_outputs(run_dir, outputs_fp)
        if report:
            from car_engine.report import build_report

            build_report(run_dir)
    return RunResult(run_dir, counts)


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
