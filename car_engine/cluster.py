"""PCA + k-means on FAISS (SPEC §3): the "clustering" half of CaR.

PCA keeps the fewest components reaching ``pca_var`` of the variance (or exactly ``pca_dim``).
k-means is seeded with greedy k-means++ (scikit-learn's flavour: a few candidates per step, keep
the one that lowers the potential most), restarted ``n_init`` times with a short Lloyd run each
on a sample; the best start is run to convergence on all points with FAISS Lloyd iterations,
then improved by split/merge swaps (car_engine/cluster_refine.py), which escape the local
optima restarts only escape by luck. For large n the fit uses a sample of
``max_points_per_centroid * k`` points, and every point is then assigned in batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from car_engine.cluster_refine import REFINE_TOL, refine
from car_engine.config import (
    KMEANS_REFINE_ROUNDS,
    KMEANS_RESTARTS,
    ClusterParams,
    parse_device,
)
from car_engine.environment import check_one_build
from car_engine.errors import DeviceError, UsageError

check_one_build("faiss")  # faiss-cpu and faiss-gpu-* both installed: which one runs is luck

BATCH = 65_536  # rows per transform / assignment batch: a few tens of MB at d = 384
PROBE_ITER = 5  # Lloyd iterations given to every restart before the best one is picked
# The restarts only have to rank the starts, so they run short, on a sample: 5 steps on 32
# points per centroid picked starts as good as 10 on 64 (mean inertia over 6 seeds on 8,000
# and 20,000 real embeddings) for 15% less k-means time; probing on all points cost 40% more.
PROBE_POINTS_PER_CENTROID = 32
CHECK_EVERY = 5  # Lloyd iterations between convergence checks
PCA_POINTS_PER_DIM = 1000  # as FAISS's own PCAMatrix.max_points_per_d
# k-means++ is O(n k d) and memory-bound; seeding from 16 k sampled points instead of all 10,000
# real embeddings (k = 70) made clustering 1.8x faster at equal inertia (Lloyd then uses all).
INIT_POINTS_PER_CENTROID = 16
ALL_GPUS = -1  # faiss_gpu(): every GPU FAISS sees (auto), else one GPU number
_GPU_RESOURCES: dict[int, Any] = {}  # one StandardGpuResources per GPU, kept alive


def faiss_gpu(device: str | None) -> int | None:
    """Where FAISS runs for a --device value: None (the CPU), a GPU number, or ALL_GPUS
    (``auto`` with GPUs). ``cuda``/``cuda:N`` that FAISS cannot use is a DeviceError."""
    kind, index = parse_device(device)
    gpus = faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
    if kind == "cpu" or (kind == "auto" and gpus == 0):
        return None
    if kind == "auto":
        return ALL_GPUS
    if not hasattr(faiss, "StandardGpuResources"):
        raise DeviceError(f"--device {device}: this FAISS ({faiss.__version__}) is a CPU-only "
                          "build (pip install 'car-engine[gpu]', which installs faiss-gpu-cu12 "
                          "in place of faiss-cpu)")
    if (index or 0) >= gpus:
        raise DeviceError(f"--device {device}: FAISS sees {gpus} GPU(s)")
    return index or 0


def _torch_gpu(gpu: int | None) -> Any:
    """The torch device for the PCA and seeding when FAISS is on a GPU torch can use too."""
    if gpu is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.device("cuda", 0 if gpu == ALL_GPUS else gpu)


@dataclass
class PCA:
    """A fitted PCA: ``transform(x) = (x - mean) @ components.T``."""

    mean: np.ndarray  # float32 [d_in]
    components: np.ndarray  # float32 [n_components, d_in], by decreasing variance
    eigenvalues: np.ndarray  # float64 [d_in]: the full spectrum, decreasing

    @property
    def n_components(self) -> int:
        """Dimensions kept."""
        return self.components.shape[0]

    @property
    def explained_variance(self) -> float:
        """Fraction of the total variance the kept components explain."""
        total = self.eigenvalues.sum()
        return float(self.eigenvalues[: self.n_components].sum() / total) if total > 0 else 1.0

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Project float vectors [n, d_in] (an array or a memmap) to float32 [n, n_components]."""
        if vectors.ndim != 2 or vectors.shape[1] != self.mean.shape[0]:
            raise ValueError(f"vectors of shape {vectors.shape} do not fit a PCA "
                             f"from {self.mean.shape[0]} dimensions")
        out = np.empty((vectors.shape[0], self.n_components), dtype=np.float32)
        # (x - mean) @ C.T as x @ C.T - mean @ C.T: the centring moves to the narrower output
        # and the block needs no centred copy (a third of the transform time at d = 384).
        shift = self.mean @ self.components.T
        for start in range(0, vectors.shape[0], BATCH):
            block = np.asarray(vectors[start:start + BATCH], dtype=np.float32)
            np.matmul(block, self.components.T, out=out[start:start + BATCH])
            out[start:start + BATCH] -= shift
        return out


def components_for(eigenvalues: np.ndarray, pca_var: float) -> int:
    """The fewest leading components whose variance is >= ``pca_var`` of the total."""
    total = eigenvalues.sum()
    if total <= 0:
        return 1
    cumulative = np.cumsum(eigenvalues) / total
    reaching = int(np.searchsorted(cumulative, pca_var, side="left"))  # first index >= pca_var
    return min(len(eigenvalues), reaching + 1)


def fit_pca(vectors: np.ndarray, *, pca_var: float = ClusterParams.pca_var,
            pca_dim: int | None = ClusterParams.pca_dim, seed: int = ClusterParams.seed,
            torch_device: Any = None) -> PCA:
    """Fit a FAISS PCA (or, given ``torch_device``, the torch one there) and keep ``pca_dim``
    components, or the fewest reaching ``pca_var``. Beyond PCA_POINTS_PER_DIM * d vectors the
    covariance comes from a seeded sample."""
    n, d = vectors.shape
    if pca_dim is not None and not 1 <= pca_dim <= d:
        raise UsageError(f"--pca-dim must be in 1..{d}, got {pca_dim}")
    if not 0 < pca_var <= 1:
        raise UsageError(f"--pca-var must be in (0, 1], got {pca_var}")
    if n > PCA_POINTS_PER_DIM * d:  # sample first, so a memmapped input is never read whole
        rows = np.sort(np.random.default_rng(seed).choice(n, PCA_POINTS_PER_DIM * d, replace=False))
        vectors = vectors[rows]
    rank = min(d, vectors.shape[0])  # fewer points than dimensions span only n directions
    if torch_device is not None:
        from car_engine import cluster_torch

        mean, eigenvalues, rotation = cluster_torch.pca_eigen(vectors, torch_device)
        keep = pca_dim if pca_dim is not None else components_for(eigenvalues, pca_var)
        keep = min(keep, rank)
        return PCA(mean, np.ascontiguousarray(rotation[:keep]), eigenvalues)
    matrix = faiss.PCAMatrix(d, rank, 0, False)
    matrix.train(np.ascontiguousarray(vectors, dtype=np.float32))
    eigenvalues = np.clip(faiss.vector_to_array(matrix.eigenvalues).astype(np.float64), 0, None)
    rotation = faiss.vector_to_array(matrix.PCAMat).reshape(-1, d)[:rank]
    keep = pca_dim if pca_dim is not None else components_for(eigenvalues, pca_var)
    keep = min(keep, rank)
    mean = faiss.vector_to_array(matrix.mean).astype(np.float32)
    return PCA(mean, np.ascontiguousarray(rotation[:keep]), eigenvalues)


def _flat_index(d: int, gpu: int | None = None) -> faiss.Index:
    """An exact L2 index: on the CPU (``gpu`` None), on every GPU (ALL_GPUS), or on one."""
    index: faiss.Index = faiss.IndexFlatL2(d)
    if gpu == ALL_GPUS:
        index = faiss.index_cpu_to_all_gpus(index)
    elif gpu is not None:
        if gpu not in _GPU_RESOURCES:
            _GPU_RESOURCES[gpu] = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(_GPU_RESOURCES[gpu], gpu, index)
    return index


def _squared_distances(points: np.ndarray, norms: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Squared L2 distances [len(others), len(points)], clipped at 0 against rounding."""
    d = (others * others).sum(axis=1)[:, None] + norms[None, :] - 2.0 * (others @ points.T)
    return np.maximum(d, 0.0, out=d)


def kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeds [k, d]: each step samples 2 + ln(k) candidates with probability
    proportional to D(x)^2 and keeps the one that lowers the total potential most."""
    with threadpool_limits(1, user_api="blas"):
        return _kmeans_plus_plus(points, k, rng)


def _kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    # Single-threaded BLAS (see the caller): these [trials, d] x [d, n] products are memory-bound,
    # and waking a BLAS thread pool for each of the k steps cost 4-10x on a busy machine.
    n = points.shape[0]
    trials = 2 + int(math.log(k))
    norms = (points * points).sum(axis=1)
    centers = np.empty((k, points.shape[1]), dtype=np.float32)
    first = int(rng.integers(n))
    centers[0] = points[first]
    closest = _squared_distances(points, norms, points[first:first + 1])[0]
    potential = closest.sum(dtype=np.float64)
    for c in range(1, k):
        cumulative = np.cumsum(closest, dtype=np.float64)
        candidates = np.searchsorted(cumulative, rng.random(trials) * potential)
        candidates = np.minimum(candidates, n - 1)
        distances = _squared_distances(points, norms, points[candidates])
        np.minimum(distances, closest[None, :], out=distances)
        potentials = distances.sum(axis=1, dtype=np.float64)
        best = int(np.argmin(potentials))
        closest, potential = distances[best], potentials[best]
        centers[c] = points[candidates[best]]
    return centers


def lloyd(points: np.ndarray, centroids: np.ndarray, iterations: int, *, seed: int,
          index: faiss.Index) -> tuple[np.ndarray, list[float]]:
    """``iterations`` FAISS Lloyd steps from ``centroids``; returns the new centroids and the
    objective (sum of squared distances) of every iteration's assignment, the first being
    that of ``centroids`` themselves."""
    n, d = points.shape
    k = centroids.shape[0]
    clus = faiss.Clustering(d, k)
    clus.niter = iterations
    clus.seed = seed
    clus.max_points_per_centroid = n // k + 1  # the caller samples; FAISS must not again
    clus.min_points_per_centroid = 1
    faiss.copy_array_to_vector(np.ascontiguousarray(centroids).ravel(), clus.centroids)
    index.reset()
    clus.train(points, index)
    # faiss's stubs call this a list; it is a SWIG ClusteringIterationStatsVector (no len/[i])
    stats: Any = clus.iteration_stats
    objectives = [float(stats.at(i).obj) for i in range(stats.size())]
    return faiss.vector_to_array(clus.centroids).reshape(k, d), objectives


def assign(points: np.ndarray, centroids: np.ndarray, *, progress: bool = False,
           gpu: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (int64 [n]) and its squared L2 distance (float32 [n]), in batches."""
    index = _flat_index(centroids.shape[1], gpu)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    labels = np.empty(points.shape[0], dtype=np.int64)
    distances = np.empty(points.shape[0], dtype=np.float32)
    for start in tqdm(range(0, points.shape[0], BATCH), desc="assign", unit="batch",
                      disable=not progress):
        found, nearest = index.search(np.ascontiguousarray(points[start:start + BATCH]), 1)
        labels[start:start + BATCH] = nearest[:, 0]
        distances[start:start + BATCH] = np.maximum(found[:, 0], 0.0)
    return labels, distances


def _sample(points: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` rows of ``points`` drawn without replacement, in their order (all if fewer)."""
    if size >= points.shape[0]:
        return points
    return np.ascontiguousarray(points[np.sort(rng.choice(points.shape[0], size, replace=False))])


def kmeans(points: np.ndarray, k: int, *, seed: int = ClusterParams.seed,
           n_init: int = KMEANS_RESTARTS, max_iter: int = 300,
           tol: float = 1e-4, max_points_per_centroid: int = 256, progress: bool = False,
           gpu: int | None = None, refine_rounds: int = KMEANS_REFINE_ROUNDS,
           refine_tol: float = REFINE_TOL) -> np.ndarray:
    """Centroids [k, d] for float32 ``points``: ``n_init`` k-means++ starts with a short Lloyd
    run each on a sample of PROBE_POINTS_PER_CENTROID * k points, the best one then iterated on
    all points until the objective improves by less than ``tol`` (relative) over CHECK_EVERY
    iterations, or ``max_iter`` iterations; before that, up to ``refine_rounds`` rounds of
    split/merge swaps, each converged to ``refine_tol`` and kept only if it lowers the
    objective."""
    d = points.shape[1]
    rng = np.random.default_rng(seed)
    points = _sample(points, k * max_points_per_centroid, rng)
    init_points = _sample(points, INIT_POINTS_PER_CENTROID * k, rng)
    probe_points = _sample(points, PROBE_POINTS_PER_CENTROID * k, rng)
    index = _flat_index(d, gpu)
    on_torch = _torch_gpu(gpu)
    bar = tqdm(total=n_init * PROBE_ITER + max_iter, desc="k-means", unit="iter",
               disable=not progress)
    best: np.ndarray | None = None
    best_objective = math.inf
    for _ in range(n_init):
        if on_torch is not None:
            from car_engine import cluster_torch

            start = cluster_torch.kmeans_plus_plus(init_points, k, rng, on_torch)
        else:
            start = kmeans_plus_plus(init_points, k, rng)
        centroids, objectives = lloyd(probe_points, start, PROBE_ITER, seed=seed, index=index)
        objective = objectives[-1]
        bar.update(PROBE_ITER)
        if objective < best_objective:
            best, best_objective = centroids, objective
    assert best is not None, "no k-means start had a finite objective (or n_init < 1)"

    def converge(on: np.ndarray, start: np.ndarray, tol: float = tol
                 ) -> tuple[np.ndarray, float]:
        return _converge(on, start, max_iter=max_iter, tol=tol, seed=seed, index=index, bar=bar)

    def search_converge(on: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, float]:
        return converge(on, start, max(tol, refine_tol))

    def nearest2(centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        index.reset()
        index.add(np.ascontiguousarray(centroids, dtype=np.float32))
        return index.search(points, min(2, k))

    if refine_rounds > 0 and k > 1:
        # The search only has to rank swaps: it runs on loosely converged solutions, and the
        # one it ends on is converged to ``tol`` after it.
        best, objective = search_converge(points, best)
        best = refine(points, best, objective, converge=search_converge, nearest2=nearest2,
                      rng=rng, rounds=refine_rounds)
    best, _ = converge(points, best)
    bar.close()
    return best


def _converge(points: np.ndarray, centroids: np.ndarray, *, max_iter: int, tol: float,
              seed: int, index: faiss.Index, bar: Any) -> tuple[np.ndarray, float]:
    """Lloyd from ``centroids`` until the objective improves by less than ``tol`` (relative)
    over CHECK_EVERY iterations, or ``max_iter`` iterations; (centroids, last objective)."""
    previous = math.inf
    done = 0
    while done < max_iter:
        step = min(CHECK_EVERY, max_iter - done)
        centroids, objectives = lloyd(points, centroids, step, seed=seed, index=index)
        objective = objectives[-1]
        # The first block is judged on its own first assignment (the start's objective):
        # waiting for a second block made every convergence at least 2 * CHECK_EVERY steps,
        # which most of the refinement's reconvergences did not need.
        improved = (objectives[0] if done == 0 else previous) - objective
        done += step
        bar.update(step)
        previous = objective
        if improved <= tol * objective:
            break
    return centroids, previous


@dataclass
class ClusterResult:
    """Clusters of n vectors. ``distances`` are *squared* L2 distances to the own centroid, in
    PCA space; ``inertia`` is their sum (what scikit-learn calls ``inertia_``)."""

    labels: np.ndarray  # int64 [n]
    distances: np.ndarray  # float32 [n], squared L2 in PCA space
    centroids: np.ndarray  # float32 [k, n_components]
    pca: PCA  # pca.transform(new_vectors) puts new vectors in the centroids' space
    n_components: int
    explained_variance: float
    runtime: str = "faiss cpu"  # where it ran (summaries and reports)

    @property
    def k(self) -> int:
        """Number of clusters."""
        return self.centroids.shape[0]

    @property
    def inertia(self) -> float:
        """Sum of squared distances of every point to its centroid (float64 sum)."""
        return float(self.distances.sum(dtype=np.float64))


def default_k(n: int) -> int:
    """CaR's rule: k = int(sqrt(n / 2)), at least 1."""
    return max(1, int(math.sqrt(n / 2)))


def _check_finite(vectors: np.ndarray) -> None:
    """Raise naming the first row with a NaN or infinity."""
    for start in range(0, vectors.shape[0], BATCH):
        bad = np.flatnonzero(~np.isfinite(vectors[start:start + BATCH]).all(axis=1))
        if bad.size:
            raise ValueError(f"vector {start + int(bad[0])} has a NaN or infinite value")


def cluster(vectors: np.ndarray, *, k: int | None = ClusterParams.k,
            pca_var: float = ClusterParams.pca_var, pca_dim: int | None = ClusterParams.pca_dim,
            seed: int = ClusterParams.seed, progress: bool = True,
            n_init: int = KMEANS_RESTARTS, max_points_per_centroid: int = 256,
            device: str | None = ClusterParams.device,
            refine_rounds: int = KMEANS_REFINE_ROUNDS) -> ClusterResult:
    """PCA then k-means over ``vectors`` [n, d] (an array or a memmapped ``.npy``).

    ``k`` defaults to int(sqrt(n / 2)); PCA keeps ``pca_dim`` components, else the fewest
    reaching ``pca_var`` of the variance. The same ``seed`` gives the same labels.
    ``device`` (auto|cpu|cuda|cuda:N): FAISS on that GPU, the PCA and seeding in torch there.
    """
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"expected a non-empty [n, d] array of vectors, got shape {vectors.shape}")
    n = vectors.shape[0]
    k = default_k(n) if k is None else k
    if not 1 <= k <= n:
        raise UsageError(f"--k must be in 1..{n} (the number of vectors), got {k}")
    if n_init < 1:
        raise UsageError(f"n_init must be >= 1, got {n_init}")
    gpu = faiss_gpu(device)
    on_torch = _torch_gpu(gpu)
    _check_finite(vectors)
    pca = fit_pca(vectors, pca_var=pca_var, pca_dim=pca_dim, seed=seed, torch_device=on_torch)
    points = pca.transform(vectors)
    centroids = kmeans(points, k, seed=seed, n_init=n_init,
                       max_points_per_centroid=max_points_per_centroid, progress=progress,
                       gpu=gpu, refine_rounds=refine_rounds)
    labels, distances = assign(points, centroids, progress=progress and n > BATCH, gpu=gpu)
    where = "cpu" if gpu is None else ("all GPUs" if gpu == ALL_GPUS else f"cuda:{gpu}")
    runtime = f"faiss {where}" + ("" if on_torch is None else f", PCA + seeding torch {on_torch}")
    return ClusterResult(labels, distances, centroids.astype(np.float32), pca,
                         pca.n_components, pca.explained_variance, runtime)
