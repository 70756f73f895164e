"""Exact-duplicate content: one 64-bit hash per record of everything the record carries (the
pair text every scorer sees, and every turn of a conversation), and which record of each group
of equal hashes survives (the best-scored one); the same rule for any grouping (near and
semantic duplicates, SPEC §9)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa

from car_engine import native
from car_engine.corpus import pair_text

RECORD_FIELDS = ("instruction", "input", "output")


def content_hashes(table: pa.Table) -> np.ndarray | None:
    """Hashes (uint64) of the content of every row, equal for contents that differ only in
    case, Unicode composition or whitespace; None when the record fields are absent.

    A single-exchange record hashes its SPEC §1 pair text. A conversation of more turns also
    hashes every turn (role and text): conversations that open alike and then diverge are not
    duplicates (the pair text holds only their first exchange)."""
    if not all(f in table.column_names for f in RECORD_FIELDS):
        return None
    cols = [table.column(f).to_pylist() for f in RECORD_FIELDS]
    hashes = native.hash_texts(pair_text(i or "", x or "", o or "") for i, x, o in zip(*cols))
    if "turns" in table.column_names:
        rows, turns = _conversations(table.column("turns").to_pylist())
        if rows:
            hashes[rows] = _conversation_hashes(hashes[rows], turns)
    return hashes


def _conversations(column: list[str | None]) -> tuple[list[int], list[list[dict[str, str]]]]:
    """The rows whose conversation has more than its first exchange, and their turns."""
    rows, found = [], []
    for row, raw in enumerate(column):
        if raw is not None:
            turns = json.loads(raw)
            if len(turns) > 2:  # two turns are the pair text's user and assistant turns
                rows.append(row)
                found.append(turns)
    return rows, found


def _conversation_hashes(pair_hashes: np.ndarray, conversations: list[list[dict[str, str]]]
                         ) -> np.ndarray:
    """One hash per conversation of its pair text's hash and every turn's role and text, each
    hashed (so normalised) on its own: no turn text can imitate a turn boundary."""
    texts = [text for turns in conversations for turn in turns
             for text in (turn["role"], turn["content"])]
    parts = native.hash_texts(texts).astype("<u8")
    out = np.empty(len(conversations), dtype=np.uint64)
    start = 0
    for n, (pair_hash, turns) in enumerate(zip(pair_hashes, conversations)):
        end = start + 2 * len(turns)
        blob = np.asarray(pair_hash, dtype="<u8").tobytes() + parts[start:end].tobytes()
        out[n] = int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little")
        start = end
    return out


def survivors(hashes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows that survive exact dedup: the best-scored row of every group
    of equal hashes (ties by lower index; NaN scores last)."""
    keep = np.zeros(hashes.shape[0], dtype=bool)
    keep[native.dedup(hashes, scores)] = True
    return keep


def collapse_groups(groups: np.ndarray, eligible: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Collapse every group (rows of equal ``groups`` label) to its best eligible member
    (highest score, ties by input order; NaN = not eligible). Returns (the scores with the
    others NaN, the mask of rows collapsed, the kept row of each row's group)."""
    groups = np.asarray(groups, dtype=np.int64)
    if groups.shape != eligible.shape:
        raise ValueError(f"{groups.shape[0]} group labels for {eligible.shape[0]} rows")
    _, codes = np.unique(groups, return_inverse=True)
    kept = native.dedup(codes.astype(np.uint64), eligible)  # one row per group, best first
    kept_of_group = np.empty(kept.size, dtype=np.int64)
    kept_of_group[codes[kept]] = kept
    kept_of = kept_of_group[codes]
    dup_rows = (kept_of != np.arange(groups.size)) & ~np.isnan(eligible)
    return np.where(dup_rows, np.nan, eligible), dup_rows, kept_of
