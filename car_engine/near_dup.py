"""Near duplicates (SPEC §9): MinHash signatures over word 5-gram shingles of each record's
normalised text, banded LSH for candidates, candidates verified by estimated Jaccard, and
connected components as groups (all of it in csrc/minhash.cpp).

The text a record is shingled by is its SPEC §1 pair text, followed by every later turn of a
conversation (so conversations that open alike and then diverge are not near copies),
case-folded and NFC-normalised like the exact content hash; whitespace is collapsed natively.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from car_engine import native
from car_engine.corpus import pair_text
from car_engine.dedup_params import NearDupParams
from car_engine.errors import CorpusError

RECORD_FIELDS = ("instruction", "input", "output")
DEFAULT_PARAMS = NearDupParams()


def shingle_texts(table: pa.Table, name: str = "records") -> list[str]:
    """The text each row is shingled by: its pair text, then the text of every turn after the
    first exchange of a conversation (not normalised; :func:`signatures` does that). ``name``
    names the table in the error when it lacks the record fields."""
    missing = [f for f in RECORD_FIELDS if f not in table.column_names]
    if missing:
        raise CorpusError(f"{name}: near duplicates need the record fields (no "
                          f"{', '.join(missing)}; give --corpus to take them from the corpus)")
    cols = [table.column(f).to_pylist() for f in RECORD_FIELDS]
    texts = [pair_text(i or "", x or "", o or "") for i, x, o in zip(*cols)]
    if "turns" in table.column_names:
        for row, raw in enumerate(table.column("turns").to_pylist()):
            if raw is not None:
                turns = json.loads(raw)
                if len(turns) > 2:  # the first two are the pair text's exchange
                    texts[row] += " " + " ".join(t["content"] for t in turns[2:])
    return texts


def signatures(table: pa.Table, params: NearDupParams = DEFAULT_PARAMS, threads: int = 0,
               name: str = "records") -> np.ndarray:
    """MinHash signatures ``[rows, num_perm]`` (uint32) of every row of ``table``."""
    return native.minhash_signatures(shingle_texts(table, name), params.num_perm, params.seed,
                                     params.ngram, threads)


@dataclass
class NearGroups:
    """What near-duplicate detection found: ``groups[i]`` is the smallest row of row i's
    group (i itself when it has no near copy), and every candidate pair LSH proposed with its
    estimated Jaccard (``pairs`` [m, 2] rows, ``similarity`` [m]); those >= the threshold are
    the edges of the groups."""

    groups: np.ndarray
    pairs: np.ndarray
    similarity: np.ndarray
    threshold: float

    @property
    def n_groups(self) -> int:
        """Groups of two or more rows."""
        multi = np.bincount(self.groups, minlength=self.groups.size) > 1
        return int(multi.sum())


def near_groups(sigs: np.ndarray, threshold: float, params: NearDupParams = DEFAULT_PARAMS,
                threads: int = 0) -> NearGroups:
    """Group rows whose signatures agree in some LSH band and whose estimated Jaccard is
    >= ``threshold``, by connected components (deterministic: no order or thread decides)."""
    groups, left, right, sim = native.lsh_groups(sigs, params.bands, params.rows, threshold,
                                                 threads)
    return NearGroups(groups, np.stack([left, right], axis=1), sim, float(threshold))


def dedup_summary(found: NearGroups, ids: list[str], kept: np.ndarray, bins: int = 20,
                  examples: int = 3) -> dict:
    """summary.json's account of near duplicates: the distribution of the candidates'
    estimated Jaccard (the cut at the threshold), the number of groups, and a few example
    groups by id (the kept member first)."""
    counts, edges = np.histogram(found.similarity.astype(np.float64), bins=bins, range=(0, 1))
    return {"threshold": found.threshold, "candidate_pairs": int(found.similarity.size),
            "verified_pairs": int((found.similarity >= found.threshold).sum()),
            "groups": found.n_groups, "histogram": {"edges": edges.round(4).tolist(),
                                                    "counts": counts.tolist()},
            "examples": example_groups(found.groups, ids, kept, examples)}


def example_groups(groups: np.ndarray, ids: list[str], kept: np.ndarray, n: int
                   ) -> list[list[str]]:
    """The ``n`` largest groups (ties: the earliest), as ids with the kept member first."""
    sizes = np.bincount(groups, minlength=groups.size)
    roots = np.flatnonzero(sizes > 1)
    roots = roots[np.lexsort((roots, -sizes[roots]))][:n]
    out = []
    for root in roots:
        members = np.flatnonzero(groups == root)
        members = members[np.argsort(~kept[members], kind="stable")]  # the kept one first
        out.append([str(ids[m]) for m in members[:10]])
    return out
