"""Score tables keyed by ``id``: joining one onto another, input order, and the checks a
user's scores and clusters files must pass before any rule reads them (each error names the
file, the id and the value)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from car_engine.errors import CorpusError


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


def float_column(table: pa.Table, column: str, name: str) -> np.ndarray:
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


def cluster_labels(clusters: pa.Table, name: str) -> pa.ChunkedArray:
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


def with_clusters(scores: pa.Table, clusters: pa.Table, scores_name: str,
                   clusters_name: str) -> pa.Table:
    """``scores`` with each row's cluster: the clusters file must hold exactly the ids of the
    scores file (a missing id does not mean "no cluster": that is a negative label)."""
    score_ids = unique_ids(scores, scores_name)
    cluster_ids = unique_ids(clusters, clusters_name)
    clusters = clusters.set_column(clusters.column_names.index("cluster"), "cluster",
                                   cluster_labels(clusters, clusters_name))
    faults = ((cluster_ids, score_ids, "id '{}' is not in the scores file {}"),
              (score_ids, cluster_ids, "no row for id '{}' of the scores file {}"))
    for ids, others, fault in faults:
        lacking = pc.invert(pc.is_in(ids, value_set=others))
        if pc.any(lacking).as_py():
            first = ids.filter(lacking)[0]
            raise CorpusError(f"{clusters_name}: {fault.format(first, scores_name)}")
    return attach(scores, clusters, ["cluster"], clusters_name, base_name=scores_name)
