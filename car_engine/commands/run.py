"""`car-engine run`: the whole job, resumable: read, score, embed, cluster, select, report."""

from __future__ import annotations

import argparse
from pathlib import Path

from car_engine.commands import options
from car_engine.config import BACKENDS, METHODS, SCORE_CACHE, WORKERS, RunConfig
from car_engine.dedup_params import NearDupParams
from car_engine.errors import OutputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="the whole job: scores, clusters, selection, report (resumable)",
        description="Read INPUT, score it (IQS and/or IFD), embed and cluster it, select, and "
        "write RUN_DIR/selected.jsonl, scores.parquet, rejected.jsonl and report.html. Running "
        "the same command again resumes: finished shards are skipped; a changed parameter "
        "reruns its stage and those after it. Two runs never share a RUN_DIR at once.")
    p.add_argument("input", help=options.CORPUS_HELP)
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="output folder")
    p.add_argument("--method", choices=METHODS, default=RunConfig.method,
                   help="car (IQS + clusters), ifd, car+ifd (CaR after dropping IFD >= 1), or "
                   "pre-experience (Cherry LLM's first step: k-means on instruction vectors, "
                   "a few records of middle perplexity per cluster)")
    options.add_selection_flags(p)
    p.add_argument("--no-quality-guard", action="store_false", dest="quality_guard",
                   default=RunConfig.quality_guard,
                   help="ifd, car+ifd: rank by IFD alone, as the paper does (by default records "
                   "the quality guard calls noise are dropped first; a --compat preset implies "
                   "this flag)")
    p.add_argument("--no-relevance-floor", action="store_false", dest="relevance_floor",
                   default=RunConfig.relevance_floor,
                   help="keep the quality guard but drop its relevance bound (the answer's "
                   "similarity to its own instruction, which stops answers pasted to the wrong "
                   "prompt): it also drops context-less follow-up turns such as 'continue', "
                   "and judges non-English Latin-script pairs with an English embedder "
                   "(text mostly in other scripts is never judged); this flag keeps them")
    options.add_limit(p)
    p.add_argument("--strict", action="store_true", help="stop at the first bad item")
    options.add_fields(p)
    options.add_output_format(p)
    p.add_argument("--shard-size", type=int, default=RunConfig.shard_size,
                   help=f"records per shard (default {RunConfig.shard_size})")
    p.add_argument("--backend", choices=BACKENDS, default="local",
                   help="local, or ray (set RAY_ADDRESS to use an existing cluster)")
    p.add_argument("--workers", type=int, default=WORKERS,
                   help=f"ray: actors per scoring stage (default {WORKERS})")
    options.add_quiet(p)
    options.add_device(p)
    p.add_argument("--exact", action="store_true",
                   help="fp32 on every stage and device, whatever --device and auto would pick: "
                   "bit-for-bit the same output on every run of the same machine kind")
    p.add_argument("--two-pass", action="store_false", dest="one_pass",
                   default=RunConfig.one_pass,
                   help="car, car+ifd: score IQS in an encoder pass of its own on ONNX Runtime "
                   "(by default, when the IQS backbone is the embedding model, one forward per "
                   "text gives both, plus an IQS forward at 512 tokens for a text longer than "
                   "the embedding's 256; the scores are the same)")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--score-cache", metavar="DIR",
                       help=f"keep scores by record content and scorer in DIR, so a rerun on a "
                       f"grown or edited corpus scores only what it has not seen; shareable "
                       f"between runs and corpora (default RUN_DIR/{SCORE_CACHE})")
    cache.add_argument("--no-score-cache", action="store_true",
                       help="score every record, keeping nothing for later runs")
    options.add_duplicate_flags(p.add_argument_group("duplicates beyond exact content"))
    options.add_cluster_flags(p.add_argument_group("clustering"))
    options.add_pre_flags(p.add_argument_group("pre-experience"))
    models = p.add_argument_group("models")
    options.add_iqs_flags(models)
    options.add_embed_flags(models)
    options.add_ifd_flags(models)
    options.add_turn_flags(models)
    p.set_defaults(func=main)


def config_from(args: argparse.Namespace) -> RunConfig:
    """The RunConfig the flags describe (checked before any model loads)."""
    cfg = RunConfig(
        method=args.method, n1=args.n1, n2=args.n2, strategy=args.strategy,
        ifd_frac=args.ifd_frac, keep_equal_one=args.keep_equal_one, limit=args.limit,
        strict=args.strict, dedup=not args.no_dedup, shard_size=args.shard_size, k=args.k,
        pca_var=args.pca_var, pca_dim=args.pca_dim, seed=args.seed, n_init=args.n_init,
        refine_rounds=args.refine_rounds,
        iqs=options.iqs_params(args), ifd=options.ifd_params(args),
        embed=options.embed_params(args), pre=options.pre_params(args),
        device=options.device_of(args), near_dup=args.near_dup,
        near_dup_threshold=args.near_dup_threshold, semdedup_eps=args.semdedup_eps,
        near=NearDupParams(seed=args.seed), exact=args.exact, fields=args.fields,
        output_format=args.output_format, quality_guard=args.quality_guard,
        relevance_floor=args.relevance_floor, one_pass=args.one_pass,
    )
    cfg.check()
    return cfg


def check_run_dir(out: str) -> None:
    """--out must be a folder or become one: a file at it (or above it) is one line, exit 4."""
    path = Path(out)
    for place in (path, *path.parents):
        if place.exists():
            if place == path and not place.is_dir():
                raise OutputError(f"--out {out}: is a file, and the run folder must be a folder")
            if not place.is_dir():
                raise OutputError(f"--out {out}: {place} is a file, so the folder cannot be made")
            return


def main(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    check_run_dir(args.out)
    if args.quiet:
        options.silence_hf_progress()
    from car_engine.pipeline import run

    score_cache = False if args.no_score_cache else (args.score_cache or True)
    result = run(args.input, args.out, cfg, backend=args.backend, workers=args.workers,
                 progress=not args.quiet, report=not args.no_report, score_cache=score_cache)
    counts = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in result.counts.items())
    print(f"selected {result.counts['selected']} records -> {result.selected_path}\n{counts}")
    if not args.no_report:
        print(f"report: {result.report_path}")
    return 0
