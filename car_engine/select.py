"""CaR and IFD selection (SPEC §2, §4) on the native top-k / dedup routines.

The array functions work on row positions; the ``*_table`` functions join keyed tables by
``id`` and return the selected records in final order. Every row gets a ``why``: the reason it
was or was not selected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from car_engine import native
from car_engine.config import (
    IFD_COMPAT_SELECTION,
    STRATEGIES,
    SelectParams,
)
from car_engine.dedup import collapse_groups, content_hashes, survivors
from car_engine.dedup_params import NEAR_DUP_THRESHOLD, check_dedup
from car_engine.errors import CorpusError, UsageError
from car_engine.score_tables import (
    check_finite,
    float_column,
    in_input_order,
    unique_ids,
    with_clusters,
)

# The reasons a row carries in ``Selection.why``.
WHY_N1 = "selected: top n1 by score"
WHY_CLUSTER = "selected: top of its cluster"
WHY_IFD = "selected: top by IFD"
WHY_DUPLICATE = "not selected: duplicate content of a better-scored record"
WHY_UNSCORED = "not selected: no score"
WHY_BELOW = "not selected: below the cut"
WHY_MISALIGNED = "not selected: IFD >= 1 (the instruction does not help the answer)"
WHY_MISALIGNED_STRICT = "not selected: IFD > 1 (the instruction does not help the answer)"
WHY_NEAR = "not selected: near duplicate of {}"  # the id of its group's kept member
WHY_SEMANTIC = "not selected: semantic duplicate of {}"
WHY_FLOOR = "not selected: below the quality floor"  # the IFD quality guard (#22)


@dataclass
class Selection:
    """What a selection picked: ``order`` holds row positions in final order, ``via`` the
    reason of each pick, ``why`` a reason for every row, ``counts`` the summary."""

    order: np.ndarray
    via: list[str]
    why: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)


def _sort_best_first(rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return rows[np.lexsort((rows, -scores[rows]))] if rows.size else rows


def select_car(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    n1: int = SelectParams.n1,
    n2: int = SelectParams.n2,
    strategy: str = SelectParams.strategy,
    hashes: np.ndarray | None = None,
    topk: Callable[[np.ndarray, int], np.ndarray] = native.topk,
    near_groups: np.ndarray | None = None,
    semantic_groups: np.ndarray | None = None,
    ids: Sequence[Any] | None = None,
) -> Selection:
    """CaR selection over rows in input order: the top ``n1`` by score, then the top ``n2`` of
    every cluster not already picked (by score). ``strategy="k*topn"`` keeps only the cluster
    picks. With ``hashes``, rows of equal content collapse to their best-scored copy first;
    then rows of one ``near_groups`` group, then of one ``semantic_groups`` group (each a group
    label per row, e.g. its group's smallest row) collapse to their best-scored eligible member
    (SPEC §9), whose id (``ids``; else its row) the others' ``why`` names. NaN scores are never
    selected; a negative label means "no cluster". ``topk`` may be a sharded top-k (per-shard
    lists + native merge) with the same result."""
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy '{strategy}' (choose from {', '.join(STRATEGIES)})")
    if n1 < 0 or n2 < 0:
        raise UsageError("n1 and n2 must be >= 0")
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.shape[0]} labels for {scores.shape[0]} scores")
    n = scores.shape[0]
    why = np.full(n, WHY_BELOW, dtype=object)
    why[np.isnan(scores)] = WHY_UNSCORED
    eligible = scores
    duplicates = 0
    if hashes is not None:
        keep = survivors(hashes, scores)
        dup_rows = ~keep & ~np.isnan(scores)
        duplicates = int(dup_rows.sum())
        why[dup_rows] = WHY_DUPLICATE
        eligible = np.where(keep, scores, np.nan)
    collapsed = {}
    for key, groups, reason in (("near_duplicates", near_groups, WHY_NEAR),
                                ("semantic_duplicates", semantic_groups, WHY_SEMANTIC)):
        if groups is not None:
            eligible, dup_rows, kept_of = collapse_groups(groups, eligible)
            names = ids if ids is not None else [f"row {r}" for r in range(n)]
            why[dup_rows] = [reason.format(names[k]) for k in kept_of[dup_rows]]
            collapsed[key] = int(dup_rows.sum())
    top = topk(eligible, n1) if strategy == "n1+k*n2" else np.empty(0, np.int64)
    per_cluster = native.topk_per_cluster(eligible, labels, n2)
    in_top = np.zeros(n, dtype=bool)
    in_top[top] = True
    cluster_picks = _sort_best_first(per_cluster[~in_top[per_cluster]], eligible)
    order = native.union([top, cluster_picks])
    why[top] = WHY_N1
    why[cluster_picks] = WHY_CLUSTER
    counts = {
        "total": n,
        "scored": int((~np.isnan(scores)).sum()),
        "duplicates_collapsed": duplicates,
        **collapsed,
        "clusters": int(np.unique(labels[labels >= 0]).size),
        "from_n1": int(top.size),
        "added_by_clusters": int(cluster_picks.size),
        "selected": int(order.size),
    }
    via = ["n1"] * top.size + ["cluster"] * cluster_picks.size
    return Selection(order, via, why, counts)


def select_ifd(
    ifd: np.ndarray,
    *,
    fraction: float | None = None,
    count: int | None = None,
    keep_equal_one: bool = SelectParams.keep_equal_one,
    base: int | None = None,
    guard: np.ndarray | None = None,
) -> Selection:
    """IFD selection (SPEC §2): drop IFD >= 1 (or > 1 with ``keep_equal_one``) and rows without
    a score (NaN), then keep the highest IFD: ``count`` rows, or ``fraction`` of ``base`` (the
    whole input, rejected records included, when the caller passes it; else these rows).
    ``guard`` (a bool per row, car_engine.quality_guard) marks rows dropped as noise first."""
    if (fraction is None) == (count is None):
        raise UsageError("give exactly one of fraction or count")
    if fraction is not None and not 0 <= fraction <= 1:
        raise UsageError(f"fraction must be in [0, 1], got {fraction}")
    ifd = np.asarray(ifd, dtype=np.float64)
    n = ifd.shape[0]
    if count is None:
        assert fraction is not None  # exactly one of the two is given (checked above)
        count = int(fraction * (n if base is None else base))
    if count < 0:
        raise UsageError("count must be >= 0")
    why = np.full(n, WHY_BELOW, dtype=object)
    unscored = np.isnan(ifd)
    misaligned = misaligned_rows(ifd, keep_equal_one)
    why[unscored] = WHY_UNSCORED
    why[misaligned] = misaligned_why(keep_equal_one)
    floored = _floored(guard, n, ~unscored & ~misaligned)
    why[floored] = WHY_FLOOR
    order = native.topk(np.where(misaligned | floored, np.nan, ifd), count)
    why[order] = WHY_IFD
    counts = {
        "total": n,
        "scored": int((~unscored).sum()),
        "misaligned": int(misaligned.sum()),
        **({} if guard is None else {"below_quality_floor": int(floored.sum())}),
        "target": count,
        "selected": int(order.size),
    }
    return Selection(order, ["ifd"] * order.size, why, counts)


def _floored(guard: np.ndarray | None, n: int, candidates: np.ndarray) -> np.ndarray:
    """The candidate rows the quality guard drops (none without a guard)."""
    if guard is None:
        return np.zeros(n, dtype=bool)
    guard = np.asarray(guard, dtype=bool)
    if guard.shape != (n,):
        raise ValueError(f"a quality guard of {guard.shape[0]} rows for {n} rows")
    return guard & candidates


def misaligned_rows(ifd: np.ndarray, keep_equal_one: bool = SelectParams.keep_equal_one
                    ) -> np.ndarray:
    """Rows whose instruction does not help the answer: IFD >= 1 (> 1 with
    ``keep_equal_one``, as Cherry LLM does). NaN (no score) is never misaligned."""
    with np.errstate(invalid="ignore"):
        return (ifd > 1) if keep_equal_one else (ifd >= 1)


def ifd_rule(compat: str | None, keep_equal_one: bool = SelectParams.keep_equal_one
             ) -> tuple[str, bool]:
    """(IFD column, keep exactly 1) of an IFD selection: a compat preset's own rule
    (config.IFD_COMPAT_SELECTION: Cherry LLM ranks by the loss ratio and drops only > 1),
    else ``ifd_ppl`` and ``keep_equal_one``."""
    if compat is None:
        return "ifd_ppl", keep_equal_one
    column, keeps_one = IFD_COMPAT_SELECTION[compat]
    return column, keeps_one or keep_equal_one


def misaligned_why(keep_equal_one: bool) -> str:
    """The reason a misaligned row carries, naming the rule that dropped it."""
    return WHY_MISALIGNED_STRICT if keep_equal_one else WHY_MISALIGNED


def select_car_ifd(
    scores: np.ndarray,
    ifd: np.ndarray,
    labels: np.ndarray,
    *,
    keep_equal_one: bool = SelectParams.keep_equal_one,
    guard: np.ndarray | None = None,
    **car: Any,
) -> Selection:
    """CaR after IFD (``car+ifd``): rows with IFD >= 1 (> 1 with ``keep_equal_one``) are
    dropped first, then the rows ``guard`` marks as noise (car_engine.quality_guard); the score
    then ranks what is left and CaR selects as usual (``car`` takes :func:`select_car`'s
    keywords). Rows IFD could not score (NaN) stay eligible."""
    scores = np.asarray(scores, dtype=np.float64)
    misaligned = misaligned_rows(np.asarray(ifd, dtype=np.float64), keep_equal_one)
    floored = _floored(guard, scores.shape[0], ~misaligned & ~np.isnan(scores))
    scores = np.where(misaligned | floored, np.nan, scores)
    selection = select_car(scores, labels, **car)
    selection.why[misaligned] = misaligned_why(keep_equal_one)
    selection.why[floored] = WHY_FLOOR
    selection.counts["dropped_by_ifd"] = int(misaligned.sum())
    if guard is not None:
        selection.counts["below_quality_floor"] = int(floored.sum())
    return selection


# --------------------------------------------------------------------------- keyed tables


def _dense(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..k-1 in the same order (negative ones stay "no cluster"): picks
    depend only on the grouping, and the native per-cluster slabs are sized by the largest
    label (one of 10**9 would need gigabytes)."""
    codes = np.full(labels.shape, -1, dtype=np.int64)
    assigned = labels >= 0
    codes[assigned] = np.unique(labels[assigned], return_inverse=True)[1]
    return codes


def scored_ifd(table: pa.Table, column: str = "ifd_ppl", status_column: str = "status", *,
               name: str = "scores") -> np.ndarray:
    """IFD values as float64, NaN where the row's status is not "ok" (no score to select by)."""
    ifd = float_column(table, column, name)
    if status_column in table.column_names:
        ifd = np.where(_ok_rows(table, status_column, name), ifd, np.nan)
    return ifd


def _ok_rows(table: pa.Table, status_column: str, name: str) -> np.ndarray:
    """Rows whose status is "ok" (every row when the table has no status column)."""
    if status_column not in table.column_names:
        return np.ones(table.num_rows, dtype=bool)
    status = table.column(status_column)
    if not (pa.types.is_string(status.type) or pa.types.is_large_string(status.type)
            or pa.types.is_null(status.type)):
        raise CorpusError(f"{name}: '{status_column}' must be text (\"ok\" or why there is no "
                          f"score), not {status.type}")
    return pc.equal(status, "ok").fill_null(False).to_numpy(zero_copy_only=False)


def picked_rows(table: pa.Table, selection: Selection) -> pa.Table:
    """The selected rows in final order, each with its ``selected_by`` reason."""
    rows = table.take(pa.array(selection.order, type=pa.int64()))
    return rows.append_column("selected_by", pa.array(selection.via, type=pa.string()))


def select_car_table(
    scores: pa.Table,
    clusters: pa.Table,
    *,
    score_column: str = "iqs",
    n1: int = SelectParams.n1,
    n2: int = SelectParams.n2,
    strategy: str = SelectParams.strategy,
    dedup_content: bool = SelectParams.dedup,
    scores_name: str = "scores",
    clusters_name: str = "clusters",
    near_dup: bool = False,
    near_dup_threshold: float = NEAR_DUP_THRESHOLD,
) -> tuple[pa.Table, Selection]:
    """CaR over keyed tables: ``scores`` (id, score column, and the record fields for content
    dedup and output) and ``clusters`` (id, integer cluster; exactly the ids of ``scores``).
    Scores must be finite or null (no score). ``scores_name`` and ``clusters_name`` name the
    files in errors. ``near_dup`` collapses near duplicates too (MinHash over the record
    fields, Jaccard >= ``near_dup_threshold``). Returns (all rows in input order with their
    cluster, the Selection over those rows)."""
    check_dedup(near_dup_threshold, None)
    table = in_input_order(with_clusters(scores, clusters, scores_name, clusters_name))
    s = float_column(table, score_column, scores_name)
    check_finite(table, scores_name)
    labels = _dense(table.column("cluster").to_numpy())
    hashes = content_hashes(table) if dedup_content else None
    near, ids = None, None
    if near_dup:
        from car_engine.near_dup import near_groups, signatures

        near = near_groups(signatures(table, name=scores_name), near_dup_threshold).groups
        ids = table.column("id").cast(pa.string()).to_pylist()
    return table, select_car(s, labels, n1=n1, n2=n2, strategy=strategy, hashes=hashes,
                             near_groups=near, ids=ids)


def select_ifd_table(
    scores: pa.Table,
    *,
    ifd_column: str = "ifd_ppl",
    fraction: float | None = None,
    count: int | None = None,
    keep_equal_one: bool = SelectParams.keep_equal_one,
    base: int | None = None,
    scores_name: str = "scores",
) -> tuple[pa.Table, Selection]:
    """IFD selection over a keyed scores table (rows whose ``status`` is not "ok" have no
    score and are never selected; the others must be finite or null). ``scores_name`` names
    the file in errors. Returns (rows in input order, the Selection)."""
    unique_ids(scores, scores_name)
    table = in_input_order(scores)
    ifd = scored_ifd(table, ifd_column, "status", name=scores_name)
    check_finite(table, scores_name, _ok_rows(table, "status", scores_name))
    selection = select_ifd(ifd, fraction=fraction, count=count,
                           keep_equal_one=keep_equal_one, base=base)
    return table, selection
