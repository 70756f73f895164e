"""Semantic duplicates (SemDeDup, SPEC §9): inside each k-means cluster, records whose unit
embeddings have cosine similarity >= 1 - eps, grouped by connected components.

Memory is bounded whatever a cluster's size: similarities are computed tile by tile
(``block`` x ``block``), never as a cluster's whole n x n matrix. Most tiles are never
computed: for unit vectors cos(x, y) >= 1 - eps means ||x - y|| <= sqrt(2 eps), and for any
unit direction p, |p.x - p.y| <= ||x - y||; so with a cluster's rows sorted by their
projection on its mean direction, a row can only match rows whose projection lies within
sqrt(2 eps) of its own, a band around the diagonal. The pruning is exact: no pair is missed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from car_engine import native

BLOCK = 1024
SLACK = 1e-5  # float32 rounding of the projections; widening the band never loses a pair


@dataclass
class SemanticGroups:
    """``groups[i]``: the smallest row of row i's group (i itself when alone); ``nearest[i]``:
    the highest cosine to another row of its cluster among the pairs inside the band (exact
    wherever it is >= 1 - eps; NaN when no other row was in reach)."""

    groups: np.ndarray
    nearest: np.ndarray
    eps: float

    @property
    def n_groups(self) -> int:
        """Groups of two or more rows."""
        return int((np.bincount(self.groups, minlength=self.groups.size) > 1).sum())


def semantic_groups(vectors: np.ndarray, labels: np.ndarray, eps: float,
                    block: int = BLOCK) -> SemanticGroups:
    """SemDeDup groups of unit ``vectors`` [n, d] within the clusters given by ``labels``
    (negative: no cluster, never grouped)."""
    labels = np.asarray(labels)
    n = labels.shape[0]
    if vectors.shape[0] != n:
        raise ValueError(f"{vectors.shape[0]} vectors for {n} labels")
    parent = np.arange(n, dtype=np.int64)
    nearest = np.full(n, -np.inf, dtype=np.float32)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    bounds = np.flatnonzero(np.diff(sorted_labels)) + 1
    for members in np.split(order, bounds):
        if members.size > 1 and labels[members[0]] >= 0:
            _cluster(np.asarray(vectors[np.sort(members)], dtype=np.float32),
                     np.sort(members), 1.0 - eps, float(np.sqrt(2 * eps)) + SLACK, block,
                     parent, nearest)
    nearest[np.isinf(nearest)] = np.nan
    return SemanticGroups(native.flatten_forest(parent), nearest, float(eps))


def _cluster(x: np.ndarray, rows: np.ndarray, cut: float, radius: float, block: int,
             parent: np.ndarray, nearest: np.ndarray) -> None:
    """One cluster's pairs >= ``cut``, tile by tile inside the projection band."""
    direction = x.mean(axis=0)
    norm = float(np.linalg.norm(direction))
    if norm > 0:
        proj = x @ (direction / norm)
        by_proj = np.argsort(proj, kind="stable")
        x, rows, proj = x[by_proj], rows[by_proj], proj[by_proj]
    else:  # a cluster whose mean is zero: no band to use, every tile is computed
        proj = np.zeros(x.shape[0], dtype=np.float32)
        radius = np.inf
    m = x.shape[0]
    for i0 in range(0, m, block):
        i1 = min(m, i0 + block)
        end = int(np.searchsorted(proj, proj[i1 - 1] + radius, side="right"))
        for j0 in range(i0, end, block):
            j1 = min(end, j0 + block)
            sim = x[i0:i1] @ x[j0:j1].T
            if j0 == i0:  # the diagonal tile: each pair once, never a row with itself
                sim[np.tril_indices(i1 - i0, 0, j1 - j0)] = -np.inf
            np.maximum.at(nearest, rows[i0:i1], sim.max(axis=1))
            np.maximum.at(nearest, rows[j0:j1], sim.max(axis=0))
            a, b = np.nonzero(sim >= cut)
            if a.size:
                native.union_pairs(parent, rows[i0 + a], rows[j0 + b])


def semantic_summary(found: SemanticGroups, bins: int = 20) -> dict:
    """summary.json's account of semantic duplicates: the distribution of every record's
    nearest cosine in its cluster (the cut at 1 - eps) and the number of groups."""
    finite = found.nearest[np.isfinite(found.nearest)].astype(np.float64)
    low = float(min(finite.min(), 1 - 2 * found.eps)) if finite.size else 0.0
    counts, edges = np.histogram(finite, bins=bins, range=(max(low, -1.0), 1.0))
    return {"eps": found.eps, "cut": 1 - found.eps, "groups": found.n_groups,
            "histogram": {"edges": edges.round(4).tolist(), "counts": counts.tolist()}}
