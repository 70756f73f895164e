"""Expert-revision pairs (CSV ``src,score``: an original row scored 0, then its revision
scored 1) and the paper's pairwise accuracy over them (SPEC §1)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from car_engine.errors import CorpusError

TIE_MARGIN = 0.01  # a revised-minus-original gap below this is a tie, not a win


@dataclass(frozen=True)
class Pairs:
    """``texts[2k]`` is pair k's original, ``texts[2k + 1]`` its expert revision."""

    texts: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.texts) // 2

    def targets(self) -> np.ndarray:
        """0 for every original, 1 for every revision (the CaR regression targets)."""
        return np.tile(np.array([0.0, 1.0], dtype=np.float32), len(self))


def read_pairs(path: str | os.PathLike) -> Pairs:
    """Read and check an expert-revision CSV; a bad row is named by its line in the file."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    texts: list[str] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"src", "score"} <= set(reader.fieldnames):
            raise CorpusError(f"{path}: needs columns src,score (found {reader.fieldnames})")
        for row in reader:
            where = f"{path} row {len(texts) + 1} (line {reader.line_num})"
            expected = len(texts) % 2  # originals (0) and revisions (1) alternate
            try:
                score = float(row["score"])
            except (TypeError, ValueError):
                raise CorpusError(f"{where}: score {row['score']!r} is not a number") from None
            if score != expected:
                raise CorpusError(f"{where}: score {score:g} breaks the original(0)/revised(1) "
                                  "alternation of adjacent rows")
            if not row["src"] or not row["src"].strip():
                raise CorpusError(f"{where}: empty src text")
            texts.append(row["src"])
    if not texts or len(texts) % 2:
        raise CorpusError(f"{path}: needs a whole number of (original, revised) pairs, "
                          f"found {len(texts)} rows")
    return Pairs(texts, str(path))


def pairwise_accuracy(scores: np.ndarray, tie_margin: float = TIE_MARGIN) -> dict:
    """Paper's Table 1 metric over interleaved scores (original, revised, original, ...):
    a pair is correct when revised - original >= tie_margin; a smaller |gap| is a tie."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1, 2)
    gap = scores[:, 1] - scores[:, 0]
    correct = int((gap >= tie_margin).sum())
    ties = int((np.abs(gap) < tie_margin).sum())
    pairs = len(gap)
    return {"accuracy": correct / pairs if pairs else float("nan"), "correct": correct,
            "ties": ties, "wrong": pairs - correct - ties, "pairs": pairs}
