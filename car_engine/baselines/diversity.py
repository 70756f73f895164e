"""The reference way to embed and cluster (CaR's "clustering" half), kept as the yardstick that
tests and benchmarks measure car_engine.embed and car_engine.cluster against.

- embedding: one ``SentenceTransformer.encode`` call per text;
- clustering: scikit-learn ``PCA(pca_var)`` then ``KMeans(k, init="k-means++", n_init=10)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def reference_encoder(model_folder: str | Path):
    """A ``SentenceTransformer`` on CPU, loaded from a local folder (never the hub)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_folder), device="cpu")


def reference_embed(texts: Sequence[str], encoder) -> np.ndarray:
    """float32 [n, d] unit vectors, one ``encode`` call per text, as the reference scripts do."""
    return np.stack([encoder.encode(text, normalize_embeddings=True) for text in texts])


@dataclass
class ReferenceClusters:
    """What the reference pipeline gets out of scikit-learn."""

    labels: np.ndarray
    inertia: float  # KMeans.inertia_: sum of squared distances to the centroids, in PCA space
    n_components: int
    projected: np.ndarray  # the PCA-space points the k-means ran on


def reference_cluster(vectors: np.ndarray, k: int, *, pca_var: float = 0.95, seed: int = 42,
                      n_init: int = 10) -> ReferenceClusters:
    """scikit-learn ``PCA(pca_var)`` + ``KMeans(k, init="k-means++", n_init)``."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    projected = PCA(n_components=pca_var, random_state=seed).fit_transform(vectors)
    kmeans = KMeans(n_clusters=k, init="k-means++", n_init=n_init, random_state=seed)
    labels = kmeans.fit_predict(projected)
    return ReferenceClusters(labels, float(kmeans.inertia_), projected.shape[1], projected)
