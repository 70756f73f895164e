"""Test helper: put items on disk in each corpus format, byte for byte as a user's file would be."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

# (format, gzipped) for every reader the corpus module has.
FORMATS = [("json", False), ("json", True), ("jsonl", False), ("jsonl", True),
           ("parquet", False), ("parquet", True)]


def encode(items: list[Any], fmt: str) -> bytes:
    """The bytes of a JSON array, JSON Lines or Parquet file holding ``items``."""
    if fmt == "json":
        return json.dumps(items, ensure_ascii=False, indent=1).encode("utf-8")
    if fmt == "jsonl":
        return "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items).encode("utf-8")
    if fmt == "parquet":
        buffer = io.BytesIO()
        # pa.array infers one type from every item (from_pylist would look at the first only),
        # so mixed shapes become one table with nulls where an item lacks a field.
        pq.write_table(pa.Table.from_struct_array(pa.array(items)), buffer)
        return buffer.getvalue()
    raise ValueError(f"unknown format {fmt}")


def write_bytes(folder: Path, data: bytes, fmt: str, *, gz: bool = False,
                name: str = "corpus") -> Path:
    """Write raw corpus bytes to ``folder/name.fmt[.gz]`` and return the path."""
    path = folder / f"{name}.{fmt}{'.gz' if gz else ''}"
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_items(folder: Path, items: list[Any], fmt: str, *, gz: bool = False,
                name: str = "corpus") -> Path:
    """Write ``items`` as a corpus file of the given format (optionally gzipped)."""
    return write_bytes(folder, encode(items, fmt), fmt, gz=gz, name=name)


def gzip_cut_short(data: bytes, keep: float = 0.6) -> bytes:
    """A gzip stream of ``data`` with its tail (and so its end-of-stream marker) cut off."""
    compressed = gzip.compress(data)
    return compressed[: int(len(compressed) * keep)]


# `car-engine run` flags of the whole-run tests (test_pipeline, test_rundir) on that file: six
# shards of 15; they all compare against one clean run (conftest's session `reference_run`).
RUN_SHARD = 15
RUN_ARGS = ["--n1", "5", "--n2", "1", "--shard-size", str(RUN_SHARD), "--quiet"]
MIXED_GOOD = 90  # real pairs in write_mixed_corpus's file; it holds 3 more lines


def write_mixed_corpus(path: Path, records: pa.Table) -> Path:
    """The first MIXED_GOOD records as Alpaca JSONL items with a cut line, an empty output and
    an exact duplicate (of the 4th item, id 'dup-of-3') mixed in after the 10th line."""
    rows = records.slice(0, MIXED_GOOD).to_pylist()
    lines = [json.dumps({"id": r["id"], "instruction": r["instruction"], "input": r["input"],
                         "output": r["output"]}) for r in rows]
    dup = dict(json.loads(lines[3]), id="dup-of-3")
    lines[10:10] = ['{"instruction": "cut', json.dumps({"instruction": "x", "output": ""}),
                    json.dumps(dup)]
    path.write_text("\n".join(lines) + "\n")
    return path


def subset_csv(src: Path, out: Path, pairs: int) -> Path:
    """The first ``pairs`` adjacent (original, revised) pairs of an expert-revision CSV."""
    with open(src, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    with open(out, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows[: 1 + 2 * pairs])
    return out
