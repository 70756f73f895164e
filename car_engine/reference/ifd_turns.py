"""The plain way to score a conversation's IFD turn by turn (SPEC §5): every turn is a separate
pair whose prompt is its whole history, scored with two full Hugging Face forwards with
``labels``, batch 1. The engine (:mod:`car_engine.ifd_turns`) gets all turns of a conversation
from one forward; this is what it must equal.

Turn t's prompt is the conversation cut after u_t, rendered by the template on its own (so the
rendering of a prefix is checked against the whole conversation's), each piece tokenized
alone without special tokens, after BOS (else EOS) unless the rendering starts with it. The
answer is a_t's ids, cut so prompt + answer fit ``max_length``; once one turn is cut or has no
room, no later turn is scored.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from car_engine.corpus.conversations import Conversation
from car_engine.ifd_prompts import start_token
from car_engine.ifd_render import render


@torch.inference_mode()
def answer_loss(model: Any, ids: list[int], n_answer: int) -> float:
    """Mean NLL of the last ``n_answer`` tokens of ``ids``: one forward, ``labels``, batch 1."""
    input_ids = torch.tensor([ids])
    labels = torch.full_like(input_ids, -100)
    labels[0, len(ids) - n_answer:] = input_ids[0, len(ids) - n_answer:]
    return float(model(input_ids=input_ids, labels=labels).loss)


def turn_pairs(tokenizer: Any, conversation: Conversation, template: str, max_length: int
               ) -> list[tuple[int, list[int], list[int]] | None]:
    """Per turn: None (not scored) or (turn, prompt ids, kept answer ids)."""
    start = start_token(tokenizer)
    out: list[tuple[int, list[int], list[int]] | None] = []
    stopped = False
    for t, turn in enumerate(conversation.turns):
        if not turn.scored or stopped:
            out.append(None)
            continue
        history = replace(conversation, turns=conversation.turns[:t + 1])
        pieces = [tokenizer(text, add_special_tokens=False)["input_ids"]
                  for text, _ in render(template, history, tokenizer)]
        answer = pieces[-1]
        prompt = [i for piece in pieces[:-1] for i in piece]
        if prompt[:1] != [start]:
            prompt = [start, *prompt]
        room = max_length - len(prompt)
        if room <= 0:
            stopped = True
            out.append(None)
            continue
        keep = answer[:room]
        stopped = len(keep) < len(answer)
        out.append((t, prompt, keep))
    return out


def reference_turns(model: Any, tokenizer: Any, conversation: Conversation, *, template: str,
                    max_length: int) -> dict[str, Any]:
    """Per-turn ``turn_loss_cond``, ``turn_loss_direct``, ``turn_n_tokens`` (None where a turn
    is not scored) and the token-weighted ``loss_cond``/``loss_direct`` (None: no turn)."""
    start = start_token(tokenizer)
    cond: list[float | None] = []
    direct: list[float | None] = []
    counts: list[int | None] = []
    for pair in turn_pairs(tokenizer, conversation, template, max_length):
        if pair is None:
            cond.append(None)
            direct.append(None)
            counts.append(None)
            continue
        _, prompt, keep = pair
        cond.append(answer_loss(model, [*prompt, *keep], len(keep)))
        direct.append(answer_loss(model, [start, *keep], len(keep)))
        counts.append(len(keep))
    weighted = [(c, d, n) for c, d, n in zip(cond, direct, counts)
                if c is not None and d is not None and n]
    total = sum(n for _, _, n in weighted)
    return {
        "turn_loss_cond": cond, "turn_loss_direct": direct, "turn_n_tokens": counts,
        "turns": len(conversation.turns), "turns_scored": len(weighted),
        "loss_cond": sum(c * n for c, _, n in weighted) / total if total else None,
        "loss_direct": sum(d * n for _, d, n in weighted) / total if total else None,
    }
