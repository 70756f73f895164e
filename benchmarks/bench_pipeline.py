"""Pipeline scale: the read stage's peak memory at 10k vs 100k records (it streams, so it
should not grow), and CaR selection of a 1,000,000-record corpus given scores and embeddings.

    python -m benchmarks.bench_pipeline [--quick]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import bench_parser, peak_rss_mb

_READ_STAGE = """
import resource, sys
from pathlib import Path
from car_engine.pipeline import RunConfig, read_stage
stage = read_stage(sys.argv[1], Path(sys.argv[2]), RunConfig(shard_size=2000), progress=False)
print(sum(stage.info["sizes"]), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def make_corpus(path: Path, n: int) -> Path:
    """n records made from real ShareGPT pairs (repeated with fresh ids), as JSONL."""
    from car_engine.corpus import load_corpus

    base = load_corpus("builtin:sharegpt", limit=2000).records.to_pylist()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            r = base[i % len(base)]
            f.write(json.dumps({"id": f"r{i}", "instruction": r["instruction"],
                                "input": r["input"], "output": r["output"]}) + "\n")
    return path


def read_stage_memory(n: int, folder: Path) -> tuple[int, float, float, float]:
    """(records, peak RSS MB, seconds, corpus MB) of the read stage in a fresh process."""
    corpus = make_corpus(folder / f"corpus-{n}.jsonl", n)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _READ_STAGE, str(corpus), str(folder / f"run-{n}")],
                         capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    records, peak = out.stdout.split()
    return int(records), float(peak), seconds, corpus.stat().st_size / 2**20


def select_million(n: int) -> dict:
    """Cluster n synthetic 384-d embeddings (k = sqrt(n/2)) and run CaR selection with dedup."""
    from car_engine.cluster import cluster
    from car_engine.select import select_car

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((2000, 384)).astype(np.float32)
    vectors = centers[rng.integers(0, 2000, n)] + 0.6 * rng.standard_normal((n, 384),
                                                                            dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = rng.standard_normal(n)
    hashes = rng.integers(0, n // 2 * 3, n).astype(np.uint64)  # ~1/3 duplicate content
    start = time.perf_counter()
    result = cluster(vectors, seed=42, progress=False)
    cluster_s = time.perf_counter() - start
    start = time.perf_counter()
    picks = select_car(scores, result.labels, n1=1000, n2=1, hashes=hashes)
    select_s = time.perf_counter() - start
    return {"records": n, "k": int(result.centroids.shape[0]), "cluster_s": round(cluster_s, 1),
            "select_s": round(select_s, 2), "selected": picks.counts["selected"],
            "peak_rss_mb": round(peak_rss_mb())}


def run(quick: bool = False, n: int | None = None) -> dict:
    """Both measurements; quick uses 2k/20k records and a 100k-record selection."""
    small, large = (2_000, 20_000) if quick else (10_000, 100_000)
    with tempfile.TemporaryDirectory() as tmp:
        memory = [read_stage_memory(size, Path(tmp)) for size in (small, large)]
    return {"read_stage": [{"records": r, "peak_rss_mb": round(p), "seconds": round(s, 1),
                            "corpus_mb": round(c)} for r, p, s, c in memory],
            "selection": select_million(n or (100_000 if quick else 1_000_000))}


def main() -> None:
    """Command line: run the benchmark and print its measurements as JSON."""
    args = bench_parser(__doc__, quick_help="a small corpus",
                        n_help="records for the selection run").parse_args()
    print(json.dumps(run(quick=args.quick, n=args.n), indent=1))


if __name__ == "__main__":
    main()
