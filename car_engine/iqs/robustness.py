"""Corrupted copies of good answers, and the suite that checks an IQS model ranks the good
answer above each of them (issue #21: a quality score that cannot be fooled).

From the expert-revised answers of a pairs file (``texts[2k + 1]``), each kind makes one bad
copy per pair, deterministically for a seed:

- ``random-same``: random corpus words, as many as the answer has;
- ``random-long``: random corpus words, 2-3x the answer's length;
- ``loop``: the answer's first sentence repeated to 3x the answer's length (a generation loop);
- ``off-topic``: another instruction's revised answer under this instruction;
- ``truncate``: the answer's first 20-50% of words;
- ``shuffle``: the answer's sentences in another order;
- ``swap-instruction``: this answer under another pair's instruction (and input).

A kind that cannot corrupt an answer (one sentence to shuffle, too few words to cut) skips that
pair. The suite's figure per kind is the share of pairs where the good text scores higher by at
least the tie margin (SPEC §1's 0.01). Training draws its own negatives from the training split
with another seed (:func:`corrupt` is the same code).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from car_engine.iqs.pairs import TIE_MARGIN, Pairs

KINDS = ("random-same", "random-long", "loop", "off-topic", "truncate", "shuffle",
         "swap-instruction")
MARKER = " Response: "  # where the answer starts in a pair text (SPEC §1, the CSVs alike)
SUITE_SEED = 2021  # the validation suite's draws; training uses other seeds
MIN_WORDS_TO_CUT = 5  # a shorter answer cut to 20-50% would be a word or nothing
_SENTENCE_END = re.compile(r"((?<=[.!?])\s+|\s*\n\s*)")  # captured: split keeps it


@dataclass(frozen=True)
class Corruption:
    """One bad copy: ``good`` (a revised pair text) should outscore ``bad``."""

    kind: str
    pair: int  # the pair whose revised text is ``good``
    good: str
    bad: str


def split_pair_text(text: str) -> tuple[str, str]:
    """``(prompt, answer)`` of a pair text: the prompt ends with ``" Response: "``. The first
    marker after the ``" Input: "`` segment (when there is one) starts the answer."""
    start = text.find(" Input: ")
    cut = text.find(MARKER, max(start, 0))
    if cut < 0:
        cut = text.find(MARKER)
    if cut < 0:
        return text, ""
    return text[: cut + len(MARKER)], text[cut + len(MARKER):]


def sentences(answer: str) -> list[str]:
    """The answer's sentences (split after . ! ? and at line breaks), empty ones dropped."""
    return [s for s in _SENTENCE_END.split(answer.strip())[::2] if s.strip()]


def _derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of range(n) with no fixed point (another pair for every pair)."""
    if n < 2:
        return np.arange(n)
    return (np.arange(n) + rng.integers(1, n, size=n)) % n


def corrupt(pairs: Pairs, seed: int = SUITE_SEED, kinds: tuple[str, ...] = KINDS,
            limit: int | None = None) -> list[Corruption]:
    """One corrupted copy of each revised answer per kind (the first ``limit`` pairs only,
    when given), deterministic for ``seed``. Random words come from every answer of
    ``pairs``, so a suite on the validation split never sees a training word list."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown corruption kinds {sorted(unknown)} (known: {KINDS})")
    rng = np.random.default_rng(seed)
    split = [split_pair_text(pairs.texts[2 * k + 1]) for k in range(len(pairs))]
    vocabulary = [w for k in range(len(pairs)) for t in pairs.texts[2 * k: 2 * k + 2]
                  for w in split_pair_text(t)[1].split()]
    n = len(split) if limit is None else min(limit, len(split))
    others = _derangement(len(split), rng)
    out: list[Corruption] = []
    for kind in kinds:
        for k in range(n):
            prompt, answer = split[k]
            bad = _corrupt_one(kind, prompt, answer, split[others[k]], vocabulary, rng)
            if bad is not None and bad != pairs.texts[2 * k + 1]:
                out.append(Corruption(kind, k, pairs.texts[2 * k + 1], bad))
    return out


def _corrupt_one(kind: str, prompt: str, answer: str, other: tuple[str, str],
                 vocabulary: list[str], rng: np.random.Generator) -> str | None:
    words = answer.split()
    if not words:
        return None
    if kind in ("random-same", "random-long"):
        count = len(words) if kind == "random-same" else int(round(len(words) * rng.uniform(2, 3)))
        return prompt + " ".join(vocabulary[i] for i in rng.integers(0, len(vocabulary), count))
    if kind == "loop":
        first = sentences(answer)[0]
        repeats = max(2, -(-3 * len(words) // max(1, len(first.split()))))
        return prompt + " ".join([first] * repeats)
    if kind == "off-topic":
        return prompt + other[1]
    if kind == "truncate":
        if len(words) < MIN_WORDS_TO_CUT:
            return None
        keep = max(1, int(len(words) * rng.uniform(0.2, 0.5)))
        return prompt + " ".join(words[:keep])
    if kind == "shuffle":  # the sentences move, the breaks between them stay where they were
        pieces = _SENTENCE_END.split(answer.strip())
        parts, breaks = pieces[::2], pieces[1::2]
        if len([p for p in parts if p.strip()]) < 2:
            return None
        order = rng.permutation(len(parts))
        while [parts[i] for i in order] == parts:
            order = rng.permutation(len(parts))
        moved = [parts[i] for i in order]
        return prompt + "".join(p + b for p, b in zip(moved, [*breaks, ""]))
    # swap-instruction: the same answer under another pair's prompt
    return other[0] + answer


def win_shares(corruptions: list[Corruption], good: np.ndarray, bad: np.ndarray,
               tie_margin: float = TIE_MARGIN) -> dict[str, dict]:
    """Per kind: pairs, wins (good - bad >= tie_margin), share, ties and the mean gap."""
    table: dict[str, dict] = {}
    kinds = np.array([c.kind for c in corruptions])
    gap = np.asarray(good, dtype=np.float64) - np.asarray(bad, dtype=np.float64)
    for kind in dict.fromkeys(c.kind for c in corruptions):
        g = gap[kinds == kind]
        wins = int((g >= tie_margin).sum())
        table[kind] = {"pairs": len(g), "wins": wins, "share": wins / len(g),
                       "ties": int((np.abs(g) < tie_margin).sum()),
                       "mean_gap": float(g.mean())}
    return table


def run_suite(score_texts: Callable[[list[str]], np.ndarray], pairs: Pairs,
              seed: int = SUITE_SEED, limit: int | None = None) -> dict[str, dict]:
    """The suite for a scorer (``score_texts(texts) -> scores``): each distinct text is scored
    once; returns :func:`win_shares`, plus the length check (``length``)."""
    corruptions = corrupt(pairs, seed, limit=limit)
    revised = sorted({c.pair for c in corruptions})
    texts = list(dict.fromkeys([pairs.texts[2 * k + 1] for k in revised]
                               + [c.bad for c in corruptions]))
    position = {t: i for i, t in enumerate(texts)}
    scores = np.asarray(score_texts(texts), dtype=np.float64)
    table = win_shares(corruptions, scores[[position[c.good] for c in corruptions]],
                       scores[[position[c.bad] for c in corruptions]])
    table["length"] = length_check(pairs, score_texts, limit)
    return table


def length_check(pairs: Pairs, score_texts: Callable[[list[str]], np.ndarray],
                 limit: int | None = None) -> dict:
    """Does the score reward sheer length beyond what the experts did? Over the pairs:
    Spearman of (score gap) vs (answer word-count gap) between revised and original, next to
    the experts' own: the share of pairs where the longer answer is the revised one."""
    from car_engine.iqs.score import spearman

    n = len(pairs) if limit is None else min(limit, len(pairs))
    texts = pairs.texts[: 2 * n]
    lengths = np.array([len(split_pair_text(t)[1].split()) for t in texts], dtype=np.float64)
    scores = np.asarray(score_texts(texts), dtype=np.float64)
    length_gap = lengths[1::2] - lengths[::2]
    score_gap = scores[1::2] - scores[::2]
    differ = length_gap != 0
    longer_wins_model = float(((score_gap > 0) == (length_gap > 0))[differ].mean())
    return {"pairs": n, "experts_revised_longer": float((length_gap > 0).mean()),
            "model_prefers_longer": longer_wins_model,
            "spearman_score_vs_length": spearman(scores, lengths),
            "spearman_gap_vs_length_gap": spearman(score_gap, length_gap)}


def format_table(table: dict[str, dict]) -> str:
    """The suite as a Markdown table (one row per kind), then the length check."""
    lines = ["| corruption | pairs | good wins | share | ties | mean gap |",
             "|---|---|---|---|---|---|"]
    for kind, r in table.items():
        if kind != "length":
            lines.append(f"| {kind} | {r['pairs']} | {r['wins']} | {100 * r['share']:.1f}% | "
                         f"{r['ties']} | {r['mean_gap']:+.3f} |")
    if "length" in table:
        r = table["length"]
        lines.append("")
        lines.append(f"length ({r['pairs']} expert pairs): the longer answer is the revised one "
                     f"in {100 * r['experts_revised_longer']:.1f}%, the model prefers the longer "
                     f"in {100 * r['model_prefers_longer']:.1f}% (of pairs differing in length); "
                     f"Spearman score vs answer words {r['spearman_score_vs_length']:+.3f}")
    return "\n".join(lines)


def default_valid_csv() -> Path:
    """The validation split: ``$CAR_ENGINE_DATA/expert-revised/APE_score_valid.csv``, else
    ``../shared/data/expert-revised/`` beside the project root (see ../shared/data/README.md)."""
    root = os.environ.get("CAR_ENGINE_DATA")
    base = Path(root) if root else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return base / "expert-revised" / "APE_score_valid.csv"
