"""car_engine/repetition.py: the share of an answer's word 4-grams that repeat."""

from __future__ import annotations

import numpy as np
import pytest

from car_engine.repetition import answers_repetition, repeated_share


def _plain_share(text: str, n: int = 4) -> float:
    """The same measure counted the slow way: each n-gram seen before is one repeat."""
    words = "".join(c if c.isalnum() or c == "_" else " " for c in text.lower()).split()
    grams = [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]
    repeats = sum(1 for i, g in enumerate(grams) if g in grams[:i])
    return repeats / len(grams) if grams else 0.0


@pytest.mark.parametrize("text", [
    "The sky is blue because air scatters short wavelengths more than long ones.",
    "Step one. Step two. Step one. Step two. Step one.",
    "def f(x):\n    return x\n\ndef g(x):\n    return x",
    "short", "", "Ünïcode wörds wörds wörds wörds wörds",
])
def test_repeated_share_matches_a_plain_count(text):
    assert repeated_share(text) == pytest.approx(_plain_share(text))


def test_a_loop_scores_high_and_a_real_answer_low():
    sentence = "I am happy to help you with that question today. "
    assert repeated_share(sentence * 6) > 0.8
    answer = ("Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. "
              "It happens in the chloroplasts, where chlorophyll absorbs mostly red and blue "
              "light; the sugar feeds the plant and the oxygen is released into the air.")
    assert repeated_share(answer) == 0.0
    assert repeated_share("To be or not to be, that is the question. " + "x" * 3) < 0.2


def test_answers_repetition_is_one_float_per_answer_and_a_missing_answer_is_zero():
    out = answers_repetition(["a b c d a b c d", None, ""])
    assert out.dtype == np.float64 and out.tolist() == pytest.approx([0.2, 0.0, 0.0])
