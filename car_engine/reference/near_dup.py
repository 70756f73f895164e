"""The plain way of near duplicates: the same shingles in Python, exact Jaccard of the shingle
sets, and groups as the connected components of every pair at or above the threshold (all n^2
pairs); the tests check the native MinHash + LSH against it, the benchmark checks recall and
precision on a sample."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import numpy as np


def shingles(text: str, ngram: int = 5) -> set[str]:
    """The word ``ngram``-grams of the case-folded, NFC-normalised text (words split on
    whitespace); a text of fewer words is one shingle, an empty one none."""
    words = unicodedata.normalize("NFC", text.casefold()).split()
    if not words:
        return set()
    if len(words) < ngram:
        return {" ".join(words)}
    return {" ".join(words[i:i + ngram]) for i in range(len(words) - ngram + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    """|a & b| / |a | b| (0 for two empty sets: an empty text is nobody's duplicate)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def groups(texts: Sequence[str], threshold: float, ngram: int = 5) -> np.ndarray:
    """For each text, the smallest index of its group: connected components of every pair
    whose exact Jaccard is >= ``threshold``."""
    sets = [shingles(t, ngram) for t in texts]
    parent = list(range(len(texts)))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            if jaccard(sets[i], sets[j]) >= threshold:
                a, b = find(i), find(j)
                parent[max(a, b)] = min(a, b)
    return np.array([find(i) for i in range(len(texts))], dtype=np.int64)
