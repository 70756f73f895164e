"""What the Python API accepts as a corpus: anything other tools hold, turned into records.

A records table (RECORD_SCHEMA) passes through; a pyarrow Table, a pandas or polars DataFrame,
a Hugging Face ``Dataset`` or a list of dicts holding items (Alpaca, ShareGPT or chat shape)
become records the way a corpus file's items do; a path is read with ``load_corpus``.
``input_file`` puts such data on disk for ``run``, which reads its picks back from there: the
items "as they came" are then the dicts given, or a table's rows as Arrow gives them
(``Table.to_pylist``: a pandas frame's rows after ``pa.Table.from_pandas``, a ``Dataset``'s
rows in its current selection and order).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import pyarrow as pa

from car_engine.corpus.records import RECORD_SCHEMA

if TYPE_CHECKING:
    import datasets
    import pandas
    import polars

RecordsLike = Union[pa.Table, "pandas.DataFrame", "polars.DataFrame", "datasets.Dataset",
                    Iterable[Mapping[str, Any]], str, os.PathLike]


def _library(data: Any) -> str:
    return type(data).__module__.split(".")[0]


def _arrow(data: Any) -> pa.Table | None:
    """``data`` as an Arrow table when it is a table of another library, else None."""
    if isinstance(data, pa.Table):
        return data
    library = _library(data)
    if library == "pandas":
        return pa.Table.from_pandas(data, preserve_index=False)
    if library == "polars":
        return data.to_arrow()
    if library == "datasets":
        return data.with_format("arrow")[:]  # honours any select/shuffle of the Dataset
    return None


def is_records(table: pa.Table) -> bool:
    """Whether ``table`` already holds records (every RECORD_SCHEMA column, same types)."""
    return all(name in table.column_names and table.schema.field(name).type == field.type
               for name, field in zip(RECORD_SCHEMA.names, RECORD_SCHEMA))


def as_records(data: RecordsLike, *, strict: bool = True) -> pa.Table:
    """Records (RECORD_SCHEMA) from ``data``; see the module docstring for what it may be.

    Items are checked as a corpus file's are: with ``strict`` (the default here) the first
    bad item raises :class:`~car_engine.errors.CorpusError` naming its index; without it,
    bad items are left out (use :func:`records_from_items` to see them)."""
    from car_engine.corpus import load_corpus, records_from_items

    if isinstance(data, (str, os.PathLike)):
        return load_corpus(data, strict=strict).records
    table = _arrow(data)
    if table is not None:
        if is_records(table):
            return table.select(RECORD_SCHEMA.names)
        return records_from_items(table.to_pylist(), strict=strict).records
    if isinstance(data, Mapping):
        raise TypeError("a single item is not a corpus: pass a list of items")
    return records_from_items(data, strict=strict).records


def input_file(data: RecordsLike, folder: str | os.PathLike) -> str:
    """In-memory ``data`` (a table of any library above, or dicts) as a corpus file in
    ``folder``: Parquet for a table (its column types kept), JSON Lines for dicts (each kept
    byte for byte as JSON holds it, keys an item lacks stay absent); a path is returned as
    it is. The same data gives the same bytes, so a rerun resumes."""
    from car_engine.io import write_jsonl, write_parquet

    if isinstance(data, (str, os.PathLike)):
        return str(data)
    table = _arrow(data)
    if table is not None:
        path = Path(folder) / "items.parquet"
        write_parquet(path, table)
        return str(path)
    if isinstance(data, Mapping):
        raise TypeError("a single item is not a corpus: pass a list of items")
    path = Path(folder) / "items.jsonl"
    items: Iterable[Any] = data
    write_jsonl(path, (dict(item) if isinstance(item, Mapping) else item for item in items))
    return str(path)
