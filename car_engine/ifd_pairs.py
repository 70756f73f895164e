"""The exact-boundary pairs of SPEC §2 and the IFD table's rows: what the pair scorer
(:mod:`car_engine.ifd`) and the turn scorer (:mod:`car_engine.ifd_turns`) share.
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa

from car_engine.batching import head_ids
from car_engine.errors import UsageError
from car_engine.ifd_prompts import (
    EMPTY_ANSWER,
    OK,
    PROMPT_TOO_LONG,
    EncodedPair,
    prompt_text,
    start_token,
    text_column,
)

IFD_COLUMNS = ["id", "loss_cond", "loss_direct", "ppl_cond", "ppl_direct", "ifd_ppl", "ifd_loss",
               "n_tokens", "truncated", "status"]
IFD_SCHEMA = pa.schema([
    ("id", pa.string()), ("loss_cond", pa.float64()), ("loss_direct", pa.float64()),
    ("ppl_cond", pa.float64()), ("ppl_direct", pa.float64()), ("ifd_ppl", pa.float64()),
    ("ifd_loss", pa.float64()), ("n_tokens", pa.int64()), ("truncated", pa.bool_()),
    ("status", pa.string()),
])
SCORE_COLUMNS = IFD_COLUMNS[1:7]


def encode_pairs(tokenizer: Any, records: pa.Table, *, template: str, direct_header: str = "",
                 max_length: int = 512) -> list[EncodedPair]:
    """Tokenize every record's prompt and answer separately (no special tokens), join the ids
    so the boundary is exact, and cut the answer's tail to fit ``max_length``. A text longer
    than ``max_length`` tokens is tokenized from a prefix only (:func:`batching.head_ids`):
    every field of an ``ok`` pair is as from the whole text, and a prompt that leaves no room
    keeps at least ``max_length`` of its tokens in ``cond_ids``, not all."""
    if max_length < 2:
        raise UsageError(f"max_length must be at least 2, got {max_length}")
    text_column(records, "id")
    instructions, inputs = text_column(records, "instruction"), text_column(records, "input")
    outputs = text_column(records, "output")
    prompts = [prompt_text(template, i, x, tokenizer) for i, x in zip(instructions, inputs)]

    def ids(texts: list[str]) -> list[list[int]]:
        # max_length ids of a text tell all a pair needs: whether it fits, and what is kept
        return head_ids(tokenizer, texts, max_length, add_special_tokens=False)

    prompt_ids, answer_ids = ids(prompts), ids(outputs)
    header = ids([direct_header])[0] if direct_header else []
    start = start_token(tokenizer)
    pairs = []
    for prompt, answer, text in zip(prompt_ids, answer_ids, outputs):
        # A chat template may already open with BOS; do not double it.
        head = prompt if prompt[:1] == [start] else [start, *prompt]
        room = max_length - len(head)
        keep = answer[: max(room, 0)]
        if not text.strip() or not answer:
            status = EMPTY_ANSWER
        elif room <= 0:
            status = PROMPT_TOO_LONG
        else:
            status = OK
        pairs.append(EncodedPair(
            cond_ids=[*head, *keep], direct_ids=[start, *header, *keep], n_answer=len(keep),
            truncated=len(keep) < len(answer), status=status))
    return pairs


def score_row(rid: str, pair: EncodedPair, loss_cond: float | None,
              loss_direct: float | None) -> dict:
    """One output row: the IFD scores from the two mean losses, or nulls and the reason."""
    row = dict.fromkeys(SCORE_COLUMNS)
    row.update(id=rid, n_tokens=pair.n_answer, truncated=pair.truncated, status=pair.status)
    if pair.status != OK:
        row["n_tokens"] = 0
        return row
    assert loss_cond is not None and loss_direct is not None  # both are scored for an OK pair
    ppl_cond, ppl_direct = _exp(loss_cond), _exp(loss_direct)
    scores = {
        "loss_cond": loss_cond, "loss_direct": loss_direct,
        "ppl_cond": ppl_cond, "ppl_direct": ppl_direct,
        "ifd_ppl": ppl_cond / ppl_direct if ppl_direct else math.inf,
        "ifd_loss": loss_cond / loss_direct if loss_direct else math.inf,
    }
    if not all(math.isfinite(v) for v in scores.values()):
        row["status"] = "non-finite score (loss overflow or zero direct loss)"
        return row
    row.update(scores)
    return row


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def scores_table(ids: list[str], pairs: list[EncodedPair],
                 losses: list[tuple[float | None, float | None]]) -> pa.Table:
    """The IFD table (IFD_COLUMNS, one row per record, input order)."""
    rows = [score_row(rid, p, *lc) for rid, p, lc in zip(ids, pairs, losses)]
    return pa.Table.from_pylist(rows, schema=IFD_SCHEMA)
