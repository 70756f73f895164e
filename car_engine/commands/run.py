"""`car-engine run`: the whole job, resumable: read, score, embed, cluster, select, report."""

from __future__ import annotations

import argparse

from car_engine.backends import BACKENDS
from car_engine.pipeline import METHODS, RunConfig, run
from car_engine.select import STRATEGIES
from car_engine.stages import EmbedParams, IFDParams, IQSParams


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="the whole job: scores, clusters, selection, report (resumable)",
        description="Read INPUT, score it (IQS and/or IFD), embed and cluster it, select, and "
        "write RUN_DIR/selected.jsonl, scores.parquet, rejected.jsonl and report.html. Running "
        "the same command again resumes: finished shards are skipped; a changed parameter "
        "reruns its stage and those after it.")
    p.add_argument("input", help="corpus (.json/.jsonl/.parquet[.gz]) or builtin:sharegpt")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="output folder")
    p.add_argument("--method", choices=METHODS, default="car",
                   help="car (IQS + clusters), ifd, or car+ifd (CaR after dropping IFD >= 1)")
    p.add_argument("--n1", type=int, default=1000, help="CaR: top records by IQS")
    p.add_argument("--n2", type=int, default=1, help="CaR: top records per cluster")
    p.add_argument("--strategy", choices=STRATEGIES, default="n1+k*n2")
    p.add_argument("--ifd-frac", type=float, default=0.05,
                   help="IFD: fraction of the input to keep (default 0.05)")
    p.add_argument("--keep-equal-one", action="store_true", help="IFD: drop only IFD > 1")
    p.add_argument("--limit", type=int, help="read only the first N items")
    p.add_argument("--strict", action="store_true", help="stop at the first bad item")
    p.add_argument("--no-dedup", action="store_true", help="keep exact-duplicate content")
    p.add_argument("--shard-size", type=int, default=2000, help="records per shard")
    p.add_argument("--backend", choices=BACKENDS, default="local",
                   help="local, or ray (set RAY_ADDRESS to use an existing cluster)")
    p.add_argument("--workers", type=int, default=2, help="ray: actors per scoring stage")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    c = p.add_argument_group("clustering")
    c.add_argument("--k", type=int, help="clusters (default int(sqrt(n/2)))")
    c.add_argument("--pca-var", type=float, default=0.95, help="PCA variance kept")
    c.add_argument("--pca-dim", type=int, help="PCA components (instead of --pca-var)")
    c.add_argument("--seed", type=int, default=42)
    m = p.add_argument_group("models")
    m.add_argument("--iqs-model", default="default", help="IQS model folder")
    m.add_argument("--iqs-runtime", choices=("onnx", "torch"), default="onnx")
    m.add_argument("--iqs-precision", choices=("fp32", "fp16", "int8"), default="fp32")
    m.add_argument("--embed-model", default="default", help="sentence-transformers folder")
    m.add_argument("--embed-dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="embedding precision (bf16: ~1.8x faster than fp32 with AVX512-BF16)")
    m.add_argument("--embed-compile", action="store_true",
                   help="torch.compile the embedder's transformers forward (~15 s per worker), "
                   "for GPUs and non-BERT models; a BERT model on CPU is faster without it")
    m.add_argument("--ifd-model", default="default", help="causal LM folder")
    m.add_argument("--template", choices=("none", "alpaca", "vicuna", "chat"), default="none")
    m.add_argument("--compat", choices=("superfiltering", "cherry"))
    m.add_argument("--max-length", type=int, default=512)
    m.add_argument("--ifd-dtype", choices=("fp32", "bf16"), default="fp32")
    m.add_argument("--batch-tokens", type=int, default=8192)
    p.set_defaults(func=main)


def config_from(args: argparse.Namespace) -> RunConfig:
    """The RunConfig the flags describe."""
    return RunConfig(
        method=args.method, n1=args.n1, n2=args.n2, strategy=args.strategy,
        ifd_frac=args.ifd_frac, keep_equal_one=args.keep_equal_one, limit=args.limit,
        strict=args.strict, dedup=not args.no_dedup, shard_size=args.shard_size, k=args.k,
        pca_var=args.pca_var, pca_dim=args.pca_dim, seed=args.seed,
        iqs=IQSParams(model=args.iqs_model, runtime=args.iqs_runtime,
                      precision=args.iqs_precision),
        ifd=IFDParams(model=args.ifd_model, template=args.template, compat=args.compat,
                      max_length=args.max_length, dtype=args.ifd_dtype,
                      batch_tokens=args.batch_tokens),
        embed=EmbedParams(model=args.embed_model, dtype=args.embed_dtype,
                          compile=args.embed_compile),
    )


def main(args: argparse.Namespace) -> int:
    result = run(args.input, args.out, config_from(args), backend=args.backend,
                 workers=args.workers, progress=not args.quiet, report=not args.no_report)
    counts = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in result.counts.items())
    print(f"selected {result.counts['selected']} records -> {result.selected_path}\n{counts}")
    if not args.no_report:
        print(f"report: {result.report_path}")
    return 0
