"""The reference way to cluster (CaR's "clustering" half), the yardstick that tests and
benchmarks measure car_engine.cluster against: scikit-learn ``PCA(pca_var)`` then
``KMeans(k, init="k-means++", n_init=10)``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
