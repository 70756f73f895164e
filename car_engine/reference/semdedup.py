"""The plain way of SemDeDup: per cluster, the whole cosine matrix in numpy, every pair at or
above 1 - eps, and connected components; the tests and the benchmark compare the engine's
banded, tiled search with it (same groups)."""

from __future__ import annotations

import numpy as np


def semantic_groups(vectors: np.ndarray, labels: np.ndarray, eps: float) -> np.ndarray:
    """For each row, the smallest row of its group (negative labels are never grouped)."""
    n = labels.shape[0]
    parent = np.arange(n)

    def find(x: int) -> int:
        while parent[x] != x:
            x = int(parent[x])
        return x

    for label in np.unique(labels[labels >= 0]):
        rows = np.flatnonzero(labels == label)
        x = np.asarray(vectors[rows], dtype=np.float32)
        sim = x @ x.T
        a, b = np.nonzero(np.triu(sim >= 1 - eps, k=1))
        for i, j in zip(rows[a], rows[b]):
            ri, rj = find(int(i)), find(int(j))
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(n)], dtype=np.int64)
