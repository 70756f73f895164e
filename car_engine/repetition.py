"""How much of an answer repeats itself: the share of its word 4-grams that already occurred
earlier in it. A generation loop (a sentence said over and over) scores near 1; real answers
score low even when they are lists or code (ShareGPT answers: median 0.02, 99th percentile
0.30; benchmarks/RESULTS.md, "IFD quality guard").

The IFD quality guard (car_engine/quality_guard.py) drops answers above its ceiling. It needs
no model, so it holds whatever IQS model, causal LM or template a run uses.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

REPETITION_COLUMN = "repetition"
NGRAM = 4  # words: long enough that "of the" or "```python" repeating is no loop
_WORD = re.compile(r"\w+")


def repeated_share(text: str, n: int = NGRAM) -> float:
    """The share of ``text``'s word ``n``-grams (lower-cased) seen earlier in it; 0 when it
    has fewer than ``n`` words."""
    words = _WORD.findall(text.lower())
    grams = list(zip(*(words[i:] for i in range(n))))
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def answers_repetition(answers: Iterable[str | None]) -> np.ndarray:
    """:func:`repeated_share` of every answer (float64; a missing answer is 0)."""
    return np.array([repeated_share(a or "") for a in answers], dtype=np.float64)
