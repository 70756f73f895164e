"""PCA + k-means: the right number of components, reproducible labels, scikit-learn's quality."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from car_engine.cli import main
from car_engine.cluster import ClusterResult, cluster, components_for, default_k, fit_pca
from car_engine.corpus import read_table
from car_engine.embed import Embedder, ids_path
from car_engine.errors import UsageError
from car_engine.io import write_parquet

SPECTRUM = np.array([16, 8, 4, 2, 1, 0.5, 0.25, 0.125] + [0.01] * 24)


def with_spectrum(n: int, variances: np.ndarray, seed: int = 0) -> np.ndarray:
    """n points whose covariance has exactly these eigenvalues, in a random orientation."""
    rng = np.random.default_rng(seed)
    white, _ = np.linalg.qr(rng.standard_normal((n, len(variances))))
    white -= white.mean(axis=0)
    white, _ = np.linalg.qr(white)  # orthonormal, zero-mean columns: covariance exactly 1/n I
    rotation, _ = np.linalg.qr(rng.standard_normal((len(variances), len(variances))))
    return (white * np.sqrt(variances * n) @ rotation.T + 3.0).astype(np.float32)


def blobs(n: int, d: int, centers: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centers, d)) * 2
    return (means[rng.integers(0, centers, n)] + rng.standard_normal((n, d))).astype(np.float32)


def check_assignment(x: np.ndarray, result: ClusterResult) -> None:
    """Every point carries its nearest centroid and the squared distance to it."""
    points = result.pca.transform(x)
    squared = ((points[:, None, :] - result.centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(result.labels, squared.argmin(axis=1))
    np.testing.assert_allclose(result.distances, squared.min(axis=1), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("pca_var,expected", [(0.4, 1), (0.6, 2), (0.8, 3), (0.9, 4),
                                              (0.95, 5), (0.985, 7)])
def test_pca_keeps_the_fewest_components_reaching_the_variance(pca_var, expected):
    x = with_spectrum(2000, SPECTRUM)
    pca = fit_pca(x, pca_var=pca_var)
    assert pca.n_components == expected == components_for(SPECTRUM, pca_var)
    np.testing.assert_allclose(pca.eigenvalues / pca.eigenvalues.sum(),
                               SPECTRUM / SPECTRUM.sum(), atol=1e-4)
    assert pca.explained_variance >= pca_var


def test_pca_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.decomposition")
    x = with_spectrum(1500, SPECTRUM, seed=3)
    ours = fit_pca(x, pca_var=0.95)
    theirs = sklearn.PCA(n_components=0.95).fit(x)
    assert ours.n_components == theirs.n_components_
    np.testing.assert_allclose(np.abs(ours.transform(x)), np.abs(theirs.transform(x)),
                               atol=1e-3)


def test_pca_dim_and_fewer_points_than_dimensions():
    x = with_spectrum(2000, SPECTRUM)
    assert fit_pca(x, pca_dim=5).n_components == 5
    few = np.random.default_rng(0).standard_normal((10, 32)).astype(np.float32)
    assert fit_pca(few, pca_var=1.0).n_components <= 10


def test_kmeans_is_reproducible_with_a_seed():
    x = blobs(3000, 24, 30)
    first = cluster(x, k=20, seed=7, progress=False)
    again = cluster(x, k=20, seed=7, progress=False)
    np.testing.assert_array_equal(first.labels, again.labels)
    np.testing.assert_array_equal(first.centroids, again.centroids)
    other = cluster(x, k=20, seed=8, progress=False)
    assert other.labels.shape == first.labels.shape
    check_assignment(x, first)
    assert first.labels.dtype == np.int64 and first.distances.dtype == np.float32
    assert first.centroids.shape == (20, first.n_components)
    assert math.isclose(first.inertia, float(first.distances.sum(dtype=np.float64)))


def test_default_k_and_large_n_sampling():
    x = blobs(6000, 16, 40, seed=1)
    result = cluster(x, progress=False, max_points_per_centroid=20)  # fit on 54 * 20 points
    assert result.k == default_k(6000) == int(math.sqrt(3000))
    assert result.labels.shape == (6000,) and len(np.unique(result.labels)) > 0.9 * result.k
    check_assignment(x, result)


@pytest.mark.slow
def test_inertia_reaches_scikit_learn_kmeans_plus_plus(sharegpt_records):
    reference = pytest.importorskip("car_engine.reference.cluster")
    pytest.importorskip("sklearn")
    instructions = sharegpt_records.column("instruction").to_pylist()
    # 500 real texts; 64 tokens keep the test quick and the vectors real. fp32, not bf16: a CPU
    # without native bf16 emulates it at 6x the time, and the check is on the clustering.
    vectors = Embedder(dtype="fp32", max_seq_length=64).embed(instructions, progress=False)
    ours = cluster(vectors, progress=False)
    theirs = reference.reference_cluster(vectors, ours.k)
    assert ours.n_components == theirs.n_components
    assert ours.inertia <= 1.01 * theirs.inertia


def test_bad_inputs_name_the_problem():
    x = blobs(100, 8, 3)
    x[37, 2] = np.nan
    with pytest.raises(ValueError, match="vector 37"):
        cluster(x, progress=False)
    with pytest.raises(UsageError, match="--k"):
        cluster(blobs(10, 4, 2), k=11, progress=False)
    with pytest.raises(UsageError, match="--pca-var"):
        cluster(blobs(10, 4, 2), pca_var=1.5, progress=False)
    with pytest.raises(UsageError, match="--pca-dim"):
        cluster(blobs(10, 4, 2), pca_dim=5, progress=False)


def test_cli_cluster(tmp_path, capsys):
    x = blobs(400, 16, 10)
    emb = tmp_path / "e.npy"
    np.save(emb, x)
    out = tmp_path / "c.parquet"
    assert main(["cluster", str(emb), "--out", str(out), "--k", "10", "--pca-var", "0.9"]) == 0
    table = read_table(out)
    assert table.column_names == ["id", "cluster", "distance"]
    assert table.column("id").to_pylist() == [str(i) for i in range(400)]
    assert "k = 10" in capsys.readouterr().out
    write_parquet(ids_path(emb), pa.table({"id": [f"r{i}" for i in range(400)]}))
    assert main(["cluster", str(emb), "--out", str(tmp_path / "c.jsonl")]) == 0
    rows = read_table(tmp_path / "c.jsonl")
    assert rows.column("id")[5].as_py() == "r5" and rows.num_rows == 400
    write_parquet(ids_path(emb), pa.table({"id": ["a", "b"]}))
    assert main(["cluster", str(emb), "--out", str(out)]) == 3
    assert main(["cluster", str(tmp_path / "missing.npy"), "--out", str(out)]) == 3
