"""The clustering bench's check data and its inertia comparison, on small data."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.cluster_checks import check_row, label_inertia, shared_space
from benchmarks.cluster_data import GENERATORS, generate, spectrum_scale


@pytest.mark.parametrize("name", list(GENERATORS))
def test_generators_are_deterministic_unit_vectors(name):
    x = generate(name, 1200, d=48, seed=3)
    assert x.shape == (1200, 48) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(x, generate(name, 1200, d=48, seed=3))
    assert not np.array_equal(x, generate(name, 1200, d=48, seed=4))


def test_generators_differ_in_the_intended_ways():
    n, d = 5000, 96
    k = int(np.sqrt(n / 2))
    assert GENERATORS["few-decaying"].true_clusters(n) < k
    assert GENERATORS["near-isotropic"].true_clusters(n) == k
    assert GENERATORS["many-decaying"].true_clusters(n) > 5 * k
    scale = spectrum_scale(d, "decaying")
    assert np.isclose((scale**2).sum(), 1) and scale[0] > 5 * scale[-1]
    # a decaying spectrum needs fewer components for 95% of the variance than an isotropic one
    decaying = shared_space(generate("many-decaying", n, d=d), 0).shape[1]
    isotropic = shared_space(generate("many-isotropic", n, d=d), 0).shape[1]
    assert decaying < 0.8 * isotropic


def test_label_inertia_is_the_sum_of_squared_distances_to_label_means():
    rng = np.random.default_rng(0)
    points = rng.standard_normal((300, 5))
    labels = rng.integers(0, 4, 300)
    expected = sum(((points[labels == c] - points[labels == c].mean(axis=0)) ** 2).sum()
                   for c in range(4))
    assert np.isclose(label_inertia(points, labels, 4), expected)
    assert label_inertia(points, labels, 6) == pytest.approx(expected)  # empty labels add 0
    # the true partition of well-separated blobs beats any other one
    blobs = np.repeat(np.eye(3) * 50, 100, axis=0) + rng.standard_normal((300, 3))
    truth = np.repeat(np.arange(3), 100)
    assert label_inertia(blobs, truth, 3) < label_inertia(blobs, rng.permutation(truth), 3)


def test_check_row_compares_both_sides_as_processes():
    pytest.importorskip("sklearn")
    vectors = generate("near-isotropic", 600, d=32, seed=1)
    got = check_row("cluster-test", vectors, 1)
    assert got["k"] == 17 and got["items"] == 600 and got["whole_process"]
    assert got["engine_seconds"] > 0 and got["reference_seconds"] > 0
    # both partitions are scored in one space: the ratio is finite and close to 1 here
    assert 0.9 < got["check_value"] < 1.1 and got["check_ok"] == (got["check_value"] <= 1.005)
    assert 0.9 < got["inertia_ratio_original"] < 1.1
