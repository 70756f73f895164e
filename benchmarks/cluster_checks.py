"""Clustering on data it was not tuned on: `car-engine cluster` against scikit-learn's
PCA(0.95) + KMeans(k-means++, n_init=10), each a whole process, on every generator and seed of
:mod:`benchmarks.cluster_data` (and on the cached real embeddings when some exist).

Where inertia is measured: each side runs k-means in its *own* PCA space, and the two spaces
are not the same coordinates (FAISS's and scikit-learn's eigenvectors differ in sign and, for
close eigenvalues, in rotation; a sample-fitted PCA differs a little more). Each side's own
``inertia`` is therefore not comparable. Both sides' labels are scored in one shared space
instead: the reference's PCA(0.95) projection of the vectors (fitted again here, outside the
timing, with the reference's own seed: the same, deterministic fit), with each cluster's
centroid taken as the mean of its points there. Only the labels differ between the two sides,
so the ratio says which partition is better on the objective both optimise; it is the
reference's own ``inertia_`` up to its last centre update. The inertia of the same labels in
the original 384-d space is reported beside it (it adds the 5% of variance PCA leaves out,
which dilutes the ratio, hence not the check).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .cluster_data import GENERATORS, generate
from .common import row

TARGET_RATIO = 1.005  # engine inertia / reference inertia, shared space, every row
TARGET_SPEEDUP = 10  # whole process, at 50,000 x 384 and above
TARGET_FROM = 50_000
THREADS = 1  # both children alike (see CLUSTER_THREADS in bench_cluster)
# (generator, n, seed): every generator at 50,000 x 384, a second seed for the shapes that
# separated restarts from refinement in development, one larger run; --quick: small, 2 seeds.
FULL = ([(name, 50_000, 0) for name in ("many-decaying", "near-isotropic", "unequal-decaying",
                                          "few-decaying", "many-isotropic")]
        + [("near-isotropic", 50_000, 1), ("unequal-decaying", 50_000, 1),
           ("many-isotropic", 50_000, 1), ("many-decaying", 100_000, 0)])
QUICK = [(name, 4_000, seed) for name in GENERATORS for seed in (0, 1)]

_REFERENCE = """
import sys, numpy as np
from car_engine.reference.cluster import reference_cluster
vectors = np.load(sys.argv[1])
np.save(sys.argv[4], reference_cluster(vectors, int(sys.argv[2]), seed=int(sys.argv[3])).labels)
"""


def label_inertia(points: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Sum of squared distances of ``points`` to the mean of their label's points (float64)."""
    x = np.asarray(points, dtype=np.float64)
    counts = np.bincount(labels, minlength=k)
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, x)
    means = sums / np.maximum(counts, 1)[:, None]
    total = 0.0
    for start in range(0, x.shape[0], 65_536):
        block = x[start:start + 65_536] - means[labels[start:start + 65_536]]
        total += float((block * block).sum())
    return total


def shared_space(vectors: np.ndarray, seed: int) -> np.ndarray:
    """The reference's PCA(0.95) projection of ``vectors`` (where both sides are scored)."""
    from sklearn.decomposition import PCA

    return PCA(n_components=0.95, random_state=seed).fit_transform(vectors)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(THREADS)
    return env


def _timed_process(command: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of a child process run to completion."""
    before = os.times()
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=_child_env())
    wall = time.perf_counter() - start
    after = os.times()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed: {proc.stderr.strip()[-2000:]}")
    return wall, (after.children_user - before.children_user
                  + after.children_system - before.children_system)


def compare(vectors: np.ndarray, k: int, seed: int, folder: Path) -> dict[str, float]:
    """Both sides on ``vectors`` as whole processes; times and the inertia ratios."""
    from car_engine.corpus import read_table

    path = folder / "vectors.npy"
    np.save(path, vectors)
    engine_s, engine_cpu = _timed_process([
        sys.executable, "-m", "car_engine.cli", "cluster", str(path), "--out",
        str(folder / "engine.parquet"), "--k", str(k), "--seed", str(seed), "--device", "cpu"])
    ours = read_table(folder / "engine.parquet").column("cluster").to_numpy()
    reference_s, reference_cpu = _timed_process([
        sys.executable, "-c", _REFERENCE, str(path), str(k), str(seed),
        str(folder / "reference.npy")])
    theirs = np.load(folder / "reference.npy")
    shared = shared_space(vectors, seed)
    return {"engine_s": engine_s, "reference_s": reference_s, "engine_cpu_s": engine_cpu,
            "reference_cpu_s": reference_cpu, "n_components": shared.shape[1],
            "ratio": label_inertia(shared, ours, k) / label_inertia(shared, theirs, k),
            "ratio_original": label_inertia(vectors, ours, k) / label_inertia(vectors, theirs, k)}


def check_row(stage: str, vectors: np.ndarray, seed: int, **extra: object) -> dict:
    """One bench row: engine vs reference on ``vectors`` with k = int(sqrt(n / 2))."""
    n = vectors.shape[0]
    k = int(math.sqrt(n / 2))
    with tempfile.TemporaryDirectory(prefix="cluster-check-") as folder:
        got = compare(vectors, k, seed, Path(folder))
    return row(stage, n, got["engine_s"], got["reference_s"], "inertia_ratio_shared_pca",
               got["ratio"], got["ratio"] <= TARGET_RATIO,
               target_speedup=TARGET_SPEEDUP if n >= TARGET_FROM else None,
               cpu_speedup=round(got["reference_cpu_s"] / max(got["engine_cpu_s"], 1e-9), 2),
               engine_seconds=round(got["engine_s"], 2),
               reference_seconds=round(got["reference_s"], 2),
               inertia_ratio_original=round(got["ratio_original"], 5), k=k, seed=seed,
               n_components=int(got["n_components"]), threads=THREADS, whole_process=True,
               **extra)


def cached_real() -> np.ndarray | None:
    """The largest set of real embeddings already cached by bench_cluster (nothing is
    embedded here: on two busy cores that takes an hour), or None."""
    from car_engine.models.registry import cache_dir

    best: np.ndarray | None = None
    for folder in sorted((cache_dir() / "bench").glob("sharegpt-*")):
        parts = [np.load(p) for p in sorted(folder.glob("part-*.npy"))]
        if parts and (best is None or sum(len(p) for p in parts) > best.shape[0]):
            best = np.concatenate(parts)
    return best


def checks(quick: bool = False, n: int | None = None, only: str | None = None
           ) -> Iterator[tuple[str, np.ndarray, int, dict]]:
    """(stage, vectors, seed, extra row fields) of every check of FULL (QUICK with ``quick``;
    every generator's seed-0 check at ``n`` points when ``n`` is given; only the stages
    containing ``only`` when given), then one on the cached real embeddings if any."""
    for name, size, seed in QUICK if quick else FULL:
        if n is not None and seed != 0:
            continue  # a sized run (a smoke run at --n 16): every generator once
        size = n or size
        stage = f"cluster-{name}-{size // 1000}k-s{seed}" if size >= 1000 else \
            f"cluster-{name}-{size}-s{seed}"
        if only is None or only in stage:
            yield stage, generate(name, size, seed=seed), seed, {
                "true_clusters": GENERATORS[name].true_clusters(size)}
    real = cached_real()
    if real is not None and (only is None or only in "cluster-real"):
        real = real[:n]
        yield f"cluster-real-{real.shape[0]}", real, 0, {}


def run(quick: bool = False, n: int | None = None, only: str | None = None) -> list[dict]:
    """A row per check of :func:`checks`."""
    return [check_row(stage, vectors, seed, **extra)
            for stage, vectors, seed, extra in checks(quick, n, only)]


if __name__ == "__main__":
    import argparse
    import json

    from .common import format_table

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the small QUICK checks")
    parser.add_argument("--n", type=int, default=None, help="points per check")
    parser.add_argument("--only", default=None, help="only the stages containing this text")
    args = parser.parse_args()
    rows = []
    for stage, vectors, seed, extra in checks(args.quick, args.n, args.only):
        rows.append(check_row(stage, vectors, seed, **extra))
        print(json.dumps(rows[-1], default=float), flush=True)  # a long run shows as it goes
    print(format_table(rows))
