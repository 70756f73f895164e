"""SemDeDup (SPEC §9): the banded, tiled search against brute-force cosine per cluster, and its
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


def test_same_groups_as_brute_force_for_every_tile_size():
    x, labels = clustered()
    # tiles smaller than a cluster or one per cluster; no projected test, or two projections
    cases = [(0.002, 64, 12), (0.01, 1024, 12), (0.3, 64, 4), (0.1, 7, 0), (0.1, 33, 4),
             (0.1, 1024, 12)]
    for eps, block, dims in cases:
        found = semantic_groups(x, labels, eps, block=block, dims=dims)
        assert np.array_equal(found.groups, brute_force(x, labels, eps)), (eps, block, dims)
    assert semantic_groups(x, labels, 0.01).n_groups >= 20


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
