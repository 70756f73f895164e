"""IFD as Superfiltering's and Cherry LLM's scripts compute it (SPEC §7), quirks included.

The default mode (:func:`car_engine.ifd.encode_pairs`) tokenizes prompt and answer apart so
the boundary is exact. The scripts do not: they tokenize whole texts with the tokenizer's own
defaults (special tokens included), truncate each text to its own length, find the answer's
first token by re-tokenizing the text before it, and read the losses through their own label
masks and slices. This module reproduces those token ids and scored spans, record by record,
and hands them to the scorer as :class:`~car_engine.ifd_prompts.EncodedPair`: the scorer then
batches and packs them exactly as in the default mode. A sequence is cut right after its last
scored token (a causal LM's earlier positions never see later ones), so the scored tokens are
always its tail.

Superfiltering (``code_ifd/data_analysis.py``), with ``L = max_length``:
- prompt ``none``; ``n_ins = len(encode(prompt, truncation=True, max_length=L))``;
- direct pass ``encode(answer, truncation=True, max_length=L - n_ins + 1)`` with
  ``labels = input_ids``: tokens 1.. are scored, never the first;
- conditioned pass ``encode(prompt + answer, truncation=True, max_length=L)`` with labels
  masked before ``len(encode(text[:text.rfind(answer)]))``;
- an empty answer is not scored; a pass with no scored token (the script's NaN) or an empty
  direct pass (its bare ``except`` returns 0) gets a status instead.

Cherry LLM (``cherry_seletion/data_analysis.py --mod cherry``, then ``data_by_IFD.py``):
- ``alpaca``: the instruction text is the Alpaca prompt; ``wiz``: the bare instruction, and the
  conditioned text ``instruction [+ "\\nInput:" + input] + "\\n\\n### Response:" + answer``,
  while data_by_IFD.py finds the span in the text without the input;
- direct text ``"### Response:" + answer`` encoded to ``L - n_ins + 4`` tokens;
- per-token losses ``[t - 1]`` for tokens ``1..n-1``, sliced ``[start - 1 : end - 1]`` with
  ``start = len(encode(text[:text.rfind(answer)]))`` and ``end`` the truncated text's length;
- skipped (a status here): ``L - n_ins <= 0``, either span of length ``<= 0``, or
  ``n_ins + len_direct > L``. IFD = mean(cond losses) / mean(direct losses): ``ifd_loss``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from car_engine.batching import head_ids
from car_engine.errors import UsageError
from car_engine.ifd_prompts import (
    EMPTY_ANSWER,
    OK,
    RESPONSE_HEADER,
    EncodedPair,
    prompt_text,
    text_column,
)

NO_COND_TOKEN = "no answer token left to score in the conditioned pass"
NO_DIRECT_TOKEN = "no answer token left to score in the direct pass"
CHERRY_NO_ROOM = "skipped as Cherry LLM does: the instruction takes all of max_length"
CHERRY_TOO_LONG = ("skipped as Cherry LLM does: instruction and direct-pass answer tokens "
                   "exceed max_length")
# Cherry's comment: the direct text's header costs a few tokens the instruction does not.
CHERRY_DIRECT_EXTRA = 4


@dataclass(frozen=True)
class CompatTexts:
    """One record's texts as a script builds them: ``instruct`` (its length limits the
    direct pass), ``cond`` (the conditioned pass), ``span`` (whose prefix before the answer
    and truncated length give the conditioned span) and ``direct``."""

    instruct: str
    cond: str
    span: str
    direct: str


def compat_texts(compat: str, template: str, instruction: str, input: str,
                 output: str) -> CompatTexts:
    """The texts ``compat``'s script builds for one record with prompt ``template``."""
    if compat == "superfiltering":
        prompt = prompt_text("none", instruction, input)
        return CompatTexts(prompt, prompt + output, prompt + output, output)
    if compat != "cherry":
        raise UsageError(f"unknown compat preset '{compat}'")
    direct = RESPONSE_HEADER + output
    if template == "alpaca":
        prompt = prompt_text("alpaca", instruction, input)
        return CompatTexts(prompt, prompt + output, prompt + output, direct)
    if template == "wiz":
        # data_analysis.py puts the input in; data_by_IFD.py finds the span without it.
        return CompatTexts(instruction, prompt_text("wiz", instruction, input) + output,
                           prompt_text("wiz", instruction, "") + output, direct)
    raise UsageError(f"--compat cherry takes --template alpaca or wiz, not '{template}'")


def truncated_ids(tokenizer: Any, texts: list[str], lengths: list[int]) -> list[list[int]]:
    """``tokenizer(text, truncation=True, max_length=m)["input_ids"]`` for each text and its
    own ``m`` (special tokens as the tokenizer adds them): one batched call per distinct
    length, each text tokenized from a prefix only when long (:func:`batching.head_ids`)."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, m in enumerate(lengths):
        groups[m].append(i)
    out: list[list[int]] = [[] for _ in texts]
    for m, rows in groups.items():
        if m < 1:  # the tokenizer refuses a negative length; no script asks for 0 here
            raise ValueError(f"truncation length {m} < 1")
        got = head_ids(tokenizer, [texts[i] for i in rows], m, truncation=True, max_length=m)
        for i, ids in zip(rows, got):
            out[i] = ids
    return out


def lengths_upto(tokenizer: Any, texts: list[str], cap: int) -> list[int]:
    """``min(len(tokenizer(text)["input_ids"]), cap)`` (untruncated, special tokens as the
    tokenizer adds them): past ``cap`` tokens the count decides nothing."""
    return [min(len(ids), cap) for ids in head_ids(tokenizer, texts, cap)]


def _prefixes(texts: list[str], outputs: list[str]) -> list[str]:
    # text[:text.rfind(answer)]: what the scripts re-tokenize to find the answer's start
    return [t[:t.rfind(o)] for t, o in zip(texts, outputs)]


def scored_span(n_ids: int, start: int, end: int) -> range:
    """The tokens of a sequence of ``n_ids`` tokens whose losses Cherry's slice
    ``losses[start - 1 : end - 1]`` holds: ``losses[j]`` is token ``j + 1``'s (predicted at
    position ``j``), and a range slices exactly as the list does (negative indices too)."""
    return range(1, n_ids)[start - 1:end - 1]


def encode_compat(tokenizer: Any, records: pa.Table, *, compat: str, template: str,
                  max_length: int = 512) -> list[EncodedPair]:
    """Both passes' token ids and scored spans for every record, as ``compat``'s script
    computes them (module docstring); the scorer scores the tail ``n_answer`` tokens of
    ``cond_ids`` and ``n_direct`` of ``direct_ids``."""
    if max_length < 2:
        raise UsageError(f"max_length must be at least 2, got {max_length}")
    text_column(records, "id")
    outputs = text_column(records, "output")
    texts = [compat_texts(compat, template, i, x, o) for i, x, o in zip(
        text_column(records, "instruction"), text_column(records, "input"), outputs)]
    L, cap = max_length, max_length + CHERRY_DIRECT_EXTRA + 1

    n_ins = [len(ids) for ids in truncated_ids(tokenizer, [t.instruct for t in texts],
                                               [L] * len(texts))]
    extra = 1 if compat == "superfiltering" else CHERRY_DIRECT_EXTRA
    # Cherry skips a record with no room before it reads the direct pass; 1 keeps it valid.
    direct_lengths = [max(L - n + extra, 1) for n in n_ins]
    direct = truncated_ids(tokenizer, [t.direct for t in texts], direct_lengths)
    cond = truncated_ids(tokenizer, [t.cond for t in texts], [L] * len(texts))
    whole = lengths_upto(tokenizer, [t.cond for t in texts], L + 1)
    cond_start = lengths_upto(tokenizer, _prefixes([t.span for t in texts], outputs), cap)
    if compat == "superfiltering":
        pairs = [_superfiltering(*args) for args in zip(outputs, direct, cond, cond_start)]
    else:
        span_end = ([len(c) for c in cond] if template == "alpaca" else
                    [len(ids) for ids in truncated_ids(tokenizer, [t.span for t in texts],
                                                       [L] * len(texts))])
        direct_start = lengths_upto(tokenizer, _prefixes([t.direct for t in texts], outputs),
                                    cap)
        pairs = [_cherry(L, *args) for args in
                 zip(n_ins, direct, direct_start, cond, cond_start, span_end)]
    return [_with_truncation(p, n > L) for p, n in zip(pairs, whole)]


def _superfiltering(output: str, direct: list[int], cond: list[int], start: int
                    ) -> EncodedPair:
    """labels = input_ids for the direct pass; labels masked before ``start`` for the
    conditioned one (HF's shift: a label at position t is predicted at t - 1, never t = 0)."""
    cond_span = range(max(start, 1), len(cond))
    direct_span = range(1, len(direct))
    if output == "":
        status = EMPTY_ANSWER  # the script writes {} for it
    elif not cond_span:
        status = NO_COND_TOKEN
    elif not direct_span:
        status = NO_DIRECT_TOKEN
    else:
        status = OK
    return _pair(cond, cond_span, direct, direct_span, status)


def _cherry(L: int, n_ins: int, direct: list[int], direct_start: int, cond: list[int],
            cond_start: int, span_end: int) -> EncodedPair:
    """data_by_IFD.py's skip rules, in its order, over data_analysis.py's losses."""
    direct_span = scored_span(len(direct), direct_start, len(direct))
    cond_span = scored_span(len(cond), cond_start, span_end)
    len_direct, len_cond = len(direct) - direct_start, span_end - cond_start
    if L - n_ins <= 0:
        status = CHERRY_NO_ROOM
    elif len_direct <= 0 or not direct_span:
        status = NO_DIRECT_TOKEN
    elif len_cond <= 0 or not cond_span:
        status = NO_COND_TOKEN  # an empty slice: the script's mean would be NaN
    elif n_ins + len_direct > L:
        status = CHERRY_TOO_LONG
    else:
        status = OK
    return _pair(cond, cond_span, direct, direct_span, status)


def _pair(cond: list[int], cond_span: range, direct: list[int], direct_span: range,
          status: str) -> EncodedPair:
    """Each sequence cut after its span's last token, so the span is its tail."""
    cond_end = cond_span.stop if cond_span else len(cond)
    direct_end = direct_span.stop if direct_span else len(direct)
    return EncodedPair(cond_ids=cond[:cond_end], direct_ids=direct[:direct_end],
                       n_answer=len(cond_span) if status == OK else 0, truncated=False,
                       status=status, n_direct=len(direct_span) if status == OK else 0)


def _with_truncation(pair: EncodedPair, truncated: bool) -> EncodedPair:
    return EncodedPair(pair.cond_ids, pair.direct_ids, pair.n_answer, truncated, pair.status,
                       pair.n_direct)
