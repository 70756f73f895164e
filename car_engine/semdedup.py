"""Semantic duplicates (SemDeDup, SPEC §9): inside each k-means cluster, records whose unit
embeddings have cosine similarity >= 1 - eps, grouped by connected components.

Memory is bounded whatever a cluster's size: a cluster is searched tile by tile (``block`` x
``block`` rows, each pair once), never as its whole n x n matrix. Most pairs are ruled out
exactly in a few dimensions first: for unit vectors, cos(x, y) >= 1 - eps means
||x - y||^2 <= 2 eps, and an orthonormal projection B only shortens a difference
(||B(x - y)|| <= ||x - y||); so a pair whose projected distance is already over the radius
cannot match. B holds the top principal directions of the embeddings (where pairs differ
most), so the projected distances are close to the true ones and the test is cheap (``dims``
columns instead of all of them). Only the pairs it leaves are compared in full. No pair that
matches is ever ruled out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from car_engine import native

BLOCK = 1024
DIMS = 32  # projected dimensions of the exact first test
SAMPLE = 4096  # rows the principal directions are estimated from (evenly spaced: no RNG)
REACH = 1.5  # candidates reach cosine 1 - REACH * eps, so ``nearest`` is exact there
DENSE = 0.02  # above this share of a row block's pairs left, it is compared densely
SLACK = 1e-4  # float32 rounding of the projected distances; a wider test never loses a pair


@dataclass
class SemanticGroups:
    """``groups[i]``: the smallest row of row i's group (i itself when alone); ``nearest[i]``:
    the highest cosine to another row of its cluster, exact wherever it is >= 1 - 1.5 eps
    (NaN when no row of its cluster comes that close)."""

    groups: np.ndarray
    nearest: np.ndarray
    eps: float

    @property
    def n_groups(self) -> int:
        """Groups of two or more rows."""
        return int((np.bincount(self.groups, minlength=self.groups.size) > 1).sum())


def principal_basis(vectors: np.ndarray, dims: int) -> np.ndarray:
    """The top ``dims`` principal directions [d, dims] of (evenly spaced rows of) vectors."""
    step = max(1, vectors.shape[0] // SAMPLE)
    sample = np.asarray(vectors[::step], dtype=np.float64)
    sample = sample - sample.mean(axis=0)
    # One thread: a 384 x 384 eigh is ~0.1 s alone, and ~10x slower when LAPACK's threads
    # spin beside other work (measured on a loaded 2-core machine).
    with threadpool_limits(1):
        gram = sample.T @ sample
        _, basis = np.linalg.eigh(gram)  # eigenvalues ascending
    return np.ascontiguousarray(basis[:, ::-1][:, :dims], dtype=np.float32)


def semantic_groups(vectors: np.ndarray, labels: np.ndarray, eps: float,
                    block: int = BLOCK, dims: int = DIMS) -> SemanticGroups:
    """SemDeDup groups of unit ``vectors`` [n, d] within the clusters given by ``labels``
    (negative: no cluster, never grouped)."""
    labels = np.asarray(labels)
    n = labels.shape[0]
    if vectors.shape[0] != n:
        raise ValueError(f"{vectors.shape[0]} vectors for {n} labels")
    parent = np.arange(n, dtype=np.int64)
    nearest = np.full(n, -np.inf, dtype=np.float32)
    basis = principal_basis(vectors, dims) if 0 < dims < vectors.shape[1] // 2 else None
    projected = None if basis is None else np.asarray(vectors, dtype=np.float32) @ basis
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for members in np.split(order, bounds):
        if members.size > 1 and labels[members[0]] >= 0:
            rows = np.sort(members)
            x = np.asarray(vectors[rows], dtype=np.float32)
            _cluster(x, x if projected is None else projected[rows], rows, eps, block, parent,
                     nearest)
    nearest[np.isinf(nearest)] = np.nan
    return SemanticGroups(native.flatten_forest(parent), nearest, float(eps))


def _cluster(x: np.ndarray, z: np.ndarray, rows: np.ndarray, eps: float, block: int,
             parent: np.ndarray, nearest: np.ndarray) -> None:
    """One cluster's pairs with cosine >= 1 - eps, ``block`` rows at a time against the later
    rows: the projected test natively (it writes only the pairs that pass), then the full
    cosine of those; where it rules little out, the rows are compared densely by tiles."""
    reach = 2 * REACH * eps + SLACK  # squared distance of cosine 1 - REACH * eps, widened
    zt = np.ascontiguousarray(z.T, dtype=np.float32)
    zz = (zt * zt).sum(axis=0)
    m = x.shape[0]
    for i0 in range(0, m, block):
        i1 = min(m, i0 + block)
        found = native.projected_pairs(zt, zz, i0, i1, reach, int(DENSE * (i1 - i0) * m))
        if found is None:
            a, b, sim = _dense_rows(x, i0, i1, block, 1 - REACH * eps)
        else:
            a, b = found
            sim = np.einsum("ij,ij->i", x[a], x[b])
        if a.size:
            np.maximum.at(nearest, rows[a], sim)
            np.maximum.at(nearest, rows[b], sim)
            hit = sim >= 1 - eps
            if hit.any():
                native.union_pairs(parent, rows[a[hit]], rows[b[hit]])


def _dense_rows(x: np.ndarray, i0: int, i1: int, block: int, cut: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j), i0 <= i < i1, i < j, with cosine >= ``cut``, by tiles of full GEMMs."""
    parts_a, parts_b, parts_s = [], [], []
    for j0 in range(i0, x.shape[0], block):
        j1 = min(x.shape[0], j0 + block)
        sim = x[i0:i1] @ x[j0:j1].T
        keep = sim >= cut
        if j0 == i0:  # each pair once, never a row with itself
            keep &= np.triu(np.ones(keep.shape, dtype=bool), k=1)
        a, b = np.nonzero(keep)
        parts_a.append(a + i0)
        parts_b.append(b + j0)
        parts_s.append(sim[a, b])
    return np.concatenate(parts_a), np.concatenate(parts_b), np.concatenate(parts_s)


def semantic_summary(found: SemanticGroups, bins: int = 20) -> dict:
    """summary.json's account of semantic duplicates: the distribution of every record's
    nearest cosine in its cluster (the cut at 1 - eps) and the number of groups."""
    finite = found.nearest[np.isfinite(found.nearest)].astype(np.float64)
    low = float(min(finite.min(), 1 - 2 * found.eps)) if finite.size else 0.0
    counts, edges = np.histogram(finite, bins=bins, range=(max(low, -1.0), 1.0))
    return {"eps": found.eps, "cut": 1 - found.eps, "groups": found.n_groups,
            "histogram": {"edges": edges.round(4).tolist(), "counts": counts.tolist()}}
