"""The corpus layer: read every supported format into record batches and reject bad items.

Every item read ends up either as a record or as a :class:`Rejection` naming its line (JSONL)
or item index (JSON, Parquet), so ``records + rejections == items read`` always holds. (A
rejection with ``item=False``, a trailing comma, takes a position too but holds no item.)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from itertools import islice
from typing import Any

import pyarrow as pa

from car_engine.corpus.fields import FieldMap
from car_engine.corpus.formats import BUILTIN_SHAREGPT, read_table, resolve_source
from car_engine.corpus.inputs import RecordsLike, as_records
from car_engine.corpus.records import (
    ASSISTANT_ROLES,
    RECORD_SCHEMA,
    USER_ROLES,
    BadItem,
    BetweenItems,
    Corpus,
    CorpusBatch,
    IdIndex,
    RecordRows,
    Rejection,
    UnreadableFile,
    id_of,
    pair_text,
    pair_texts,
    record_values,
    to_record,
)
from car_engine.corpus.sources import items_at, source_files, source_items
from car_engine.errors import CorpusError


def say_mapping(label: str) -> None:
    """Tell the user, once per mapping, which field names the reader took (stderr)."""
    print(f"car-engine: reading single-turn items as {label}", file=sys.stderr)


def read_corpus(
    source: str | os.PathLike,
    *,
    batch_size: int = 10_000,
    strict: bool = False,
    limit: int | None = None,
    fail_unreadable: bool = False,
    fields: str | FieldMap | None = None,
    on_mapping: Callable[[str], None] | None = say_mapping,
) -> Iterator[CorpusBatch]:
    """Stream a corpus as batches of records (Arrow tables of RECORD_SCHEMA).

    ``source`` is a .json/.jsonl/.parquet/.arrow file (optionally gzipped), a folder or glob
    of them read as one corpus (sorted by name; positions count across the files), a
    Hugging Face ``save_to_disk`` folder, or ``builtin:sharegpt``. ``fields`` maps other
    single-turn schemas (``instruction=KEY,input=KEY,output=KEY``, or a :class:`FieldMap`,
    whose ``used`` then counts the mappings taken); ``on_mapping`` hears each mapping once.
    Bad items become :class:`Rejection` entries of the batch they were met in; with
    ``strict=True`` the first one raises :class:`CorpusError` with the same message.
    ``limit`` stops after that many items (good or bad) have been read. A batch holds at most
    ``batch_size`` records and at most ``batch_size`` rejections, so memory stays bounded.
    A file that cannot be read at all (not in its format, cut before its first item) is one
    rejection, or with ``fail_unreadable=True`` a :class:`CorpusError` (what the CLI wants).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be at least 0, got {limit}")
    field_map = fields if isinstance(fields, FieldMap) else FieldMap(fields, on_mapping)
    ids = IdIndex()
    rows, rejected = RecordRows(), []
    with closing(source_items(source, batch_size)) as items:
        for position, (name, location, item) in enumerate(islice(items, limit)):
            try:
                if isinstance(item, BadItem):
                    raise item
                record = record_values(field_map.view(item), position)
                ids.claim(record[0], position, location)
                rows.add(record)
            except BadItem as err:
                if isinstance(err, UnreadableFile) and (strict or fail_unreadable):
                    raise CorpusError(f"{name}: {err}") from None
                rejection = Rejection(name, location, str(err), id_of(item), position,
                                      item=not isinstance(err, BetweenItems))
                if strict:
                    raise CorpusError(rejection.message()) from None
                rejected.append(rejection)
            if len(rows) >= batch_size or len(rejected) >= batch_size:
                yield CorpusBatch(rows.table(), rejected)
                rows, rejected = RecordRows(), []
    if len(rows) or rejected:
        yield CorpusBatch(rows.table(), rejected)


def load_corpus(
    source: str | os.PathLike, *, strict: bool = False, limit: int | None = None,
    fail_unreadable: bool = False, fields: str | FieldMap | None = None,
) -> Corpus:
    """Read a whole corpus into one table (see :func:`read_corpus` for the arguments)."""
    tables, rejected = [], []
    for batch in read_corpus(source, strict=strict, limit=limit,
                             fail_unreadable=fail_unreadable, fields=fields):
        tables.append(batch.records)
        rejected.extend(batch.rejected)
    table = pa.concat_tables(tables) if tables else RECORD_SCHEMA.empty_table()
    return Corpus(table, rejected)


def records_from_items(items: Iterable[Any], *, strict: bool = True,
                       fields: str | FieldMap | None = None) -> Corpus:
    """Records from in-memory items (the Python API's entry point for lists of dicts)."""
    field_map = fields if isinstance(fields, FieldMap) else FieldMap(fields, None)
    ids = IdIndex()
    rows, rejected = RecordRows(), []
    for position, item in enumerate(items):
        location = f"item {position}"
        try:
            record = record_values(field_map.view(item), position)
            ids.claim(record[0], position, location)
            rows.add(record)
        except BadItem as err:
            rejection = Rejection("<items>", location, str(err), id_of(item), position)
            if strict:
                raise CorpusError(rejection.message()) from None
            rejected.append(rejection)
    return Corpus(rows.table(), rejected)



__all__ = [
    "ASSISTANT_ROLES", "BUILTIN_SHAREGPT", "RECORD_SCHEMA", "USER_ROLES", "Corpus", "CorpusBatch",
    "CorpusError", "FieldMap", "RecordsLike", "Rejection", "as_records", "items_at",
    "load_corpus", "pair_text", "pair_texts", "read_corpus", "read_table", "records_from_items",
    "resolve_source", "source_files", "to_record",
]
