"""Split/merge refinement of converged k-means centroids (a local search over the seeding).

Lloyd's algorithm stops in a local optimum whose typical flaw is structural: two centroids
share one dense group while one centroid straddles two groups. Restarts only escape it by luck
(scikit-learn's ten restarts are ten draws). Here every converged solution is inspected
instead: the cost of dropping each centroid (its points move to their second-nearest one) is
weighed against the gain of splitting each cluster in two along its principal direction;
where a split gains more than a drop costs, the dropped centroid is moved into the split
cluster, Lloyd runs to convergence again, and the move is kept only if the objective fell.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# (points, centroids) -> (converged centroids, objective)
Converge = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, float]]
# centroids -> (squared distances [n, 2], labels [n, 2]) of every point's two nearest centroids
Nearest2 = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

POWER_STEPS = 8  # power iterations for a cluster's principal direction
SPLIT_STEPS = 3  # 2-means Lloyd steps after the principal-direction cut
MOVES_PER_ROUND = 0.1  # at most this share of k centroids moved per round (at least one)
MIN_GAIN = 1e-6  # a round must lower the objective by this fraction to be kept
# A kept round lowering the objective by less than this fraction ends the search, and the
# search's reconvergences stop below this relative gain over 5 Lloyd steps (the last solution
# then converges to k-means' own 1e-4): benchmarks/RESULTS.md, "a cheaper refinement".
STOP_GAIN = 1e-3
REFINE_TOL = 1e-3


def split_gain(members: np.ndarray, rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """(SSE of ``members`` minus the SSE of its best two-way split, the two centres [2, d]):
    cut along the principal direction at the mean, then SPLIT_STEPS 2-means steps."""
    n = members.shape[0]
    x = np.asarray(members, dtype=np.float32)
    unsplit = 0.0, np.repeat(x[:1], 2, axis=0)
    if n < 2:
        return unsplit
    total = x.sum(axis=0, dtype=np.float64)
    centred = x - (total / n).astype(np.float32)
    direction = np.asarray(rng.standard_normal(x.shape[1]), dtype=np.float32)
    for _ in range(POWER_STEPS):
        direction = (centred @ direction) @ centred  # covariance times direction, no d x d
        norm = np.linalg.norm(direction)
        if norm == 0:
            return unsplit
        direction /= norm
    side = centred @ direction > 0
    for step in range(SPLIT_STEPS + 1):
        count = int(side.sum())
        if count in (0, n):
            return unsplit
        ones = side.astype(np.float32) @ x  # sum over one side by a product, not a gather
        centres = np.stack([(total - ones) / (n - count), ones / count])
        if step == SPLIT_STEPS:
            break
        # nearer to centre 1 than to centre 0, as one product: x . (c1 - c0) > (|c1|^2 - |c0|^2) / 2
        towards = (centres[1] - centres[0]).astype(np.float32)
        side = x @ towards > 0.5 * float(centres[1] @ centres[1] - centres[0] @ centres[0])
    # SSE(all) - SSE(two sides) = n0 n1 / n |c0 - c1|^2 for the sides' means: no cancellation
    gap = centres[1] - centres[0]
    return float((n - count) * count / n * (gap @ gap)), centres.astype(np.float32)


def swaps(points: np.ndarray, centroids: np.ndarray, nearest: tuple[np.ndarray, np.ndarray],
          rng: np.random.Generator) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Every (split, drop) swap whose split gain exceeds its drop cost, best gain first, no
    cluster in two swaps; and the two halves [k, 2, d] of each cluster's split."""
    distances, labels = nearest
    k = centroids.shape[0]
    own = labels[:, 0]
    # Dropping centroid c moves its points to their second-nearest: the objective grows by this.
    drop_cost = np.bincount(own, weights=distances[:, 1] - distances[:, 0], minlength=k)
    order = np.argsort(own, kind="stable")
    bounds = np.searchsorted(own[order], np.arange(k + 1))
    gains = np.zeros(k)
    halves = np.empty((k, 2, centroids.shape[1]), dtype=np.float32)
    for c in range(k):
        gains[c], halves[c] = split_gain(points[order[bounds[c]:bounds[c + 1]]], rng)
    used = np.zeros(k, dtype=bool)
    found: list[tuple[int, int]] = []
    droppable = [int(c) for c in np.argsort(drop_cost, kind="stable")]
    for grow in (int(c) for c in np.argsort(-gains, kind="stable")):
        if used[grow]:
            continue
        drop = next((c for c in droppable if not used[c] and c != grow), None)
        if drop is None or gains[grow] <= drop_cost[drop]:
            break
        # the dropped centroid's points go to its neighbours: keep them out of later swaps
        used[np.unique(labels[order[bounds[drop]:bounds[drop + 1]], 1])] = True
        used[[grow, drop]] = True
        found.append((grow, drop))
    return found, halves


def apply_swaps(centroids: np.ndarray, found: list[tuple[int, int]],
                halves: np.ndarray) -> np.ndarray:
    """``centroids`` with each (split, drop) swap made: the two halves replace both."""
    out = centroids.copy()
    for grow, drop in found:
        out[grow], out[drop] = halves[grow]
    return out


def refine(points: np.ndarray, centroids: np.ndarray, objective: float, *, converge: Converge,
           nearest2: Nearest2, rng: np.random.Generator, rounds: int,
           stop: float = STOP_GAIN) -> np.ndarray:
    """Up to ``rounds`` rounds of split/merge swaps on converged ``centroids`` (whose objective
    is ``objective``); a round whose result does not lower the objective is retried with only
    its best swap, and when that fails too the search stops. A kept round that lowers the
    objective by less than ``stop`` (relative) ends the search: later rounds gain less still."""
    k = centroids.shape[0]
    if k < 2:
        return centroids
    moves = max(1, int(MOVES_PER_ROUND * k))
    for _ in range(rounds):
        found, halves = swaps(points, centroids, nearest2(centroids), rng)
        if not found:
            break
        go_on = False
        for allowed in dict.fromkeys((min(moves, len(found)), 1)):  # the paying swaps, the best
            moved, moved_objective = converge(points, apply_swaps(centroids, found[:allowed],
                                                                  halves))
            if moved_objective < (1 - MIN_GAIN) * objective:
                go_on = moved_objective < (1 - stop) * objective
                centroids, objective = moved, moved_objective
                break
        if not go_on:
            break
    return centroids
