"""An answer's relevance to its own instruction (car_engine/relevance.py), the guard's signal
for answers of other instructions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from car_engine.relevance import (
    RELEVANCE_COLUMN,
    latin_share,
    prompt_text,
    records_relevance,
    relevance,
)

PROMPTS = ["How do I boil an egg?", "Name three primary colors.",
           "Translate 'good morning' into French."]
ANSWERS = ["Put the egg in boiling water for about nine minutes, then cool it in cold water.",
           "Red, yellow and blue are the three primary colors.",
           "'Good morning' in French is 'Bonjour'."]


def test_relevance_is_the_cosine_of_the_two_embeddings_and_nan_when_blank():
    rng = np.random.default_rng(0)
    table = {t: rng.normal(size=8) for t in [*PROMPTS, *ANSWERS]}
    seen: list[list[str]] = []

    def embed(texts: list[str]) -> np.ndarray:
        seen.append(texts)
        return np.stack([table[t] for t in texts])

    prompts, answers = [*PROMPTS, "  "], [*ANSWERS, "an answer to nothing"]
    got = relevance(prompts, answers, embed)
    want = [table[p] @ table[a] / np.linalg.norm(table[p]) / np.linalg.norm(table[a])
            for p, a in zip(PROMPTS, ANSWERS, strict=True)]
    np.testing.assert_allclose(got[:3], want, rtol=1e-12)
    assert np.isnan(got[3]) and len(seen) == 1  # one embedding call, the blank row left out
    assert np.isnan(relevance(["q"], [""], embed)).all()
    with pytest.raises(ValueError):
        relevance(["q"], [], embed)


def test_text_mostly_outside_the_latin_script_gets_no_judgement():
    assert latin_share("Bonjour, ça va? Über naïve") == 1.0
    assert latin_share("1234 !!") == 1.0  # no letters: nothing says it is out of reach
    assert latin_share("고등교육의 필요성 essay") < 0.5
    calls: list[list[str]] = []

    def embed(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return np.ones((len(texts), 4))

    got = relevance(["고등교육의 필요성에 관한 에세이", "Écris un poème", "Name a color"],
                    ["Higher education matters.", "Les roses sont rouges.", "Это синий."],
                    embed)
    assert np.isnan(got[0]) and got[1] == pytest.approx(1.0) and np.isnan(got[2])
    assert calls == [["Écris un poème", "Les roses sont rouges."]]


def test_prompt_text_joins_the_input_only_when_there_is_one():
    assert prompt_text(" Sum these. ", "") == "Sum these."
    assert prompt_text("Sum these.", " 2 and 3 ") == "Sum these.\n2 and 3"


def test_own_answer_is_more_relevant_than_another_instructions_on_the_default_embedder():
    from car_engine.embed import Embedder

    embedder = Embedder()
    records = pa.table({"id": ["a", "b", "c"], "instruction": PROMPTS, "input": [""] * 3,
                        "output": ANSWERS})
    own = records_relevance(records, lambda t: embedder.embed(t, progress=False))
    assert own.column("id").to_pylist() == ["a", "b", "c"]
    shifted = records.set_column(3, "output", pa.array(ANSWERS[1:] + ANSWERS[:1]))
    other = records_relevance(shifted, lambda t: embedder.embed(t, progress=False))
    mine = np.array(own.column(RELEVANCE_COLUMN).to_pylist())
    theirs = np.array(other.column(RELEVANCE_COLUMN).to_pylist())
    assert (mine > theirs + 0.1).all(), (mine, theirs)
