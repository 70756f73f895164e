"""Semantic duplicates (SemDeDup, SPEC §9): inside each k-means cluster, records whose unit
embeddings have cosine similarity >= 1 - eps, grouped by connected components.

For unit vectors cos(x, y) >= 1 - eps means |x - y|^2 <= 2 eps, and |x - y| is the same after
moving both by their cluster's centre c. In an orthonormal basis B of k directions, x - c is
z = (x - c) B plus a residual of norm r, and |x - y|^2 >= |z_x - z_y|^2 + (r_x - r_y)^2: a
lower bound from k + 1 numbers instead of d. B holds the top principal directions of the
spread *inside* clusters (pooled over all of them), where pairs differ most, so the bound is
close to the true distance and rules out nearly every pair; only the pairs it leaves get their
full cosine. The search is one native call over all clusters (csrc/semdedup.cpp: threads over
row blocks, AVX2 tiles); nothing m x m is ever written, so memory is linear in the number of
rows whatever a cluster's size. No pair that matches is ever ruled out (the bound holds up to
a float32 slack that the native side computes and adds to the radius).

k is chosen per call by a cost model on the pairs of a sample (:func:`choose_dims`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from car_engine import native

SAMPLE = 2048  # rows the basis is fitted on, and rows the cost model counts on (evenly spaced)
SAMPLE_PAIRS = 8_000  # pairs inside clusters the cost model counts survivors on
DIMS = (0, 8, 16, 24, 32, 48, 64, 96, 128)  # candidate k (0: the residual norm alone)
REACH = 1.5  # candidates reach cosine 1 - REACH * eps, so ``nearest`` is exact there
TOL = 1e-4  # relative float32 error allowed for |x - c|^2 - |z|^2 (the native slack)
# Cost of one product of the pair bound and of one product of a pair's full cosine, in
# multiply-adds of the projection GEMM: the tile kernel runs near GEMM speed; a single
# pair's dot product loads both rows for every product (measured, AVX2).
BOUND_COST, PAIR_COST = 1.2, 3.0


@dataclass
class SemanticGroups:
    """``groups[i]``: the smallest row of row i's group (i itself when alone); ``nearest[i]``:
    the highest cosine to another row of its cluster, exact wherever it is >= 1 - 1.5 eps
    (NaN when no row of its cluster comes that close). ``stats``: how the search went."""

    groups: np.ndarray
    nearest: np.ndarray
    eps: float
    stats: dict

    @property
    def n_groups(self) -> int:
        """Groups of two or more rows."""
        return int((np.bincount(self.groups, minlength=self.groups.size) > 1).sum())


def clusters_of(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, offsets): the clustered rows (label >= 0) sorted by label, ascending inside a
    label; cluster c is ``order[offsets[c]:offsets[c + 1]]``."""
    order = np.argsort(labels, kind="stable")
    order = order[labels[order] >= 0]
    starts = np.flatnonzero(np.diff(labels[order])) + 1
    return order, np.concatenate([[0], starts, [order.size]]).astype(np.int64)


def within_basis(vectors: np.ndarray, centres: np.ndarray, order: np.ndarray,
                 offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(principal directions [d, d] of the spread inside clusters, largest first, from
    evenly spaced clustered rows; other rows, between those, centred, float32, on which the
    cost model counts: the basis fits its own rows better than the rest, by a lot when no
    direction stands out, so counting on them would promise pruning that never comes; the
    clusters of those rows, ascending)."""
    at = np.unique(np.linspace(0, order.size - 1, 2 * SAMPLE).astype(np.int64))
    which = np.searchsorted(offsets, at, side="right") - 1
    rows = (np.asarray(vectors[order[at]], dtype=np.float64) - centres[which]).astype(
        np.float32)
    fit, held = rows[0::2], rows[1::2]
    gram = fit.T @ fit
    # One thread: a 384 x 384 eigh is ~0.05 s alone, and ~10x slower when LAPACK's threads
    # spin beside other work (measured on a loaded 2-core machine).
    with threadpool_limits(1):
        _, basis = np.linalg.eigh(gram)  # ascending
    return np.ascontiguousarray(basis[:, ::-1]), held, which[1::2]


def sample_pairs(which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j), i < j, of rows in one cluster (``which`` ascending): all of them, or
    :data:`SAMPLE_PAIRS` evenly spaced over all of them (no RNG, and never all pairs in memory:
    a pair's rank maps straight to its cluster and its place in that cluster's triangle)."""
    starts = np.flatnonzero(np.diff(which, prepend=-1))
    sizes = np.diff(np.append(starts, which.size))
    counts = sizes * (sizes - 1) // 2
    first = np.concatenate([[0], np.cumsum(counts)])
    rank = np.arange(first[-1]) if first[-1] <= SAMPLE_PAIRS else \
        np.linspace(0, first[-1] - 1, SAMPLE_PAIRS).astype(np.int64)
    c = np.searchsorted(first, rank, side="right") - 1
    u, m = rank - first[c], sizes[c]

    def row_start(i: np.ndarray) -> np.ndarray:  # rank of (i, i + 1) in an m-row triangle
        return i * (2 * m - i - 1) // 2

    i = np.floor(((2 * m - 1) - np.sqrt(np.maximum(0, (2 * m - 1) ** 2 - 8 * u))) / 2)
    i = i.astype(np.int64)
    i -= row_start(i) > u  # float rounding: one step either way at most
    i += row_start(i + 1) <= u
    return starts[c] + i, starts[c] + i + 1 + u - row_start(i)


def choose_dims(basis: np.ndarray, sample: np.ndarray, which: np.ndarray,
                offsets: np.ndarray, reach: float) -> tuple[int, dict]:
    """The k of :data:`DIMS` with the least expected work for the whole search: n d k to
    project, (k + 1) per pair for the bound, d per pair the bound leaves (the share that
    survives counted on the sample's pairs inside clusters). Returns (k, the estimates)."""
    d = basis.shape[0]
    ks = [k for k in DIMS if k < d]
    sizes = np.diff(offsets).astype(np.float64)
    n, pairs = sizes.sum(), (sizes * (sizes - 1) / 2).sum()
    left, right = sample_pairs(which)
    coords = (sample @ basis[:, :max(ks)]).astype(np.float64)
    total = (sample.astype(np.float64) ** 2).sum(1)
    norms = np.cumsum(coords ** 2, axis=1)
    gaps = np.cumsum((coords[left] - coords[right]) ** 2, axis=1)
    best, estimates = 0, {}
    for k in ks:
        zz = norms[:, k - 1] if k else np.zeros(total.size)
        r = np.sqrt(np.maximum(0.0, total - zz))
        bound = (gaps[:, k - 1] if k else 0.0) + (r[left] - r[right]) ** 2
        survive = float((bound <= reach).mean()) if left.size else 1.0
        width = (k + 1 + 7) // 8 * 8
        estimates[k] = {"survive": survive, "cost": n * d * k + pairs * width * BOUND_COST
                        + pairs * survive * d * PAIR_COST}
        if estimates[k]["cost"] < estimates[best]["cost"]:
            best = k
    return best, estimates


def semantic_groups(vectors: np.ndarray, labels: np.ndarray, eps: float,
                    dims: int | None = None, plain: bool = False) -> SemanticGroups:
    """SemDeDup groups of unit ``vectors`` [n, d] within the clusters given by ``labels``
    (negative: no cluster, never grouped). ``dims``: the bound's k (None: chosen by
    :func:`choose_dims`); ``plain``: the native search without AVX2 (tests)."""
    labels = np.asarray(labels)
    n = labels.shape[0]
    if vectors.shape[0] != n:
        raise ValueError(f"{vectors.shape[0]} vectors for {n} labels")
    reach = 2 * REACH * eps  # squared distance of cosine 1 - REACH * eps
    order, offsets = clusters_of(labels)
    stats: dict = {"clusters": int(offsets.size - 1)}
    if order.size < 2:
        left = right = np.zeros(0, dtype=np.int64)
        sim = np.zeros(0, dtype=np.float32)
    else:
        centres = native.cluster_means(vectors, order, offsets)
        basis, sample, which = within_basis(vectors, centres, order, offsets)
        if dims is None:
            dims, stats["estimates"] = choose_dims(basis, sample, which, offsets, reach)
        dims = min(dims, vectors.shape[1])
        b = np.ascontiguousarray(basis[:, :dims], dtype=np.float32)
        # z = x B for every row, one GEMM (rows outside clusters get one too: never read); the
        # native side takes each cluster's centre off.
        z = np.asarray(vectors, dtype=np.float32) @ b
        centres_z = (centres @ b.astype(np.float64)).astype(np.float32)
        left, right, sim, counts = native.semdedup_pairs(
            vectors, z, centres.astype(np.float32), centres_z, order, offsets, reach,
            1 - REACH * eps, TOL, plain=plain)
        stats.update(counts, dims=dims)
    nearest = np.full(n, -np.inf, dtype=np.float32)
    np.maximum.at(nearest, left, sim)
    np.maximum.at(nearest, right, sim)
    nearest[np.isinf(nearest)] = np.nan
    parent = np.arange(n, dtype=np.int64)
    hit = sim >= 1 - eps
    native.union_pairs(parent, left[hit], right[hit])
    return SemanticGroups(native.flatten_forest(parent), nearest, float(eps), stats)


def semantic_summary(found: SemanticGroups, bins: int = 20) -> dict:
    """summary.json's account of semantic duplicates: the distribution of every record's
    nearest cosine in its cluster (the cut at 1 - eps) and the number of groups."""
    finite = found.nearest[np.isfinite(found.nearest)].astype(np.float64)
    low = float(min(finite.min(), 1 - 2 * found.eps)) if finite.size else 0.0
    counts, edges = np.histogram(finite, bins=bins, range=(max(low, -1.0), 1.0))
    return {"eps": found.eps, "cut": 1 - found.eps, "groups": found.n_groups,
            "histogram": {"edges": edges.round(4).tolist(), "counts": counts.tolist()}}
