"""Records: the schema, one raw item -> one record, and the pair text every scorer sees.

A *record* is one instruction pair (SPEC §0): ``id`` (the item's own id, else its 0-based
position), ``position``, ``instruction``, ``input``, ``output`` and ``turns`` (the whole
conversation as JSON for multi-turn items, else null). An item that cannot be a record raises
:class:`BadItem` saying why; the readers turn that into a :class:`Rejection`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from car_engine.corpus.conversations import no_turn_reason, parse
from car_engine.errors import CorpusError

RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("position", pa.int64()),
        ("instruction", pa.string()),
        ("input", pa.string()),
        ("output", pa.string()),
        ("turns", pa.string()),
    ]
)
USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "assistant", "chatgpt", "bard", "bing", "model"}


@dataclass(frozen=True)
class Rejection:
    """An input item that did not become a record, and why."""

    source: str
    location: str  # "line 12" (JSONL) or "item 5" (JSON array, Parquet)
    reason: str
    id: str | None = None
    position: int | None = None  # the item's 0-based position among the items read
    item: bool = True  # False: a fault between items (a trailing comma), which holds no item

    def message(self) -> str:
        """One line a user can act on: file, place, reason."""
        return f"{self.source} {self.location}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        """The rejection as a plain dict (for a rejected.jsonl report); ``item`` appears only
        where it is false, so the rows of rejected items are what they always were."""
        row = asdict(self)
        if self.item:
            del row["item"]
        return row


@dataclass
class CorpusBatch:
    """Up to ``batch_size`` records (an Arrow table) and the items rejected while reading them."""

    records: pa.Table
    rejected: list[Rejection] = field(default_factory=list)


@dataclass
class Corpus:
    """A whole corpus in memory: fine for tests and small inputs; large ones use read_corpus."""

    records: pa.Table
    rejected: list[Rejection]

    def __len__(self) -> int:
        return self.records.num_rows



class BadItem(Exception):
    """Why one item cannot be a record (the readers turn it into a Rejection)."""


class UnreadableFile(BadItem):
    """The file as a whole cannot be read (not in its format, or cut before any item): one
    rejection when reading leniently, an error where a reader asks for that."""


class BetweenItems(BadItem):
    """Malformed text between two items (a trailing comma): rejected, but not an item."""


def _text(item: dict, key: str, *, required: bool = True) -> str:
    if key not in item or item[key] is None:
        if required:
            raise BadItem(f"missing field '{key}'")
        return ""
    value = item[key]
    if not isinstance(value, str):
        raise BadItem(f"field '{key}' must be a string, got {type(value).__name__}")
    _check_text(value, key)
    return value


def _check_text(value: str, where: str) -> None:
    """Refuse a NUL (raw, JSON rejects it; escaped as \\u0000, it is refused here) and text
    that is not valid UTF-8."""
    nul = value.find("\x00")
    if nul >= 0:
        raise BadItem(f"NUL character in '{where}' at character {nul}")
    if value.isascii():  # the common case, and much cheaper than encoding
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:  # lone surrogates: the bytes were not valid UTF-8
        raise BadItem(f"invalid UTF-8 in '{where}' at character {err.start}") from None


def _turns(item: dict, key: str, role_key: str, text_key: str) -> list[dict[str, str]]:
    turns = item[key]
    if not isinstance(turns, list):
        raise BadItem(f"field '{key}' must be a list, got {type(turns).__name__}")
    out = []
    for n, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise BadItem(f"{key}[{n}] must be an object, got {type(turn).__name__}")
        role, text = turn.get(role_key), turn.get(text_key)
        if not isinstance(role, str) or not isinstance(text, str):
            raise BadItem(f"{key}[{n}] needs string '{role_key}' and '{text_key}'")
        _check_text(role, f"{key}[{n}].{role_key}")
        _check_text(text, f"{key}[{n}].{text_key}")
        role = role.lower()
        role = "user" if role in USER_ROLES else "assistant" if role in ASSISTANT_ROLES else role
        out.append({"role": role, "content": text})
    return out


def _first_pair(turns: list[dict[str, str]], key: str) -> tuple[str, str]:
    """The first scored turn (SPEC §5, :mod:`car_engine.corpus.conversations`); an item with
    none is rejected with that reason."""
    conversation = parse(turns)
    reason = no_turn_reason(conversation, key)
    if reason is not None:
        raise BadItem(reason)
    first = conversation.turns[conversation.scored[0]]
    return first.user, first.reply


def _record_id(item: dict, position: int) -> str:
    if "id" not in item or item["id"] is None:
        return str(position)
    value = item["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadItem(f"field 'id' must be a string or integer, got {type(value).__name__}")
    if isinstance(value, str):
        _check_text(value, "id")
    return str(value)


def id_of(item: Any) -> str | None:
    """The id a rejected item claims, if it is one a report can carry."""
    if not isinstance(item, dict):
        return None
    value = item.get("id")
    try:
        return _record_id(item, -1) if value is not None else None
    except BadItem:
        return None


def to_record(item: Any, position: int) -> dict[str, Any]:
    """Turn one raw item (Alpaca, ShareGPT or chat shape) into a record dict; a bad item
    raises :class:`CorpusError` saying why."""
    try:
        values = record_values(item, position)
    except BadItem as err:
        raise CorpusError(f"item {position}: {err}") from None
    return dict(zip(RECORD_SCHEMA.names, values, strict=True))


def record_values(item: Any, position: int) -> tuple[str, int, str, str, str, str | None]:
    """A record as a tuple in RECORD_SCHEMA's order (the readers' hot path: no dict)."""
    if not isinstance(item, dict):
        raise BadItem(f"item must be a JSON object, got {type(item).__name__}")
    rid = _record_id(item, position)
    turns_json = None
    # A null 'conversations'/'messages' is absent: mixed-shape Parquet files carry such nulls.
    if item.get("conversations") is not None:
        turns = _turns(item, "conversations", "from", "value")
        instruction, output = _first_pair(turns, "conversations")
        inp = ""
        turns_json = json.dumps(turns, ensure_ascii=False)
    elif item.get("messages") is not None:
        turns = _turns(item, "messages", "role", "content")
        instruction, output = _first_pair(turns, "messages")
        inp = ""
        turns_json = json.dumps(turns, ensure_ascii=False)
    else:
        instruction = _text(item, "instruction")
        inp = _text(item, "input", required=False)
        output = _text(item, "output")
    if not instruction.strip():
        raise BadItem("empty instruction")
    if not output.strip():
        raise BadItem("empty output")
    return rid, position, instruction, inp, output, turns_json


class IdIndex:
    """Finds duplicate ids. Only ids an item brings itself are kept in memory: an item without
    one has the id ``str(position)``, which one bit per position remembers."""

    def __init__(self) -> None:
        self._own: dict[str, str] = {}  # id -> location where it was first seen
        self._positional = bytearray()  # 1 at p when the item at position p has the id str(p)

    def claim(self, rid: str, position: int, location: str) -> None:
        """Register the id of the record at ``position``; raise BadItem if it is taken."""
        first = self._own.get(rid)
        if first is None:
            if rid == str(position):  # the common case: an item without an id of its own
                bits = self._positional
                if position >= len(bits):
                    bits.extend(bytes(max(position + 1 - len(bits), len(bits))))  # doubling
                bits[position] = 1
                return
            if _is_position(rid):  # it may be the position id of an earlier item
                p = int(rid)
                if p < len(self._positional) and self._positional[p]:
                    first = f"item position {p}"
            if first is None:
                self._own[rid] = location
                return
        raise BadItem(f"duplicate id '{rid}' (first seen at {first})")


def _is_position(rid: str) -> bool:
    # Only canonical decimals ("0", "17", not "017") can equal str(position).
    return len(rid) < 19 and rid.isascii() and rid.isdigit() and (rid == "0" or rid[0] != "0")


class RecordRows:
    """Record tuples gathered for one batch, turned into one Arrow table."""

    def __init__(self) -> None:
        self._rows: list[tuple] = []
        self.add = self._rows.append

    def __len__(self) -> int:
        return len(self._rows)

    def table(self) -> pa.Table:
        columns = zip(*self._rows, strict=True) if self._rows else [[]] * len(RECORD_SCHEMA)
        arrays = [pa.array(c, type=f.type) for c, f in zip(columns, RECORD_SCHEMA, strict=True)]
        return pa.Table.from_arrays(arrays, schema=RECORD_SCHEMA)



def user_text(instruction: str, input: str) -> str:
    """The request as one text: the instruction, then its input on a line of its own when
    there is one (what a chat user would have typed)."""
    return f"{instruction}\n{input}" if input else instruction


def pair_text(instruction: str, input: str, output: str) -> str:
    """The text IQS and the embedder see (SPEC §1): the ' Input: ' segment is always there."""
    return f"Instruction: {instruction} Input: {input} Response: {output}"


def pair_texts(records: pa.Table) -> list[str]:
    """:func:`pair_text` for every row of a records table."""
    cols = [records.column(c).to_pylist() for c in ("instruction", "input", "output")]
    return [pair_text(i, x, o) for i, x, o in zip(*cols, strict=True)]

