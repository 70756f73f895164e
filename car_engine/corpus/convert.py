"""``--output-format alpaca|sharegpt|messages`` (SPEC §6): an item in another shape, its other
keys kept as they are, losslessly where the target can hold it.

- ``sharegpt``: ``conversations`` of ``{"from": human|gpt|system|ROLE, "value": TEXT}``.
- ``messages``: ``messages`` of ``{"role": user|assistant|system|ROLE, "content": TEXT}``.
- ``alpaca``: ``instruction``, ``input``, ``output`` (and ``system`` for a system message,
  which a conversation target turns back into its first message).

A turn's other keys (``name``, ``weight``, ...) travel with it. A single-turn item becomes a
user and an assistant turn; its input, when not empty, follows the instruction after a blank
line (a conversation has no place for it apart). An Alpaca target holds one exchange: an item
with more turns, or with a role other than system/user/assistant, cannot be one, and
:class:`ConversionError` says why (the run turns that into a usage error naming the item).
"""

from __future__ import annotations

from typing import Any

from car_engine.corpus.fields import alpaca_keys
from car_engine.corpus.records import ASSISTANT_ROLES, USER_ROLES

TO_SHAREGPT = {"user": "human", "assistant": "gpt", "system": "system"}
CONVERSATION_KEYS = {"sharegpt": ("conversations", "from", "value"),
                     "messages": ("messages", "role", "content")}


class ConversionError(ValueError):
    """Why one item cannot be written in the asked shape."""


def shape_of(item: dict) -> str:
    """``sharegpt``, ``messages`` or ``alpaca`` (a single-turn item, whatever its field names)."""
    if item.get("conversations") is not None:
        return "sharegpt"
    if item.get("messages") is not None:
        return "messages"
    return "alpaca"


def _role(name: str) -> str:
    low = name.lower()
    return "user" if low in USER_ROLES else "assistant" if low in ASSISTANT_ROLES else low


def _turns(item: dict, fields: str | None) -> tuple[list[str], list[dict[str, Any]]]:
    """The keys the item's text is held in, and its turns as role/content dicts."""
    shape = shape_of(item)
    if shape != "alpaca":
        key, role_key, text_key = CONVERSATION_KEYS[shape]
        turns = []
        for turn in item[key]:
            rest = {k: v for k, v in turn.items() if k not in (role_key, text_key)}
            turns.append({"role": _role(turn[role_key]), "content": turn[text_key], **rest})
        return [key], turns
    keys = alpaca_keys(item, fields)
    text = item[keys["instruction"]]
    extra = item.get(keys["input"]) if keys["input"] else None
    if extra:
        text = f"{text}\n\n{extra}"
    drop = [k for k in keys.values() if k and k in item]
    turns = [{"role": "user", "content": text},
             {"role": "assistant", "content": item[keys["output"]]}]
    if isinstance(item.get("system"), str):  # Alpaca's system prompt opens the conversation
        drop.append("system")
        turns.insert(0, {"role": "system", "content": item["system"]})
    return drop, turns


def _replace(item: dict, drop: list[str], new: dict[str, Any]) -> dict[str, Any]:
    """``item`` with the keys ``drop`` replaced by ``new``, where the first of them was."""
    out: dict[str, Any] = {}
    for key, value in item.items():
        if key in drop:
            out.update(new)
            new = {}
        elif key not in out:
            out[key] = value
    out.update(new)
    return out


def _alpaca(item: dict, drop: list[str], turns: list[dict[str, Any]]) -> dict[str, Any]:
    system = [t for t in turns if t["role"] == "system"]
    rest = [t for t in turns if t["role"] != "system"]
    roles = [t["role"] for t in rest]
    odd = sorted({r for r in roles if r not in ("user", "assistant")})
    if odd:
        raise ConversionError(f"it has a '{odd[0]}' message, which an Alpaca record cannot hold")
    if roles != ["user", "assistant"]:
        pairs = roles.count("assistant")
        raise ConversionError(f"it has {len(rest)} messages ({pairs} replies); an Alpaca "
                              "record holds one instruction and one reply")
    if len(system) > 1 or (system and "system" in item and "system" not in drop):
        raise ConversionError("its system message has no place of its own in an Alpaca record")
    if any(len(t) > 2 for t in turns):
        raise ConversionError("its messages carry keys besides role and content")
    new = {"instruction": rest[0]["content"], "input": "", "output": rest[1]["content"]}
    if system:
        new = {"system": system[0]["content"], **new}
    return _replace(item, drop, new)


def convert(item: dict, target: str, fields: str | None = None) -> dict[str, Any]:
    """``item`` in shape ``target`` (``original`` returns it as it is); a single-turn item's
    field names are found as the reader finds them (``fields`` is --fields)."""
    if target == "original":
        return item
    shape = shape_of(item)
    if target == "alpaca" and shape == "alpaca":
        keys = alpaca_keys(item, fields)
        new = {"instruction": item[keys["instruction"]],
               "input": item.get(keys["input"], "") if keys["input"] else "",
               "output": item[keys["output"]]}
        return _replace(item, [k for k in keys.values() if k and k in item], new)
    drop, turns = _turns(item, fields)
    if target == "alpaca":
        return _alpaca(item, drop, turns)
    key, role_key, text_key = CONVERSATION_KEYS[target]
    out = []
    for turn in turns:
        rest = {k: v for k, v in turn.items() if k not in ("role", "content")}
        role = TO_SHAREGPT.get(turn["role"], turn["role"]) if target == "sharegpt" \
            else turn["role"]
        out.append({role_key: role, text_key: turn["content"], **rest})
    return _replace(item, drop, {key: out})
