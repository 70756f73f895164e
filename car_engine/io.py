"""Every final file is written here, atomically: a temp file beside the target, renamed into
place only when complete, so no file under a final name is ever half-written."""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from car_engine.errors import CorpusError


@functools.lru_cache(maxsize=1)
def _new_file_mode() -> int:
    # mkstemp makes 0600 files; a finished output gets the mode open() would have given it.
    # The umask can only be read by setting it, so it is set straight back.
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _make_parent(final: Path) -> None:
    """Create the folder ``final`` goes in; a file in the way is named (mkdir names only the
    path it could not make, as 'File exists')."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in final.parents if p.exists() and not p.is_dir()), None)
        if blocker is None:
            raise
        raise NotADirectoryError(errno.ENOTDIR, f"{blocker} is a file, not a folder",
                                 str(final)) from None


def _naming_final(err: OSError, tmp: str | None, final: Path) -> OSError:
    """``err`` naming ``final`` where it named the temp file or no file (``tmp`` None: the
    temp name is not known yet, as when mkstemp fails): users know the output path, not its
    temp names. An error naming some other file (an input read while writing) is kept."""
    if err.filename is not None and tmp is not None and tmp not in str(err.filename):
        return err
    if err.filename is None or tmp is None:
        name = str(final)
    else:  # in a temp folder: the same file under the final folder
        name = str(err.filename).replace(tmp, str(final))
    reason = err.strerror or (str(err).replace(tmp, str(final)) if tmp else str(err))
    return OSError(err.errno, reason, name)  # OSError() picks the errno's subclass


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds,
    so no half-written file ever carries the final name (an old file there stays intact).
    ``suffix`` ends the temp name, for writers that go by the extension. An OSError names
    ``path``, never the temp file."""
    final = Path(path)
    _make_parent(final)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix, dir=final.parent)
    except OSError as err:
        raise _naming_final(err, None, final) from err
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _new_file_mode())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise _naming_final(err, tmp, final) from err
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



def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Write a JSON document atomically (sorted keys, so equal values give equal bytes)."""
    write_text(path, json.dumps(value, indent=1, sort_keys=True))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an array as .npy atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; rename it onto ``path`` only if the block succeeds.

    A folder already at ``path`` (another process finished first) is kept, and the new one is
    dropped: both hold the same files, and a folder cannot be replaced atomically."""
    final = Path(path)
    _make_parent(final)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    except OSError as err:
        raise _naming_final(err, None, final) from err
    try:
        yield tmp
        tmp.chmod(_new_file_mode() | 0o111)  # mkdtemp makes it private
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir() or not any(final.iterdir()):
                raise
    except OSError as err:
        raise _naming_final(err, str(tmp), final) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
