"""What both IFD encoders share (SPEC §2, §7): the prompt templates, a record's encoded pair of
token sequences, the statuses a record without a score carries, and the start token.

:mod:`car_engine.ifd` builds pairs with exact token boundaries; :mod:`car_engine.ifd_compat`
builds them as Superfiltering's and Cherry LLM's scripts do. Both hand the scorer the same
:class:`EncodedPair`, so one batched, packed forward path scores either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from car_engine.config import IFD_TEMPLATES
from car_engine.corpus.records import user_text
from car_engine.errors import CorpusError, ModelError, UsageError

OK = "ok"
EMPTY_ANSWER = "empty answer"
PROMPT_TOO_LONG = "prompt leaves no room for the answer within max_length"


_ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
_ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:"
)
_VICUNA = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the user's questions. USER: {user} ASSISTANT:"
)
# What opens a conversation under each text template when it has no system message (the
# single-turn prompts above start with it; SPEC §5).
ALPACA_HEADER = _ALPACA[: _ALPACA.index("### Instruction:")]
VICUNA_HEADER = _VICUNA[: _VICUNA.index(" USER:")]
# Cherry LLM's "wiz" prompt (WizardLM data): the instruction, the input after "\nInput:" when
# there is one, then the response header.
RESPONSE_HEADER = "### Response:"


def prompt_text(template: str, instruction: str, input: str, tokenizer: Any = None) -> str:
    """The prompt a template preset builds from an instruction and its (maybe empty) input."""
    user = user_text(instruction, input)
    if template == "none":
        return f"{user}\n"
    if template == "alpaca":
        fmt = _ALPACA_INPUT if input else _ALPACA
        return fmt.format(instruction=instruction, input=input)
    if template == "wiz":
        middle = f"\nInput:{input}" if input else ""
        return f"{instruction}{middle}\n\n{RESPONSE_HEADER}"
    if template == "vicuna":
        return _VICUNA.format(user=user)
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise UsageError("template 'chat' needs a model whose tokenizer has a chat template")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    check_template(template)
    raise AssertionError(template)  # check_template knows every template above


def check_template(template: str) -> None:
    """Refuse a template name that is not one of config.IFD_TEMPLATES, naming them."""
    if template not in IFD_TEMPLATES:
        raise UsageError(f"unknown template '{template}': choose one of {', '.join(IFD_TEMPLATES)}")


@dataclass(frozen=True)
class EncodedPair:
    """One record's two token sequences. The conditioned pass scores the last ``n_answer``
    tokens of ``cond_ids``, the direct pass the last ``n_direct`` of ``direct_ids`` (the same
    count unless given: the exact-boundary mode scores the same tokens in both)."""

    cond_ids: list[int]
    direct_ids: list[int]
    n_answer: int
    truncated: bool
    status: str
    n_direct: int | None = None

    @property
    def direct_scored(self) -> int:
        """How many trailing tokens of ``direct_ids`` the direct pass scores."""
        return self.n_answer if self.n_direct is None else self.n_direct


def start_token(tokenizer: Any) -> int:
    """BOS if the model has one, else EOS (SPEC §2)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else \
        tokenizer.eos_token_id
    if token is None:
        raise ModelError("the tokenizer has neither a BOS nor an EOS token to start a sequence")
    return int(token)


def text_column(records: pa.Table, name: str) -> list[str]:
    """A text column of a records table as strings ("" for a null input); a missing column or
    a null instruction/output is an error naming the record."""
    if name not in records.column_names:
        raise CorpusError(f"records table has no '{name}' column")
    values = records.column(name).to_pylist()
    if name != "input":
        for rid, value in zip(records.column("id").to_pylist(), values):
            if value is None:
                raise CorpusError(f"record '{rid}': '{name}' is null")
    return [v or "" for v in values]
