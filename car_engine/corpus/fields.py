"""Field names (SPEC §6): which keys of a single-turn item hold the instruction, input and
output. ``--fields instruction=KEY,input=KEY,output=KEY`` names them; without it the reader
recognises Dolly (``instruction``/``context``/``response``), prompt/completion and
question/answer items on its own. Conversation items (``conversations``, ``messages``) and
Alpaca items are read as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from car_engine.corpus.records import BadItem
from car_engine.field_spec import parse_fields

ALPACA = {"instruction": "instruction", "input": "input", "output": "output"}
# Recognised schemas, tried in this order on an item with no 'output' (an Alpaca item has one).
KNOWN = {
    "dolly": {"instruction": "instruction", "input": "context", "output": "response"},
    "prompt/completion": {"instruction": "prompt", "input": "", "output": "completion"},
    "question/answer": {"instruction": "question", "input": "", "output": "answer"},
}


def describe(name: str, mapping: dict[str, str]) -> str:
    """``dolly (instruction=instruction, input=context, output=response)``."""
    pairs = ", ".join(f"{k}={v}" for k, v in mapping.items() if v)
    return f"{name} ({pairs})"


class FieldMap:
    """Turns an item into the Alpaca-keyed view :func:`record_values` reads, and remembers
    which mapping it used for how many items (``used``); ``on_new`` hears of each mapping the
    first time it is used (the reader says it once, not per line)."""

    def __init__(self, spec: str | None = None,
                 on_new: Callable[[str], None] | None = None) -> None:
        self.given = parse_fields(spec) if spec else None
        self.used: dict[str, int] = {}
        self._on_new = on_new

    def _note(self, name: str, mapping: dict[str, str]) -> None:
        label = describe(name, mapping)
        if label not in self.used:
            self.used[label] = 0
            if self._on_new is not None:
                self._on_new(label)
        self.used[label] += 1

    def mapping_of(self, item: Any) -> tuple[str, dict[str, str]] | None:
        """The (name, mapping) the item is read with; None for a conversation, an Alpaca item
        or anything that is not an object (read as it is, and rejected there if bad)."""
        if not isinstance(item, dict) or item.get("conversations") is not None \
                or item.get("messages") is not None:
            return None
        if self.given is not None:
            return "--fields", self.given
        if "output" in item:
            return None
        for name, mapping in KNOWN.items():
            if mapping["instruction"] in item and mapping["output"] in item:
                return name, mapping
        return None

    def view(self, item: Any) -> Any:
        """The item with its fields under Alpaca's names (the item itself when it needs no
        mapping); a key the mapping names and the item lacks raises :class:`BadItem`."""
        found = self.mapping_of(item)
        if found is None:
            return item
        name, mapping = found
        out = {"id": item.get("id")}
        for target, key in mapping.items():
            if not key:
                continue
            if key not in item:
                if name == "--fields" or target != "input":
                    where = f"--fields {target}={key}" if name == "--fields" else name
                    raise BadItem(f"missing field '{key}' ({where})")
                continue
            out[target] = item[key]
        self._note(name, mapping)
        return out


def alpaca_keys(item: dict, spec: str | None = None) -> dict[str, str]:
    """Which keys of single-turn ``item`` hold instruction/input/output (Alpaca's own names
    when no other mapping applies); an empty name means the field is not there."""
    found = FieldMap(spec).mapping_of(item)
    return dict(ALPACA) if found is None else dict(found[1])
