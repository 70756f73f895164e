"""A conversation's messages as scored turns (SPEC §5).

A conversation is an optional system message, then user/assistant turns. Consecutive messages
of one role are joined with "\\n"; an assistant message before the first user message is
history (IFD sees it) but not a turn; roles other than system/user/assistant (tool, function,
...) stay in the item but are not scored (nor rendered); a reply with an empty text is not a
scored turn (it stays history); a trailing user message with no reply is not scored. Every
message or turn left out has a note that names it (turns are numbered from 1).

The records table keeps a conversation's messages as JSON (``turns``, roles normalised,
system messages and other roles included); every scorer parses them here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

SYSTEM, USER, ASSISTANT = "system", "user", "assistant"


@dataclass(frozen=True)
class Turn:
    """Turn t: the user message and the assistant reply to it; ``scored`` is False for an
    empty reply (the turn is history only)."""

    user: str
    reply: str
    scored: bool


@dataclass(frozen=True)
class Conversation:
    """A parsed conversation: the system message, an assistant preamble before the first user
    message (both history only), the turns, and why messages or turns are not scored."""

    system: str | None
    preamble: str | None
    turns: tuple[Turn, ...]
    notes: tuple[str, ...] = ()

    @property
    def scored(self) -> list[int]:
        """0-based indices of the scored turns."""
        return [t for t, turn in enumerate(self.turns) if turn.scored]

    def messages(self, upto: int | None = None) -> list[dict[str, str]]:
        """The rendered history as role/content messages: system, preamble, then the user and
        assistant messages of the turns (of the first ``upto`` turns when given)."""
        out = []
        if self.system is not None:
            out.append({"role": SYSTEM, "content": self.system})
        if self.preamble is not None:
            out.append({"role": ASSISTANT, "content": self.preamble})
        for turn in self.turns[:upto]:
            out.append({"role": USER, "content": turn.user})
            out.append({"role": ASSISTANT, "content": turn.reply})
        return out


def parse(messages: list[dict[str, str]]) -> Conversation:
    """The conversation of role/content ``messages`` (roles already normalised to
    system/user/assistant where known) under SPEC §5's rules."""
    notes: list[str] = []
    joined: list[list[str]] = []  # [role, text] with consecutive roles joined
    for n, message in enumerate(messages):
        role, text = message["role"], message["content"]
        if role not in (SYSTEM, USER, ASSISTANT):
            notes.append(f"message {n + 1}: role '{role}' is kept but not scored")
            continue
        if role == SYSTEM and any(r != SYSTEM for r, _ in joined):
            notes.append(f"message {n + 1}: a system message after the conversation started "
                         "is kept but not scored")
            continue
        if joined and joined[-1][0] == role:
            joined[-1][1] += "\n" + text
        else:
            joined.append([role, text])
    system = joined.pop(0)[1] if joined and joined[0][0] == SYSTEM else None
    preamble = joined.pop(0)[1] if joined and joined[0][0] == ASSISTANT else None
    turns: list[Turn] = []
    for i in range(0, len(joined) - 1, 2):  # roles alternate user, assistant from here
        user, reply = joined[i][1], joined[i + 1][1]
        scored = bool(reply.strip())
        if not scored:
            notes.append(f"turn {len(turns) + 1}: empty reply, not scored")
        turns.append(Turn(user, reply, scored))
    if len(joined) % 2:
        notes.append(f"turn {len(turns) + 1}: a trailing user message with no reply is not "
                     "scored")
    return Conversation(system, preamble, tuple(turns), tuple(notes))


@lru_cache(maxsize=4096)
def parse_json(turns_json: str) -> Conversation:
    """:func:`parse` of a records table's ``turns`` JSON (cached: three scorers read it)."""
    return parse(json.loads(turns_json))


def no_turn_reason(conversation: Conversation, key: str) -> str | None:
    """Why an item with this conversation is rejected (it has no scored turn), else None."""
    if conversation.scored:
        return None
    if conversation.turns:
        return f"'{key}' has no scored turn: empty output in every assistant reply"
    return f"'{key}' has no user turn followed by an assistant turn (no scored turn)"
