"""Native selection routines vs the best plain numpy way, on 10M elements, in one run.

    python -m benchmarks.bench_select [--quick] [--n N]
"""

from __future__ import annotations

import numpy as np

from car_engine import native
from car_engine.reference import select as ref

from .common import bench_main, best_time, row

TARGETS = {"select-topk": 10.0, "select-topk-per-cluster": 20.0, "select-dedup": 3.0}


def run(quick: bool = False, n: int | None = None) -> list[dict]:
    """Time each native routine and its numpy/heapq baseline on the same data; check equality."""
    n = n or (1_000_000 if quick else 10_000_000)
    rng = np.random.default_rng(0)
    scores = rng.random(n)
    clusters = max(1, int(np.sqrt(n / 2)))  # 10M -> 2236 clusters, CaR's k
    labels = rng.integers(0, clusters, n).astype(np.int64)
    unique = rng.integers(0, 2**63, n // 2, dtype=np.int64).astype(np.uint64)
    hashes = np.concatenate([unique, unique[rng.permutation(unique.size)]])
    shards = []
    for lo in range(0, n, n // 16 or 1):
        part = scores[lo:lo + (n // 16 or 1)]
        top = native.topk(part, 1000)
        shards.append((part[top], top + lo))

    cases = [
        ("select-topk", "top-1000 vs argpartition + sort",
         lambda: native.topk(scores, 1000), lambda: ref.topk(scores, 1000)),
        ("select-topk-per-cluster", f"top-1 of {clusters} clusters vs lexsort",
         lambda: native.topk_per_cluster(scores, labels, 1),
         lambda: ref.topk_per_cluster(scores, labels, 1)),
        ("select-dedup", "dedup of n hashes (half repeated) vs np.unique",
         lambda: native.dedup(hashes), lambda: ref.dedup(hashes)),
        ("select-merge", f"merge of {len(shards)} shard top-1000 lists vs heapq.merge",
         lambda: native.merge_topk(shards, 1000)[1], lambda: ref.merge_topk(shards, 1000)[1]),
    ]
    rows = []
    for stage, what, engine, reference in cases:
        engine_s, got = best_time(engine)
        reference_s, want = best_time(reference, repeat=1 if not quick else 2)
        same = bool(np.array_equal(got, want))
        target = TARGETS.get(stage)
        rows.append(row(stage, n if stage != "select-merge" else 1000 * len(shards),
                        engine_s, reference_s, "identical result", float(same), same,
                        what=what, engine_seconds=round(engine_s, 4),
                        reference_seconds=round(reference_s, 4),
                        target_speedup=target or ""))
    return rows


def main() -> None:
    """Command line: run the benchmark and print its table."""
    bench_main(__doc__, run, quick_help="1M elements instead of 10M", n_help="number of elements")


if __name__ == "__main__":
    main()
