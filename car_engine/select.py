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
from car_engine.config import NEAR_DUP_THRESHOLD, STRATEGIES, SelectParams, check_dedup
from car_engine.dedup import collapse_groups, content_hashes, survivors
from car_engine.errors import CorpusError, UsageError

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
) -> Selection:
    """IFD selection (SPEC §2): drop IFD >= 1 (or > 1 with ``keep_equal_one``) and rows without
    a score (NaN), then keep the highest IFD: ``count`` rows, or ``fraction`` of ``base`` (the
    whole input, rejected records included, when the caller passes it; else these rows)."""
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
    order = native.topk(np.where(misaligned, np.nan, ifd), count)
    why[order] = WHY_IFD
    counts = {
        "total": n,
        "scored": int((~unscored).sum()),
        "misaligned": int(misaligned.sum()),
        "target": count,
        "selected": int(order.size),
    }
    return Selection(order, ["ifd"] * order.size, why, counts)


def misaligned_rows(ifd: np.ndarray, keep_equal_one: bool = SelectParams.keep_equal_one
                    ) -> np.ndarray:
    """Rows whose instruction does not help the answer: IFD >= 1 (> 1 with
    ``keep_equal_one``, as Cherry LLM does). NaN (no score) is never misaligned."""
    with np.errstate(invalid="ignore"):
        return (ifd > 1) if keep_equal_one else (ifd >= 1)


def misaligned_why(keep_equal_one: bool) -> str:
    """The reason a misaligned row carries, naming the rule that dropped it."""
    return WHY_MISALIGNED_STRICT if keep_equal_one else WHY_MISALIGNED


def select_car_ifd(
    scores: np.ndarray,
    ifd: np.ndarray,
    labels: np.ndarray,
    *,
    keep_equal_one: bool = SelectParams.keep_equal_one,
    **car: Any,
) -> Selection:
    """CaR after IFD (``car+ifd``): rows with IFD >= 1 (> 1 with ``keep_equal_one``) are
    dropped first; the score then ranks what is left and CaR selects as usual (``car`` takes
    :func:`select_car`'s keywords). Rows IFD could not score (NaN) stay eligible."""
    misaligned = misaligned_rows(np.asarray(ifd, dtype=np.float64), keep_equal_one)
    scores = np.where(misaligned, np.nan, np.asarray(scores, dtype=np.float64))
    selection = select_car(scores, labels, **car)
    selection.why[misaligned] = misaligned_why(keep_equal_one)
    selection.counts["dropped_by_ifd"] = int(misaligned.sum())
    return selection


# --------------------------------------------------------------------------- keyed tables


def unique_ids(table: pa.Table, name: str) -> pa.ChunkedArray:
    """The ``id`` column as strings, or a clear error naming a repeated id."""
    if "id" not in table.column_names:
        raise CorpusError(f"{name}: no 'id' column")
    ids = table.column("id").cast(pa.string())
    if pc.count_distinct(ids).as_py() != len(ids):
        counts = pc.value_counts(ids)
        repeated = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"]
        raise CorpusError(f"{name}: id '{repeated}' appears more than once")
    return ids


def attach(base: pa.Table, other: pa.Table, columns: list[str], name: str, *,
           required: bool = False, base_name: str = "base") -> pa.Table:
    """Left-join ``columns`` of ``other`` onto ``base`` by id (null where ``other`` lacks it;
    with ``required``, an id of ``base`` that ``other`` lacks is an error naming it).
    ``name`` and ``base_name`` name the two tables in errors (the files the user gave)."""
    where = pc.index_in(unique_ids(base, base_name), value_set=unique_ids(other, name))
    if required and where.null_count:
        missing = base["id"].filter(pc.is_null(where))[0]
        raise CorpusError(f"{name}: no row for record id '{missing}'")
    for col in columns:
        if col not in other.column_names:
            raise CorpusError(f"{name}: no '{col}' column")
        values = other.column(col).take(where)
        if col in base.column_names:
            base = base.set_column(base.column_names.index(col), col, values)
        else:
            base = base.append_column(col, values)
    return base


def in_input_order(table: pa.Table) -> pa.Table:
    """Rows by input position when the table carries one: ties break by input order."""
    if "position" in table.column_names:
        return table.take(pc.sort_indices(table, [("position", "ascending")]))
    return table


def _float_column(table: pa.Table, column: str, name: str) -> np.ndarray:
    if column not in table.column_names:
        raise CorpusError(f"{name}: no '{column}' column (have: {', '.join(table.column_names)})")
    values = table.column(column)
    try:
        return values.cast(pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        reason = str(err).splitlines()[0]
        raise CorpusError(f"{name}: '{column}' is not a number column ({values.type}): "
                          f"{reason}") from None


def check_finite(table: pa.Table, name: str, rows: np.ndarray | None = None) -> None:
    """Refuse NaN or infinity in any float column of a scores file (among ``rows``, a mask of
    the rows a selection can pick): a missing score is null, and no output holds the others
    as JSON, so they would be blamed on the output file."""
    for column in table.column_names:
        values = table.column(column)
        if not pa.types.is_floating(values.type):
            continue
        numbers = values.to_numpy(zero_copy_only=False)
        bad = ~np.isfinite(numbers) & ~values.is_null().to_numpy(zero_copy_only=False)
        if rows is not None:
            bad &= rows
        if bad.any():
            at = int(np.flatnonzero(bad)[0])
            raise CorpusError(f"{name}: id '{table['id'][at]}': '{column}' is {numbers[at]}, "
                              "not a finite number (leave a missing score null)")


def _cluster_labels(clusters: pa.Table, name: str) -> pa.ChunkedArray:
    """The ``cluster`` column as integer labels (a float one like 3.0 is the label 3); a null,
    fractional or non-numeric label is an error naming the id and the value."""
    if "cluster" not in clusters.column_names:
        raise CorpusError(f"{name}: no 'cluster' column")
    labels = clusters.column("cluster")
    bad = labels.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_floating(labels.type):
        numbers = labels.to_numpy(zero_copy_only=False)
        with np.errstate(invalid="ignore"):  # NaN and infinity are bad labels, not warnings
            bad |= (np.trunc(numbers) != numbers) | (np.abs(numbers) >= 2.0**63)
    elif not pa.types.is_integer(labels.type):
        bad[:] = True
    if bad.any():
        at = int(np.flatnonzero(bad)[0])
        value = labels[at].as_py()
        what = "null" if value is None else repr(value)
        raise CorpusError(f"{name}: id '{clusters['id'][at]}': cluster {what} is not an integer "
                          "label (a negative one means no cluster)")
    if pa.types.is_integer(labels.type):
        return labels  # as the file holds them: the output keeps their type
    return labels.cast(pa.int64())


def _with_clusters(scores: pa.Table, clusters: pa.Table, scores_name: str,
                   clusters_name: str) -> pa.Table:
    """``scores`` with each row's cluster: the clusters file must hold exactly the ids of the
    scores file (a missing id does not mean "no cluster": that is a negative label)."""
    score_ids = unique_ids(scores, scores_name)
    cluster_ids = unique_ids(clusters, clusters_name)
    clusters = clusters.set_column(clusters.column_names.index("cluster"), "cluster",
                                   _cluster_labels(clusters, clusters_name))
    faults = ((cluster_ids, score_ids, "id '{}' is not in the scores file {}"),
              (score_ids, cluster_ids, "no row for id '{}' of the scores file {}"))
    for ids, others, fault in faults:
        lacking = pc.invert(pc.is_in(ids, value_set=others))
        if pc.any(lacking).as_py():
            first = ids.filter(lacking)[0]
            raise CorpusError(f"{clusters_name}: {fault.format(first, scores_name)}")
    return attach(scores, clusters, ["cluster"], clusters_name, base_name=scores_name)


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
    ifd = _float_column(table, column, name)
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
    table = in_input_order(_with_clusters(scores, clusters, scores_name, clusters_name))
    s = _float_column(table, score_column, scores_name)
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
