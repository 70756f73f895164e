"""Typed wrappers over the C++ routines in ``car_engine._native`` (the only module that
imports it): selection (top-k, merge, union), content hashes and dedup, and the attention
kernel that ``car_engine.kernels.attention`` dispatches to.

Every ranking here orders by score descending and breaks ties by the lower index (input
order); NaN scores are never selected. Arrays of the native dtypes (float32/float64 scores,
int32/int64 labels, uint64 hashes) pass through without a copy; others are converted once.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

from car_engine import _native


def _scores(scores: np.ndarray | Sequence[float]) -> np.ndarray:
    arr = np.asarray(scores)
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    return np.ascontiguousarray(arr)


def topk(scores: np.ndarray | Sequence[float], k: int) -> np.ndarray:
    """Indices (int64) of the ``k`` highest scores, best first. Fewer come back when fewer
    than ``k`` scores are not NaN."""
    return _native.topk(_scores(scores), int(k))


def topk_per_cluster(
    scores: np.ndarray | Sequence[float],
    labels: np.ndarray | Sequence[int],
    n: int,
    n_clusters: int | None = None,
) -> np.ndarray:
    """Indices of the top ``n`` scores of every cluster, in one pass: grouped by cluster
    ascending, best first within a cluster. Records with a negative label are skipped."""
    lab = np.asarray(labels)
    if lab.dtype not in (np.int32, np.int64):
        lab = lab.astype(np.int64)
    return _native.topk_per_cluster(
        _scores(scores), np.ascontiguousarray(lab), int(n), -1 if n_clusters is None else n_clusters
    )


def merge_topk(
    shards: Iterable[tuple[np.ndarray, np.ndarray]], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard ``(scores, ids)`` lists, each already sorted best-first (as
    :func:`topk` returns them), into the global top ``k``: ``(scores float64, ids int64)``."""
    scores, ids = [], []
    for s, i in shards:
        scores.append(np.ascontiguousarray(s, dtype=np.float64))
        ids.append(np.ascontiguousarray(i, dtype=np.int64))
    return _native.merge_topk(scores, ids, int(k))


def normalize_text(text: str) -> str:
    """Case-folded, NFC-normalised text; whitespace is collapsed natively by :func:`hash_texts`."""
    return unicodedata.normalize("NFC", text.casefold())


def hash_texts(texts: Iterable[str]) -> np.ndarray:
    """64-bit content hashes (uint64) of texts, equal for texts that differ only in Unicode
    composition, letter case or whitespace."""
    return _native.hash_texts([normalize_text(t) for t in texts])


def dedup(hashes: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of the records that survive dedup: the first of every group of equal
    hashes, or with ``scores`` the best-scored one (ties by lower index, NaN last)."""
    h = np.ascontiguousarray(hashes)
    if h.dtype != np.uint64:
        raise ValueError(f"hashes: expected dtype uint64, got {h.dtype}")
    return _native.dedup(h, None if scores is None else _scores(scores))


def minhash_signatures(texts: Iterable[str], num_perm: int, seed: int, ngram: int,
                       threads: int = 0) -> np.ndarray:
    """MinHash signatures ``[n, num_perm]`` (uint32) over the word ``ngram``-shingles of texts
    after :func:`normalize_text` and whitespace collapsing; a text of fewer words is one
    shingle, an empty one has none (all slots 0xFFFFFFFF, nobody's near copy). The same seed
    gives the same signatures. ``threads`` 0: every core."""
    if num_perm < 2:
        raise ValueError(f"num_perm must be >= 2, got {num_perm}")
    return _native.minhash_signatures([normalize_text(t) for t in texts], int(num_perm),
                                      int(seed) & (2**64 - 1), int(ngram), int(threads))


def lsh_groups(signatures: np.ndarray, bands: int, rows: int, threshold: float,
               threads: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Near-duplicate groups over MinHash ``signatures``: candidates share a band of ``rows``
    slots (``bands`` bands), verified by estimated Jaccard >= ``threshold``, joined by
    connected components. Returns (groups: the smallest row of each row's group, left, right,
    similarity) over every candidate pair checked (left < right)."""
    sig = np.ascontiguousarray(signatures)
    if sig.dtype != np.uint32 or sig.ndim != 2:
        raise ValueError(f"signatures: expected a 2-D uint32 array, got {sig.dtype} {sig.shape}")
    return _native.lsh_groups(sig, int(bands), int(rows), float(threshold), int(threads))


def union_pairs(parent: np.ndarray, left: np.ndarray, right: np.ndarray) -> None:
    """Join rows ``left[k]`` and ``right[k]`` in the union-find forest ``parent`` (int64, in
    place; start from ``np.arange(n)``; every root is the smallest row of its set)."""
    _native.union_pairs(parent, np.ascontiguousarray(left, dtype=np.int64),
                        np.ascontiguousarray(right, dtype=np.int64))


def flatten_forest(parent: np.ndarray) -> np.ndarray:
    """Point every row of ``parent`` at its root, in place; returns it: the group labels."""
    _native.flatten_forest(parent)
    return parent


def cluster_means(x: np.ndarray, order: np.ndarray, offsets: np.ndarray,
                  threads: int = 0) -> np.ndarray:
    """[clusters, d] float64: the mean of rows ``order[offsets[c]:offsets[c + 1]]`` of ``x``."""
    return _native.cluster_means(np.ascontiguousarray(x, dtype=np.float32),
                                 np.ascontiguousarray(order, dtype=np.int64),
                                 np.ascontiguousarray(offsets, dtype=np.int64), int(threads))


def semdedup_pairs(x: np.ndarray, z: np.ndarray, centres: np.ndarray, centres_z: np.ndarray,
                   order: np.ndarray, offsets: np.ndarray, reach: float, cut: float,
                   tol: float, threads: int = 0, plain: bool = False
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """SemDeDup's pairs in every cluster at once. Cluster c's members are the rows
    ``order[offsets[c]:offsets[c + 1]]`` (ascending) of ``x`` [n, d] (unit float32), its
    centre ``centres[c]``; ``z`` [n, k] holds ``x @ B`` for an orthonormal ``B`` and
    ``centres_z[c]`` = ``centres[c] @ B``. Pairs whose lower bound |w_i - w_j|^2 of
    |x_i - x_j|^2 (w = z - centres_z plus the residual's norm) is <= ``reach`` (widened by
    the float32 slack ``tol`` calls for) get their full cosine. Returns (left, right, cosine)
    with left < right and cosine >= ``cut``, sorted, and counts (``passed_bound``, ``slack``,
    seconds). ``plain`` skips the AVX2 kernels (tests)."""
    f32 = np.float32
    return _native.semdedup_pairs(
        np.ascontiguousarray(x, dtype=f32), np.ascontiguousarray(z, dtype=f32),
        np.ascontiguousarray(centres, dtype=f32), np.ascontiguousarray(centres_z, dtype=f32),
        np.ascontiguousarray(order, dtype=np.int64),
        np.ascontiguousarray(offsets, dtype=np.int64), float(reach), float(cut), float(tol),
        int(threads), bool(plain))


def union(index_arrays: Iterable[np.ndarray]) -> np.ndarray:
    """Union of index arrays (int64) in order of first appearance."""
    return _native.union_ordered([np.ascontiguousarray(a, dtype=np.int64) for a in index_arrays])


def attention_supported() -> bool:
    """Whether the attention kernel is built in and this CPU has AVX512-BF16."""
    return bool(_native.attention_supported())


def attention(qkv: np.ndarray, starts: np.ndarray, lengths: np.ndarray, heads: int,
              kv_heads: int, head_dim: int, causal: bool, out: np.ndarray, threads: int,
              *, bf16: bool) -> None:
    """Packed-sequence attention into ``out`` (see ``kernels/attention.py``): ``qkv`` and
    ``out`` hold bf16 bits as int16 when ``bf16``, else float32."""
    kernel = _native.attention_bf16 if bf16 else _native.attention_f32
    kernel(qkv, starts, lengths, heads, kv_heads, head_dim, causal, out, threads)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float, out: np.ndarray, threads: int,
             *, bf16: bool) -> None:
    """RMSNorm of the rows of ``x`` [n, d] times ``weight`` into ``out`` (see
    ``kernels/rms_norm.py``): bf16 bits as int16 when ``bf16``, else float32."""
    kernel = _native.rms_norm_bf16 if bf16 else _native.rms_norm_f32
    kernel(x, weight, eps, out, threads)
