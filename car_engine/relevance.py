"""How well an answer fits its own instruction: the cosine of the prompt's and the answer's
sentence embeddings (the default embedder, all-MiniLM-L6-v2, was trained on question-answer
pairs among others, so this is its semantic-search score).

The IFD quality guard (car_engine/quality_guard.py) reads it to stop answers of other
instructions: they are fluent, so neither the IQS floor nor the direct-loss ceiling sees them,
and their IFD sits among the real top picks (benchmarks/RESULTS.md, "IFD quality guard"). On
the IQS robustness suite the own answer is closer to its instruction than another
instruction's answer in 100% of the validation pairs.

Both texts are embedded on their own (the pair text's embedding mixes them), so this is two
extra passes of the small encoder over about a pair's tokens: a fraction of IFD's two passes
of the causal LM. A multi-turn record is judged on its first turn (its instruction and
output columns). The default embedder learned English: where most letters of the prompt or of
the answer are outside the Latin script (Korean, Chinese, Russian...), its cosine says little,
so the relevance is NaN there (no judgement: the guard never trips on NaN) rather than a low
score that would drop every such pair.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa

from car_engine.corpus.records import user_text

RELEVANCE_COLUMN = "relevance"
LATIN_MIN = 0.5  # below this share of Latin letters a text is out of the embedder's reach
_LATIN_END = 0x250  # Basic Latin to Latin Extended-B: English, French, German, Vietnamese...


def latin_share(text: str) -> float:
    """The share of ``text``'s letters in the Latin script (1.0 when it has none)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 1.0
    return sum(ord(c) < _LATIN_END for c in letters) / len(letters)


def prompt_text(instruction: str, input_text: str) -> str:
    """What the answer should fit: the instruction, then its input (when there is one)."""
    return user_text(instruction.strip(), input_text.strip())


def relevance(prompts: Sequence[str], answers: Sequence[str],
              embed: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """Cosine of ``embed(prompt)`` and ``embed(answer)`` per row (float64); NaN where the
    prompt or the answer is blank (nothing to compare) or mostly outside the Latin script
    (:data:`LATIN_MIN`: beyond the default embedder)."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts for {len(answers)} answers")
    out = np.full(len(prompts), np.nan)
    rows = [i for i, (p, a) in enumerate(zip(prompts, answers, strict=True))
            if p.strip() and a.strip() and min(latin_share(p), latin_share(a)) >= LATIN_MIN]
    if not rows:
        return out
    vectors = np.asarray(embed([prompts[i] for i in rows] + [answers[i] for i in rows]),
                         dtype=np.float64)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    out[rows] = np.einsum("ij,ij->i", vectors[: len(rows)], vectors[len(rows):])
    return out


def records_relevance(records: pa.Table, embed: Callable[[list[str]], np.ndarray]) -> pa.Table:
    """``id`` and :data:`RELEVANCE_COLUMN` (float64; NaN where :func:`relevance` gives no
    judgement) of every record."""
    cols = {c: records.column(c).to_pylist() for c in ("instruction", "input", "output")}
    prompts = [prompt_text(i or "", x or "") for i, x in zip(cols["instruction"], cols["input"],
                                                             strict=True)]
    answers = [o or "" for o in cols["output"]]
    return pa.table({"id": records.column("id"),
                     RELEVANCE_COLUMN: pa.array(relevance(prompts, answers, embed),
                                                pa.float64())})
