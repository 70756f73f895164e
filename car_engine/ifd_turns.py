"""IFD of every turn of a conversation (SPEC §5), in one causal forward per conversation.

The conditioned pass runs once over the whole rendered conversation (:mod:`car_engine.ifd_render`,
piecewise tokenized): causality makes the loss of turn t's answer tokens exactly the loss of
the pair "history before a_t -> a_t", and only those answer positions reach the output
projection (the fused cross-entropy). Each direct pass (start token + a_t alone) is a short
sequence of its own; all of them are packed like single-turn pairs. Single-turn records go
through the same batches as one-turn sequences, with the ids of :func:`car_engine.ifd.encode_pairs`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
import torch
from tqdm import tqdm

from car_engine import kernels
from car_engine.batching import head_ids, token_batches
from car_engine.corpus.conversations import Conversation, parse_json
from car_engine.ifd_pairs import IFD_SCHEMA, encode_pairs, score_row
from car_engine.ifd_prompts import EMPTY_ANSWER, OK, PROMPT_TOO_LONG, EncodedPair, start_token
from car_engine.ifd_render import render


class IFDScorer(Protocol):
    """What the turn scorer uses of :class:`car_engine.ifd.IFDScorer` (no import: ifd.py
    imports this module)."""

    tokenizer: Any
    template: str
    max_length: int
    batch_tokens: int
    packed: Any
    device: torch.device
    head_weight: torch.Tensor

    def hidden_at(self, token_ids: list[list[int]], rows: list[int], cols: list[int]
                  ) -> torch.Tensor: ...

PAST_MAX_LENGTH = "not scored: past max_length"
TURN_FIELDS = [("turns", pa.int64()), ("turns_scored", pa.int64()),
               ("turn_loss_cond", pa.list_(pa.float64())),
               ("turn_loss_direct", pa.list_(pa.float64())),
               ("turn_n_tokens", pa.list_(pa.int64())), ("turn_status", pa.list_(pa.string()))]
TURN_COLUMNS = [name for name, _ in TURN_FIELDS]


@dataclass(frozen=True)
class EncodedTurns:
    """A conversation's conditioned ids (up to its last kept answer token), the span
    ``(first position, count)`` of each scored turn's kept answer in them, each scored turn's
    direct ids, and every turn's status (``turn_of``: the turn index of each span)."""

    cond_ids: list[int]
    spans: list[tuple[int, int]]
    direct: list[list[int]]
    turn_of: list[int]
    statuses: list[str]
    truncated: bool

    @property
    def status(self) -> str:
        """OK when any turn is scored, else why not."""
        if self.spans:
            return OK
        return EMPTY_ANSWER if all(s == EMPTY_ANSWER for s in self.statuses) else PROMPT_TOO_LONG


def encode_conversations(tokenizer: Any, conversations: list[Conversation], *, template: str,
                         max_length: int) -> list[EncodedTurns]:
    """Every conversation rendered, its pieces tokenized on their own (no special tokens) and
    joined, and cut at ``max_length`` at turn boundaries: whole turns from the start, the first
    turn that does not fit cut at its answer's tail (if one answer token fits), later turns not
    scored. BOS (else EOS) starts the ids unless the rendering already starts with it."""
    start = start_token(tokenizer)
    rendered = [render(template, c, tokenizer) for c in conversations]
    texts = [text for pieces in rendered for text, _ in pieces]
    # max_length ids of a piece tell all that is kept of it (batching.head_ids)
    piece_ids = iter(head_ids(tokenizer, texts, max_length, add_special_tokens=False)
                     if texts else [])
    out = []
    for conversation, pieces in zip(conversations, rendered):
        tokens = [next(piece_ids) for _ in pieces]
        out.append(_cut(conversation, pieces, tokens, start, max_length))
    return out


def _cut(conversation: Conversation, pieces: list[tuple[str, int | None]],
         tokens: list[list[int]], start: int, max_length: int) -> EncodedTurns:
    first = next((t for t in tokens if t), [])
    ids: list[int] = [] if first[:1] == [start] else [start]
    statuses = [OK if turn.scored else EMPTY_ANSWER for turn in conversation.turns]
    spans: list[tuple[int, int]] = []
    direct: list[list[int]] = []
    turn_of: list[int] = []
    end = len(ids)  # the conditioned ids end at the last kept answer token
    stopped = False
    for (_, turn), piece in zip(pieces, tokens):
        if turn is None or not conversation.turns[turn].scored:
            ids += piece
            continue
        room = max_length - len(ids)
        if stopped or room <= 0:
            statuses[turn] = PAST_MAX_LENGTH
            stopped = True
            continue
        keep = piece[:room]
        spans.append((len(ids), len(keep)))
        direct.append([start, *keep])
        turn_of.append(turn)
        ids += keep
        end = len(ids)
        stopped = len(keep) < len(piece)
    truncated = stopped or any(s == PAST_MAX_LENGTH for s in statuses)
    return EncodedTurns(ids[:end], spans, direct, turn_of, statuses, truncated)


@dataclass(frozen=True)
class _Sequence:
    record: int
    slot: int  # 0: the conditioned pass; 1 + i: the direct pass of span i
    ids: list[int]
    spans: tuple[tuple[int, int], ...]


def batch_losses(scorer: IFDScorer, batch: list[_Sequence]) -> list[list[float]]:
    """Mean NLL of every span of every sequence of ``batch``: one forward of the model body,
    the fused cross-entropy over the scored positions only (position p predicts p + 1)."""
    rows: list[int] = []
    cols: list[int] = []
    targets: list[int] = []
    counts: list[int] = []
    for r, seq in enumerate(batch):
        for first, n in seq.spans:
            rows += [r] * n
            cols += range(first - 1, first + n - 1)
            targets += seq.ids[first:first + n]
            counts.append(n)
    with torch.inference_mode():
        hidden = scorer.hidden_at([seq.ids for seq in batch], rows, cols)
        offsets = torch.tensor([0, *itertools.accumulate(counts)], device=scorer.device)
        _, means = kernels.linear_cross_entropy(
            hidden, scorer.head_weight, torch.tensor(targets, device=scorer.device), offsets)
    flat = iter(means.tolist())
    return [[next(flat) for _ in seq.spans] for seq in batch]


def _plan(sequences: list[_Sequence], budget: int, padded: bool) -> list[list[_Sequence]]:
    """Token-budget batches, longest first: packed (sum of lengths) or padded (rows x the
    longest row)."""
    if not padded:
        return [[sequences[i] for i in rows]
                for rows in token_batches([s.ids for s in sequences], budget)]
    batches: list[list[_Sequence]] = []
    for seq in sorted(sequences, key=lambda s: len(s.ids), reverse=True):
        if batches and len(batches[-1][0].ids) * (len(batches[-1]) + 1) <= budget:
            batches[-1].append(seq)
        else:
            batches.append([seq])
    return batches


def _as_turns(pair: EncodedPair) -> EncodedTurns:
    """A single-turn record's pair as a one-turn conversation (the same ids and tokens)."""
    n = pair.n_answer
    if pair.status != OK:
        return EncodedTurns(pair.cond_ids, [], [], [], [pair.status], pair.truncated)
    return EncodedTurns(pair.cond_ids, [(len(pair.cond_ids) - n, n)], [pair.direct_ids], [0],
                        [OK], pair.truncated)


def score_turns(scorer: IFDScorer, records: pa.Table, *, progress: bool = True) -> pa.Table:
    """IFD_COLUMNS + TURN_COLUMNS for every record (conversations turn by turn, single-turn
    records as one turn), in input order."""
    chats = records.column("turns").to_pylist() if "turns" in records.column_names else \
        [None] * records.num_rows
    encoded: list[EncodedTurns | None] = [None] * records.num_rows
    single = [i for i, c in enumerate(chats) if c is None]
    if single:
        pairs = encode_pairs(scorer.tokenizer, records.take(single), template=scorer.template,
                             max_length=scorer.max_length)
        for i, pair in zip(single, pairs):
            encoded[i] = _as_turns(pair)
    multi = [i for i, c in enumerate(chats) if c is not None]
    conversations = [parse_json(chats[i]) for i in multi]
    for i, enc in zip(multi, encode_conversations(scorer.tokenizer, conversations,
                                                  template=scorer.template,
                                                  max_length=scorer.max_length)):
        encoded[i] = enc
    done = [e for e in encoded if e is not None]
    assert len(done) == records.num_rows
    sequences = []
    for r, enc in enumerate(done):
        if enc.spans:
            sequences.append(_Sequence(r, 0, enc.cond_ids, tuple(enc.spans)))
            sequences += [_Sequence(r, 1 + i, d, ((len(d) - n, n),))
                          for i, (d, (_, n)) in enumerate(zip(enc.direct, enc.spans))]
    losses: list[dict[int, list[float]]] = [{} for _ in done]
    bar = tqdm(total=sum(len(s.ids) for s in sequences), unit="tok", disable=not progress,
               desc="ifd turns")
    for batch in _plan(sequences, scorer.batch_tokens, padded=scorer.packed is None):
        for seq, values in zip(batch, batch_losses(scorer, batch)):
            losses[seq.record][seq.slot] = values
        bar.update(sum(len(s.ids) for s in batch))
    bar.close()
    ids = [str(v) for v in records.column("id").to_pylist()]
    rows = [turn_row(rid, enc, got) for rid, enc, got in zip(ids, done, losses)]
    schema = pa.schema([*IFD_SCHEMA, *(pa.field(n, t) for n, t in TURN_FIELDS)])
    return pa.Table.from_pylist(rows, schema=schema)


def turn_row(rid: str, enc: EncodedTurns, losses: dict[int, list[float]]) -> dict:
    """One record's row: per-turn lists (null where a turn is not scored) and the
    token-weighted conversation losses, scored as SPEC §2 from them."""
    n_turns = len(enc.statuses)
    cond: list[float | None] = [None] * n_turns
    direct: list[float | None] = [None] * n_turns
    counts: list[int | None] = [None] * n_turns
    for i, (turn, (_, n)) in enumerate(zip(enc.turn_of, enc.spans)):
        cond[turn], direct[turn], counts[turn] = losses[0][i], losses[1 + i][0], n
    total = sum(n for _, n in enc.spans)
    loss_cond = loss_direct = None
    if len(enc.spans) == 1:  # one turn: its own losses, exactly (a single-turn pair's)
        loss_cond, loss_direct = losses[0][0], losses[1][0]
    elif total:
        loss_cond = math.fsum(losses[0][i] * n for i, (_, n) in enumerate(enc.spans)) / total
        loss_direct = math.fsum(losses[1 + i][0] * n for i, (_, n) in enumerate(enc.spans)) \
            / total
    summary = EncodedPair([], [], total, enc.truncated, enc.status)
    row = score_row(rid, summary, loss_cond, loss_direct)
    row.update(turns=n_turns, turns_scored=len(enc.spans), turn_loss_cond=cond,
               turn_loss_direct=direct, turn_n_tokens=counts, turn_status=enc.statuses)
    return row
