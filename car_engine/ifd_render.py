"""A conversation rendered for IFD as text pieces, each tokenized on its own (SPEC §5).

Every reply is a piece of its own, so the token boundaries of every turn's answer are exact
(never a re-tokenised prefix). Text templates: ``none`` renders the system message + "\\n",
then for each turn u_t + "\\n", a_t, "\\n"; ``alpaca``, ``vicuna`` and ``wiz`` render each
message with their markers the same way, and a conversation without a system message opens
with the template's header, so a single turn renders exactly as its SPEC §2 prompt. ``chat``
renders per message with the model's chat template: each message's piece is what rendering
one more message adds, and a reply's markers are found with a sentinel in its place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from car_engine.corpus.conversations import ASSISTANT, USER, Conversation
from car_engine.errors import ModelError, UsageError
from car_engine.ifd_prompts import ALPACA_HEADER, RESPONSE_HEADER, VICUNA_HEADER


@dataclass(frozen=True)
class _TextTemplate:
    header: str  # opens a conversation that has no system message
    system: str  # format of the system message
    user: str  # format of a user message, up to where the reply starts
    end: str  # what follows a reply


TEXT_TEMPLATES = {
    "none": _TextTemplate("", "{}\n", "{}\n", "\n"),
    "alpaca": _TextTemplate(ALPACA_HEADER, "{}\n\n", "### Instruction:\n{}\n\n" + RESPONSE_HEADER,
                            "\n\n"),
    "vicuna": _TextTemplate(VICUNA_HEADER, "{}", " USER: {} ASSISTANT:", "</s>"),
    "wiz": _TextTemplate("", "{}\n\n", "{}\n\n" + RESPONSE_HEADER, "\n\n"),
}
_SENTINEL = "\ue000car-engine-reply\ue001"  # private-use characters no message holds

# A piece: its text and the turn whose reply it is (None: history).
Piece = tuple[str, int | None]


def render(template: str, conversation: Conversation, tokenizer: Any = None) -> list[Piece]:
    """The pieces of ``conversation`` under ``template``, up to the last turn's reply (what
    follows it is never scored). The preamble's reply piece is history (turn None)."""
    if template == "chat":
        return _render_chat(conversation, tokenizer)
    if template not in TEXT_TEMPLATES:
        raise UsageError(f"unknown template '{template}': choose one of "
                         f"{', '.join([*TEXT_TEMPLATES, 'chat'])}")
    t = TEXT_TEMPLATES[template]
    pieces: list[Piece] = []
    opening = "" if conversation.system is not None else t.header
    if conversation.system is not None:
        pieces.append((t.system.format(conversation.system), None))
    if conversation.preamble is not None:
        if opening:
            pieces.append((opening, None))
            opening = ""
        pieces += [(conversation.preamble, None), (t.end, None)]
    for n, turn in enumerate(conversation.turns):
        if n:
            pieces.append((t.end, None))
        pieces.append((opening + t.user.format(turn.user), None))
        opening = ""
        pieces.append((turn.reply, n))
    return pieces


def _render_chat(conversation: Conversation, tokenizer: Any) -> list[Piece]:
    """Pieces from the model's chat template, one rendering per message added."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise UsageError("template 'chat' needs a model whose tokenizer has a chat template")
    messages = conversation.messages()
    reply_of = {}  # message index -> turn index (the preamble is history)
    first = len(messages) - 2 * len(conversation.turns)
    for n in range(len(conversation.turns)):
        reply_of[first + 2 * n + 1] = n

    def text(upto: list[dict[str, str]], generation: bool = False) -> str:
        return tokenizer.apply_chat_template(upto, tokenize=False,
                                             add_generation_prompt=generation)

    pieces: list[Piece] = []
    done = ""
    for k, message in enumerate(messages):
        if message["role"] != ASSISTANT:
            # a user message's piece runs up to where the reply starts (its generation prompt)
            nxt = k + 1 < len(messages) and messages[k + 1]["role"] == ASSISTANT
            rendered = text(messages[:k + 1], generation=nxt and message["role"] == USER)
            pieces.append((_after(rendered, done), None))
            done = rendered
            continue
        marked = text([*messages[:k], {"role": ASSISTANT, "content": _SENTINEL}])
        head, _, tail = _after(marked, done).partition(_SENTINEL)
        rendered = text(messages[:k + 1])
        if rendered != done + head + message["content"] + tail:
            raise ModelError("the chat template does not render a reply as its own text "
                             f"(message {k + 1}): template 'chat' cannot give exact "
                             "boundaries; use none, alpaca or vicuna")
        if head:
            pieces.append((head, None))
        pieces.append((message["content"], reply_of.get(k)))
        if k + 1 < len(messages):
            pieces.append((tail, None))
        done = rendered
    return pieces


def _after(rendered: str, done: str) -> str:
    """What ``rendered`` adds to ``done``; a template that rewrites earlier text has no exact
    per-message pieces."""
    if not rendered.startswith(done):
        raise ModelError("the chat template renders a conversation's start differently once "
                         "more messages follow: template 'chat' cannot give exact boundaries; "
                         "use none, alpaca or vicuna")
    return rendered[len(done):]


__all__ = ["TEXT_TEMPLATES", "Piece", "render"]
