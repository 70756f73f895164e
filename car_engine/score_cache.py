"""The score cache: a scoring stage's per-record outputs kept by (content key, scorer
fingerprint), so a rerun on a corpus that grew, shrank, was reordered or partly edited
computes only the records it has not seen (SPEC §10).

``CACHE/<stage>-<fingerprint>/`` holds segments. A segment is a values file
(``seg-<uuid>.parquet`` for a table stage, ``seg-<uuid>.npy`` for a matrix stage) and then its
keys file (``seg-<uuid>.keys.npy``), each written atomically; the keys file commits the
segment, so a reader never sees half of one and a writer killed mid-segment leaves only a
temp file or an uncommitted values file. Segments are never changed once written, so any
number of readers can share a cache with writers (each writer adds its own segments); a
compaction merges small segments under the folder's lock, and deletes the merged ones only
while no reader holds the shared read lock (a reader still lists the folder again if a segment
vanishes under it).

A record's key is a 128-bit BLAKE2b of every field a scorer can read (instruction, input,
output, turns), exact: unlike the dedup hash, no normalisation, so two records share cached
scores only when every scorer sees the same bytes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from car_engine.io import write_json, write_npy, write_parquet

DIGESTS = "digests.json"  # model-file digests by (path, size, mtime), in the model cache

KEY_DTYPE = np.dtype([("hi", "<u8"), ("lo", "<u8")])
KEY_FIELDS = ("instruction", "input", "output", "turns")
KEYS_SUFFIX = ".keys.npy"
COMPACT_AT = 64  # segments; a compaction merges them into one
LOCK = ".lock"  # one compaction at a time
READ_LOCK = ".read.lock"  # shared by readers, exclusive while a compaction deletes segments
_ABSENT = b"\xff" * 8  # a length no field can have: a null field


def record_keys(records: pa.Table) -> np.ndarray:
    """One exact 128-bit key (KEY_DTYPE) per record of everything a scorer reads (each field
    length-prefixed, so no field's text can run into the next; a missing one is marked)."""
    present = [f for f in KEY_FIELDS if f in records.column_names]
    columns = [records.column(f).to_pylist() for f in present]
    raw = bytearray()
    for values in zip(*columns):
        digest = hashlib.blake2b(digest_size=16)
        for value in values:
            if value is None:
                digest.update(_ABSENT)
            else:
                data = value.encode()
                digest.update(len(data).to_bytes(8, "little"))
                digest.update(data)
        raw += digest.digest()
    return np.frombuffer(bytes(raw), dtype=KEY_DTYPE).copy()


def keys_column(keys: np.ndarray) -> pa.Array:
    """Keys as an Arrow ``fixed_size_binary(16)`` column (how the read stage stores them),
    built from the raw bytes: a key may end in zero bytes, which numpy's ``S16`` would drop."""
    data = pa.py_buffer(np.ascontiguousarray(keys).tobytes())
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(keys), [None, data])


def keys_of(records: pa.Table) -> np.ndarray:
    """The records' keys: their ``cache_key`` column when the read stage wrote one."""
    if "cache_key" not in records.column_names:
        return record_keys(records)
    column = records.column("cache_key").combine_chunks()
    if column.null_count:
        raise ValueError("cache_key column holds nulls")
    data = column.buffers()[1]
    return np.frombuffer(data, dtype=KEY_DTYPE, count=len(column),
                         offset=column.offset * KEY_DTYPE.itemsize).copy()


def models_digest(paths: list[Path]) -> str:
    """:func:`files_digest` of ``paths``, remembered by each file's (path, size, mtime) in one
    JSON file of the machine's model cache, shared by every run: hashing a model's weights
    costs 0.5-1 s, so once per model version, not once per fresh run folder."""
    from car_engine.models.registry import cache_dir

    memo = cache_dir() / DIGESTS
    stamp = json.dumps([[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns]
                        for p in paths])
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if stamp not in known:
        known[stamp] = files_digest(paths)
        write_json(memo, known)
    return str(known[stamp])


def files_digest(paths: list[Path]) -> str:
    """SHA-256 over the names and bytes of model files (what a scorer's output depends on
    besides its parameters)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for piece in iter(lambda: f.read(1 << 20), b""):
                digest.update(piece)
    return digest.hexdigest()


class ScoreCache:
    """One scorer's cached outputs: ``lookup`` what is known, ``add`` what was computed."""

    def __init__(self, root: str | Path, stage: str, fingerprint: str) -> None:
        self.folder = Path(root) / f"{stage}-{fingerprint}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._index: tuple[np.ndarray, np.ndarray, np.ndarray, list[str]] | None = None

    def segments(self) -> list[str]:
        """The committed segments' names (without suffix), oldest name first."""
        return sorted(p.name.removesuffix(KEYS_SUFFIX) for p in self.folder.glob(
            "seg-*" + KEYS_SUFFIX))

    def _catalog(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """(segment names, and over all their entries: key, segment number, row)."""
        for _ in range(5):  # a compaction may remove a segment between listing and reading
            names = self.segments()
            try:
                parts = [np.load(self.folder / (name + KEYS_SUFFIX)) for name in names]
            except FileNotFoundError:
                continue
            break
        else:
            raise RuntimeError(f"{self.folder}: segments keep vanishing while being read")
        if not parts:
            return names, np.empty(0, KEY_DTYPE), np.empty(0, np.int64), np.empty(0, np.int64)
        segment = np.concatenate([np.full(len(p), i, np.int64) for i, p in enumerate(parts)])
        row = np.concatenate([np.arange(len(p), dtype=np.int64) for p in parts])
        return names, np.concatenate(parts), segment, row

    def _load_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """(sorted keys, segment number and row of each) over every committed segment."""
        names, keys, segment, row = self._catalog()
        order = np.argsort(keys, kind="stable")  # equal keys: the oldest segment first
        return keys[order], segment[order], row[order], names

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, pa.Table | np.ndarray | None]:
        """(found mask, cached values of the found keys in their order: a table without ``id``
        or a matrix; None when nothing was found)."""
        with self._lock(READ_LOCK, fcntl.LOCK_SH):  # no compaction deletes while we read
            return self._lookup(keys)

    def _lookup(self, keys: np.ndarray) -> tuple[np.ndarray, pa.Table | np.ndarray | None]:
        for _ in range(5):
            if self._index is None:
                self._index = self._load_index()
            known, segment, row, names = self._index
            at = np.searchsorted(known, keys)
            found = np.zeros(len(keys), dtype=bool)
            inside = at < len(known)
            found[inside] = known[at[inside]] == keys[inside]
            if not found.any():
                return found, None
            try:
                return found, self._gather(names, segment[at[found]], row[at[found]])
            except FileNotFoundError:  # compacted away since the index was read: the merged
                self._index = None     # segment was committed first, so read the folder again
        raise RuntimeError(f"{self.folder}: segments keep vanishing while being read")

    def _gather(self, names: list[str], seg: np.ndarray, rows: np.ndarray
                ) -> pa.Table | np.ndarray:
        """Values of (segment, row) pairs, in the given order."""
        parts, where = [], np.empty(len(seg), dtype=np.int64)
        filled = 0
        for s in np.unique(seg):
            pick = np.flatnonzero(seg == s)
            parts.append(self._read(names[s], rows[pick]))
            where[pick] = np.arange(filled, filled + len(pick))
            filled += len(pick)
        if isinstance(parts[0], np.ndarray):
            return np.concatenate(parts)[where]
        return pa.concat_tables(parts).take(pa.array(where)).combine_chunks()

    def _read(self, name: str, rows: np.ndarray) -> pa.Table | np.ndarray:
        matrix = self.folder / (name + ".npy")
        if matrix.is_file():
            return np.asarray(np.load(matrix, mmap_mode="r")[rows])
        return pq.read_table(self.folder / (name + ".parquet")).take(pa.array(rows))

    def add(self, keys: np.ndarray, values: pa.Table | np.ndarray) -> None:
        """Add computed values (a table without ``id``, or a matrix) for ``keys``."""
        if len(keys) == 0:
            return
        self._write(keys, values)
        if len(self.segments()) >= COMPACT_AT:
            self.compact()

    def _write(self, keys: np.ndarray, values: pa.Table | np.ndarray) -> None:
        """One new segment: values first, then the keys file that commits it."""
        name = f"seg-{uuid.uuid4().hex}"
        if isinstance(values, np.ndarray):
            write_npy(self.folder / (name + ".npy"), values)
        else:
            write_parquet(self.folder / (name + ".parquet"), values)
        write_npy(self.folder / (name + KEYS_SUFFIX), keys)
        self._index = None

    def compact(self) -> None:
        """Merge every committed segment into one (readers keep working throughout: the merged
        segment is committed before the old ones go)."""
        with self._locked() as got:
            if not got:
                return  # another process is compacting
            names, keys, seg, rows = self._catalog()
            if len(names) < 2:
                return
            _, first = np.unique(keys, return_index=True)  # one copy of each key
            first.sort()
            merged = self._gather(names, seg[first], rows[first])
            self._write(keys[first], merged)
            with self._lock(READ_LOCK, fcntl.LOCK_EX):  # readers finish what they listed
                for n in names:
                    (self.folder / (n + KEYS_SUFFIX)).unlink()  # uncommit first
                    for suffix in (".npy", ".parquet"):
                        (self.folder / (n + suffix)).unlink(missing_ok=True)
            self._index = None

    @contextmanager
    def _lock(self, name: str, mode: int) -> Iterator[None]:
        """Hold flock ``mode`` on ``folder/name`` (blocking)."""
        with open(self.folder / name, "a") as handle:
            fcntl.flock(handle, mode)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def _locked(self) -> Iterator[bool]:
        with open(self.folder / LOCK, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

