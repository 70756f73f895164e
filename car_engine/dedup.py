"""Exact-duplicate content: one 64-bit hash per record of the pair text every scorer sees,
and which record of each group of equal hashes survives (the best-scored one)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from car_engine import native
from car_engine.corpus import pair_text

RECORD_FIELDS = ("instruction", "input", "output")


def content_hashes(table: pa.Table) -> np.ndarray | None:
    """Hashes (uint64) of the SPEC §1 pair text of every row, equal for texts that differ only
    in case, Unicode composition or whitespace; None when the record fields are absent."""
    if not all(f in table.column_names for f in RECORD_FIELDS):
        return None
    cols = [table.column(f).to_pylist() for f in RECORD_FIELDS]
    return native.hash_texts(pair_text(i or "", x or "", o or "") for i, x, o in zip(*cols))


def survivors(hashes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows that survive exact dedup: the best-scored row of every group
    of equal hashes (ties by lower index; NaN scores last)."""
    keep = np.zeros(hashes.shape[0], dtype=bool)
    keep[native.dedup(hashes, scores)] = True
    return keep
