"""SemDeDup (SPEC §9): the native bounded search against brute-force cosine per cluster, and its
collapse in the CaR selection."""

from __future__ import annotations

import numpy as np

from car_engine.reference.semdedup import semantic_groups as brute_force
from car_engine.select import WHY_SEMANTIC, select_car
from car_engine.semdedup import semantic_groups, semantic_summary


def clustered(seed: int = 0, clusters: int = 6, per: int = 90, dim: int = 32):
    """Unit vectors around a few centres, with planted near copies (tiny noise) of some."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    labels = np.repeat(np.arange(clusters), per)
    x = centres[labels] + rng.normal(scale=0.6, size=(labels.size, dim))
    copies = rng.choice(labels.size, 60, replace=False)
    x[copies[30:]] = x[copies[:30]] + rng.normal(scale=0.02, size=(30, dim))
    labels[copies[30:]] = labels[copies[:30]]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels[rng.choice(labels.size, 5, replace=False)] = -1  # no cluster: never grouped
    return x.astype(np.float32), labels


def test_same_groups_as_brute_force_for_every_bound_width():
    x, labels = clustered()
    # the residual norm alone (0 dims), a few, every dimension; the chosen k; AVX2 and plain
    cases = [(0.002, 12), (0.01, None), (0.3, 4), (0.1, 0), (0.1, 32), (0.05, None)]
    for eps, dims in cases:
        want = brute_force(x, labels, eps)
        for plain in (False, True):
            found = semantic_groups(x, labels, eps, dims=dims, plain=plain)
            assert np.array_equal(found.groups, want), (eps, dims, plain)
    assert semantic_groups(x, labels, 0.01).n_groups >= 20


def test_uneven_clusters_and_wide_vectors_match_brute_force():
    rng = np.random.default_rng(5)
    sizes = [1, 2, 17, 40, 333]  # a lone row, tiles cut short, a cluster of ~the bench's size
    labels = np.repeat(np.arange(len(sizes)), sizes)
    rng.shuffle(labels)
    x = rng.normal(size=(labels.size, 3))[:, :1] + rng.normal(size=(labels.size, 100))
    x[labels.size // 2:] = x[:labels.size - labels.size // 2] + rng.normal(
        scale=0.05, size=(labels.size - labels.size // 2, 100))
    labels[labels.size // 2:] = labels[:labels.size - labels.size // 2]
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    for eps in (0.01, 0.05):
        found = semantic_groups(x, labels, eps)
        assert np.array_equal(found.groups, brute_force(x, labels, eps))
        assert found.n_groups > 0 and found.stats["passed_bound"] < labels.size ** 2 / 2


def test_groups_are_a_partition_inside_clusters_and_nearest_is_exact_above_the_cut():
    x, labels = clustered(1)
    found = semantic_groups(x, labels, 0.05, dims=8)
    g = found.groups
    assert (g <= np.arange(g.size)).all() and np.array_equal(g[g], g)
    assert (labels[g] == labels).all()
    assert (g[labels < 0] == np.flatnonzero(labels < 0)).all()
    for i in np.flatnonzero(labels >= 0)[:40]:  # nearest against the plain maximum
        same = np.flatnonzero((labels == labels[i]) & (np.arange(g.size) != i))
        best = float((x[same] @ x[i]).max())
        if best >= 1 - 1.5 * 0.05:
            assert abs(found.nearest[i] - best) < 1e-5
    info = semantic_summary(found)
    assert sum(info["histogram"]["counts"]) == int(np.isfinite(found.nearest).sum())


def test_selection_collapses_semantic_groups_after_near_ones():
    x, labels = clustered(2)
    n = labels.size
    sem = semantic_groups(x, labels, 0.01).groups
    scores = np.random.default_rng(2).normal(size=n)
    near = np.arange(n)
    near[1] = 0  # rows 0 and 1 are near copies: one of them goes before the semantic step
    ids = [f"r{i}" for i in range(n)]
    sel = select_car(scores, np.maximum(labels, 0), n1=n, n2=0, near_groups=near,
                     semantic_groups=sem, ids=ids)
    picked = set(sel.order.tolist())
    for root in np.unique(sem):
        members = np.flatnonzero(sem == root)
        alive = [m for m in members if not str(sel.why[m]).startswith("not selected: near")]
        if not alive:
            continue
        best = max(alive, key=lambda m: (scores[m], -m))
        assert best in picked
        for m in alive:
            if m != best:
                assert sel.why[m] == WHY_SEMANTIC.format(ids[best])
    assert sel.counts["semantic_duplicates"] > 0 and sel.counts["near_duplicates"] == 1


def test_sample_pairs_are_the_pairs_inside_clusters_without_all_in_memory():
    from car_engine import semdedup

    which = np.repeat(np.arange(5), [1, 2, 3, 10, 7])
    a, b = semdedup.sample_pairs(which)
    want = [(i, j) for i in range(which.size) for j in range(i + 1, which.size)
            if which[i] == which[j]]
    assert list(zip(a.tolist(), b.tolist())) == want
    which = np.repeat([0, 1, 2], [3000, 1, 30])  # 4.5M pairs: an evenly spaced subset
    a, b = semdedup.sample_pairs(which)
    assert a.size == semdedup.SAMPLE_PAIRS == len(set(zip(a.tolist(), b.tolist())))
    assert (a < b).all() and (which[a] == which[b]).all()


def test_native_cluster_means_match_numpy():
    from car_engine import native

    x, labels = clustered(3)
    order = np.argsort(labels, kind="stable")
    order = order[labels[order] >= 0]
    offsets = np.concatenate([[0], np.flatnonzero(np.diff(labels[order])) + 1, [order.size]])
    means = native.cluster_means(x, order, offsets)
    for c in range(offsets.size - 1):
        want = x[order[offsets[c]:offsets[c + 1]]].astype(np.float64).mean(0)
        assert np.allclose(means[c], want, atol=1e-12)
