"""Tokenize texts once, then cut them into length-bucketed batches, padded or packed (IQS
scoring and training, sentence embeddings, IFD).

Sorting by token length before batching means each batch pads to nearly its own length,
which is most of what makes encoding cheap; results go back to input order afterwards.

A text is cut to a prefix before it is tokenized, so one huge record costs no more than a
normal one (a 10 MB answer took 2 GB to tokenize whole, only for 512 tokens of it to be kept).
The prefix ends just before a space that follows a non-space character: the tokenizers used
here (a per-character normalizer, a pre-tokenizer that splits there: WordPiece/BERT, byte-level
BPE on the GPT-2 regex, SentencePiece's Metaspace) tokenize each word before that point
exactly as they do inside the whole text, so the prefix's tokens are the whole text's first
tokens. A prefix is only trusted when it yields at least the tokens wanted; else a prefix
twice as long is tried.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import numpy as np
import torch

# Characters of a text read per token wanted, at first: several times what one token spans
# (MiniLM's longest WordPiece is 18 characters; prose averages about 4), so one cut almost
# always suffices. The bound is not what makes a cut exact (the boundary and the check are).
CHARS_PER_TOKEN = 64
_BOUNDARY = re.compile(r"(?<=\S) ")  # a space after a non-space (str.isspace's whitespace)


def tokenize(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids per text (specials included), truncated to ``max_length``."""
    return head_ids(tokenizer, texts, max_length, truncation=True, max_length=max_length,
                    padding=False, return_attention_mask=False, return_token_type_ids=False)


def head_ids(tokenizer, texts: list[str], n_ids: int, **kwargs) -> list[list[int]]:
    """``tokenizer(text, **kwargs)["input_ids"]`` for every text, or for a long text a list
    with at least ``n_ids`` ids that are that list's first ones (exactly it when ``kwargs``
    truncate to ``n_ids``), tokenized from a prefix of the text only."""
    ids: list[list[int]] = [[] for _ in texts]
    todo, chars = list(range(len(texts))), n_ids * CHARS_PER_TOKEN
    while todo:
        heads = [prefix(texts[i], chars) for i in todo]
        retry = []
        for i, head, got in zip(todo, heads, tokenizer(heads, **kwargs)["input_ids"]):
            if len(got) < n_ids and len(head) < len(texts[i]):
                retry.append(i)  # the prefix fell short of the ids wanted: read more of it
            else:
                ids[i] = got
        todo, chars = retry, 2 * chars
    return ids


def prefix(text: str, chars: int) -> str:
    """The shortest prefix of at least ``chars`` characters that ends just before a space
    following a non-space character (a boundary of every word before it), or all of
    ``text``."""
    cut = _BOUNDARY.search(text, max(chars, 1))
    return text if cut is None else text[:cut.start()]


def length_batches(token_ids: list[list[int]], batch_size: int, min_fill: float = 0.8,
                   max_tokens: int | None = None) -> Iterator[np.ndarray]:
    """Indices of ``token_ids`` in batches of similar length, longest first (so memory use
    peaks at the start and a too-large batch fails fast). A batch holds at most
    ``batch_size`` texts and ends early at a text shorter than ``min_fill`` x its longest, so
    padding is under 1 - min_fill of any row: on a short list of mixed lengths a plain cut
    into fixed-size batches padded a fifth of the tokens. ``max_tokens`` also ends a batch
    before its rows x its longest row pass that budget (how GPU batches are sized)."""
    lengths, order = _longest_first(token_ids)
    first = 0
    for i in range(1, len(order) + 1):
        if (i == len(order) or i - first == batch_size
                or lengths[order[i]] < min_fill * lengths[order[first]]
                or (max_tokens is not None
                    and (i - first + 1) * lengths[order[first]] > max_tokens)):
            yield order[first:i]
            first = i


def token_batches(token_ids: list[list[int]], max_tokens: int) -> Iterator[np.ndarray]:
    """Indices of ``token_ids`` in batches of at most ``max_tokens`` tokens in all (at least
    one text each), longest first, for a forward that packs texts without padding."""
    lengths, order = _longest_first(token_ids)
    first, total = 0, 0
    for i, index in enumerate(order):
        if i > first and total + lengths[index] > max_tokens:
            yield order[first:i]
            first, total = i, 0
        total += lengths[index]
    if first < len(order):
        yield order[first:]


def _longest_first(token_ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(length of each text, indices longest first; equal lengths keep their order)."""
    lengths = np.fromiter((len(t) for t in token_ids), dtype=np.int64, count=len(token_ids))
    return lengths, np.argsort(-lengths, kind="stable")


def packed_ids(token_ids: Sequence[Sequence[int]], max_positions: int
               ) -> tuple[torch.Tensor, list[int]]:
    """The sequences' ids back to back (int64) and their lengths, for a forward over packed
    sequences; a sequence must have 1..``max_positions`` tokens."""
    lengths = [len(ids) for ids in token_ids]
    if min(lengths) < 1 or max(lengths) > max_positions:
        raise ValueError(f"sequences must have 1..{max_positions} tokens, "
                         f"got {min(lengths)}..{max(lengths)}")
    return torch.tensor([t for seq in token_ids for t in seq], dtype=torch.int64), lengths


def pad_batch(token_ids: list[list[int]], indices, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``input_ids`` and ``attention_mask`` (int64, right-padded) for the chosen texts."""
    width = max(len(token_ids[i]) for i in indices)
    ids = np.full((len(indices), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(indices), width), dtype=np.int64)
    for row, i in enumerate(indices):
        seq = token_ids[i]
        ids[row, :len(seq)] = seq
        mask[row, :len(seq)] = 1
    return ids, mask


def pad_states(states: list[torch.Tensor], multiple: int = 1
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad per-text hidden states ``[..., tokens, hidden]`` (one text's, or its every
    layer's) into float32 ``[..., batch, tokens, hidden]`` plus the matching attention mask;
    the width is rounded up to a ``multiple`` (fewer distinct shapes for the kernels' caches)."""
    width = -(-max(s.shape[-2] for s in states) // multiple) * multiple
    first = states[0]
    out = first.new_zeros((*first.shape[:-2], len(states), width, first.shape[-1]),
                          dtype=torch.float32)
    mask = torch.zeros((len(states), width), dtype=torch.int64)
    for row, s in enumerate(states):
        out[..., row, :s.shape[-2], :] = s
        mask[row, :s.shape[-2]] = 1
    return out, mask
