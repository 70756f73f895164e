"""IQS and embeddings per turn (SPEC §5): each scored turn of a conversation is the pair text
of SPEC §1 with u_t as instruction, an empty input and a_t as output (the system message is in
no text); a conversation's IQS aggregates its turns' (``mean|min|first``, the per-turn list
kept as ``turn_iqs``), its embedding is the mean of its turns' renormalised to unit length.

Every text of a shard (single-turn pairs and turns alike) goes to the encoder as one list, so
its length bucketing batches turns of all conversations together: a turn costs what a pair
costs. With ``--turns first`` (or for a single-turn record) the text is the record's own pair
text, as before.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa

from car_engine.corpus.conversations import parse_json
from car_engine.corpus.records import pair_text, pair_texts

TURN_IQS_SCHEMA = pa.schema([("id", pa.string()), ("iqs", pa.float64()),
                             ("turn_iqs", pa.list_(pa.float64()))])


def turn_texts(records: pa.Table, turns: str) -> tuple[list[str], list[list[int | None]]]:
    """The texts to encode, and per record the index into them of each of its turns (None
    for a turn that is not scored); a record without turns (or ``turns`` ``first``) has one
    text, its pair text."""
    if turns == "first" or "turns" not in records.column_names:
        return pair_texts(records), [[i] for i in range(records.num_rows)]
    own = pair_texts(records)
    texts: list[str] = []
    slots: list[list[int | None]] = []
    for i, chat in enumerate(records.column("turns").to_pylist()):
        if chat is None:
            slots.append([len(texts)])
            texts.append(own[i])
            continue
        row: list[int | None] = []
        for turn in parse_json(chat).turns:
            if turn.scored:
                row.append(len(texts))
                texts.append(pair_text(turn.user, "", turn.reply))
            else:
                row.append(None)
        slots.append(row)
    return texts, slots


def aggregate(values: list[float], how: str) -> float:
    """A conversation's IQS from its scored turns' (in turn order)."""
    if how == "min":
        return min(values)
    if how == "first":
        return values[0]
    return float(np.mean(values))


def iqs_turns(records: pa.Table, score_texts: Callable[[list[str]], np.ndarray], *,
              turns: str, how: str) -> pa.Table:
    """The IQS table: ``id``, ``iqs`` and (``turns`` ``all``) ``turn_iqs``."""
    texts, slots = turn_texts(records, turns)
    return iqs_table(records, slots, score_texts(texts), turns=turns, how=how)


def iqs_table(records: pa.Table, slots: list[list[int | None]], scores: np.ndarray, *,
              turns: str, how: str) -> pa.Table:
    """The IQS table from the scores of :func:`turn_texts`' texts (``slots`` its second half)."""
    ids = records.column("id").cast(pa.string())
    if turns == "first":
        return pa.table({"id": ids, "iqs": pa.array(scores, pa.float64())})
    per_turn = [[None if s is None else float(scores[s]) for s in row] for row in slots]
    iqs = [aggregate([v for v in row if v is not None], how) for row in per_turn]
    return pa.Table.from_arrays([ids, pa.array(iqs, pa.float64()),
                                 pa.array(per_turn, pa.list_(pa.float64()))],
                                schema=TURN_IQS_SCHEMA)


def embed_turns(records: pa.Table, embed: Callable[[list[str]], np.ndarray], *,
                turns: str) -> np.ndarray:
    """float32 unit vectors, one per record: its text's, or the renormalised mean of its
    turns'."""
    texts, slots = turn_texts(records, turns)
    return pool_turns(slots, embed(texts))


def pool_turns(slots: list[list[int | None]], vectors: np.ndarray) -> np.ndarray:
    """One unit vector per record from the vectors of :func:`turn_texts`' texts."""
    if len(vectors) == len(slots) and all(len(r) == 1 for r in slots):
        return vectors  # one text per record, in order: nothing to pool
    out = np.empty((len(slots), vectors.shape[1]), dtype=np.float32)
    for i, row in enumerate(slots):
        picked = [s for s in row if s is not None]
        if len(picked) == 1:
            out[i] = vectors[picked[0]]
            continue
        mean = vectors[picked].astype(np.float64).mean(axis=0)
        out[i] = mean / max(np.linalg.norm(mean), 1e-12)
    return out
