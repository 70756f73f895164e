"""The composite IQS head's token statistics (car_engine/iqs/token_stats.py) against a plain
Python reference written from their definitions, on a padded batch of real pair texts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from car_engine.batching import pad_batch, tokenize
from car_engine.iqs.model import response_mask
from car_engine.iqs.store import load_model, segment_markers
from car_engine.iqs.token_stats import (
    EARLY,
    END_JUDGED_BELOW,
    NGRAM,
    START_TOKENS,
    STAT_NAMES,
    TokenStatistics,
    stat_token_ids,
)

ANSWER = ("Three fruits that are easy to find are apples, bananas and cherries. Apples keep "
          "for weeks in a cool place. Bananas ripen fast, so buy them green. Cherries are "
          "best in early summer, when they are sweet and cheap.")
TEXTS = [
    f"Instruction: Name three fruits and say when to buy them Response: {ANSWER}",
    "Instruction: Name three fruits Response: The capital of France is Paris, and it is big",
    "Instruction: Name three fruits Response: " + " ".join(["I like apples a lot."] * 8),
    "Instruction: Name three fruits Response: However, cherries too. In conclusion, there "
    "are many fruits to pick from and you should pick some fruits you like. Apples and "
    "bananas are also fine fruits to consider here:",
    "Instruction: Sum the numbers Input: 2 and 3 Response: 5",
    "Instruction: Explain Response: " + "word " * 300,  # cut by the window
    "Instruction: a prompt whose response marker is missing",
]


def reference(ids: list[int], start: int, table: dict[str, set[int]]) -> list[float]:
    """Each statistic from its definition, for one unpadded text whose response starts at
    token ``start`` (len(ids) when it has none)."""
    answer = ids[start:]
    size = len(answer)
    content = [i not in table["not-content"] for i in ids]
    prompt_words = {ids[p] for p in range(start) if content[p]}
    answer_words = {ids[p] for p in range(start, len(ids)) if content[p]}
    grams = [tuple(answer[i:i + NGRAM]) for i in range(size - NGRAM + 1)]
    repeated = (sum(g in grams[:i] for i, g in enumerate(grams)) / len(grams)) if grams else 0.0
    judged = len(ids) < END_JUDGED_BELOW and size > 1
    last = ids[-2] if len(ids) >= 2 else -1
    closing, colon = last in table["closing"], last in table["colon"]
    open_end = float(judged and not closing and not colon)
    colon_end = float(judged and colon)
    mine = [p for p in range(start, len(ids)) if content[p]]
    theirs = [p for p in range(start) if content[p]]

    def share(positions: list[int]) -> float:
        return sum(ids[p] in prompt_words for p in positions) / max(1, len(positions))

    opening = [p for p in mine if p - start < START_TOKENS]
    rest = [p for p in mine if p - start >= START_TOKENS]
    late = share(rest) - share(opening) if size > 2 * START_TOKENS else 0.0
    connective = float(size > 0 and answer[0] in table["connective"])
    early = float(any(answer[k] in table["conclusion"] for k in range(size)
                      if k + 1 <= EARLY * size))
    return [repeated, open_end, colon_end, share(mine),
            sum(ids[p] in answer_words for p in theirs) / max(1, len(theirs)), late,
            connective, early]


@pytest.fixture(scope="module")
def tokenizer():
    return load_model("default")[1]


@pytest.fixture(scope="module")
def batch(tokenizer) -> tuple[list[list[int]], torch.Tensor, np.ndarray]:
    """TEXTS tokenized at 256, their response masks and their statistics (one padded batch)."""
    tokens = tokenize(tokenizer, TEXTS, 256)
    ids, mask = (torch.from_numpy(a) for a in pad_batch(tokens, np.arange(len(TEXTS)), 0))
    response = response_mask(ids, mask, segment_markers(tokenizer))
    stats = TokenStatistics(stat_token_ids(tokenizer))(ids, mask, response).numpy()
    return tokens, response, stats


def test_statistics_match_a_plain_reference_on_a_padded_batch(tokenizer, batch) -> None:
    tokens, response, got = batch
    table = {k: set(v) for k, v in stat_token_ids(tokenizer).items()}
    for row, text_ids in enumerate(tokens):
        found = bool(response[row].any())
        start = int(response[row].to(torch.int64).argmax()) if found else len(text_ids)
        want = reference(list(text_ids), start, table)
        np.testing.assert_allclose(got[row], want, atol=1e-6,
                                   err_msg=f"text {row}: {dict(zip(STAT_NAMES, got[row]))}")


def test_statistics_say_what_they_name(batch) -> None:
    stats = batch[2]
    named = [dict(zip(STAT_NAMES, row)) for row in stats]
    assert named[0]["repeated"] == 0 and named[0]["open-end"] == 0
    assert named[0]["answer-in-prompt"] > 0.1 and named[1]["answer-in-prompt"] == 0
    assert named[1]["open-end"] == 1  # "... it is big" stops without a sentence end
    assert named[2]["repeated"] > 0.8  # a loop
    assert named[3]["colon-end"] == 1 and named[3]["connective-start"] == 1
    assert named[3]["early-conclusion"] == 1
    assert named[5]["open-end"] == 0  # cut by the window, not by the writer
    assert not stats[6].any()  # no response: nothing to judge
