"""The plain numpy (and heapq) way of each native selection routine: the exact semantics the
tests check the native code against, and the baseline the select benchmark times."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np


def topk(scores: np.ndarray, k: int) -> np.ndarray:
    """argpartition + sort of the k: best first, ties by lower index, NaN never selected."""
    valid = np.flatnonzero(~np.isnan(scores))
    k = min(k, valid.size)
    if k <= 0:
        return np.empty(0, np.int64)
    s = scores[valid]
    part = np.argpartition(-s, k - 1)[:k]
    cut = s[part].min()
    candidates = valid[s >= cut]  # every tie at the cut, so the index tie-break is exact
    order = np.lexsort((candidates, -scores[candidates]))
    return candidates[order[:k]].astype(np.int64)


def topk_per_cluster(scores: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """lexsort by (cluster, -score, index), then the first n of every cluster."""
    rows = np.flatnonzero(~np.isnan(scores) & (labels >= 0))
    order = rows[np.lexsort((rows, -scores[rows], labels[rows]))]
    lab = labels[order]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]]) if lab.size else np.empty(0, int)
    rank = np.arange(lab.size) - np.repeat(starts, np.diff(np.r_[starts, lab.size]))
    return order[rank < n].astype(np.int64)


def dedup(hashes: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
    """np.unique(return_index=True) for first occurrences; with scores, the best-scored copy
    (ties by lower index, NaN last). Sorted indices."""
    if scores is None:
        return np.sort(np.unique(hashes, return_index=True)[1]).astype(np.int64)
    idx = np.arange(hashes.size)
    rank = np.where(np.isnan(scores), np.inf, -scores)
    order = np.lexsort((idx, rank, hashes))
    h = hashes[order]
    first = np.r_[True, h[1:] != h[:-1]] if h.size else np.empty(0, bool)
    return np.sort(order[first]).astype(np.int64)


def merge_topk(shards: Sequence[tuple[np.ndarray, np.ndarray]], k: int):
    """heapq.merge of best-first (score, id) lists, then the first k."""
    streams = [zip((-s).tolist(), i.tolist()) for s, i in shards]
    merged = list(zip(range(k), heapq.merge(*streams)))
    scores = np.array([-s for _, (s, _) in merged], dtype=np.float64)
    ids = np.array([i for _, (_, i) in merged], dtype=np.int64)
    return scores, ids


def union(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Ordered union via a dict."""
    return np.array(list(dict.fromkeys(int(v) for a in arrays for v in a)), dtype=np.int64)
