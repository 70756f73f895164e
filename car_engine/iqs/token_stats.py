"""Token statistics for the composite IQS penalties (issue #21): a few numbers per text that
mean-pooled encoder states carry poorly, computed from the token ids inside the model.

- ``repeated``: the share of the response's token 4-grams that already occurred in it (a
  generation loop repeats nearly all of them; real answers rarely a tenth);
- ``open-end`` / ``colon-end``: the response's last token is no sentence end / a colon (a cut
  answer, an introduction moved to the end); judged only on texts shorter than
  END_JUDGED_BELOW tokens, so an answer cut by the scoring window is never taken for a cut one;
- ``answer-in-prompt`` / ``prompt-in-answer``: the share of the response's content tokens that
  occur in the prompt, and of the prompt's in the response (an answer to another instruction
  shares few words with this one);
- ``late-overlap``: how much more the rest of the response shares with the prompt than its
  first START_TOKENS tokens do (answers open on the question's words; a shuffled one need not);
- ``connective-start``: the response opens on a connective ("however", "finally", ...);
- ``early-conclusion``: a concluding word ("in conclusion", "overall", ...) in the first 60%.

The word lists are turned into token ids once, from the tokenizer (:func:`stat_token_ids`),
and stored in the model's config; the statistics are plain tensor ops with no data-dependent
shapes, so eager PyTorch, the ONNX export and the one-pass encoder compute the same numbers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

STAT_NAMES = ("repeated", "open-end", "colon-end", "answer-in-prompt", "prompt-in-answer",
              "late-overlap", "connective-start", "early-conclusion")
NGRAM = 4  # tokens: long enough that "of the" repeating is no loop
START_TOKENS = 16  # the response's opening, compared with its rest
END_JUDGED_BELOW = 255  # every window the engine scores at is >= 256 tokens
EARLY = 0.6  # a concluding word before this share of the response is early

CLOSING = (".", "!", "?", ")", "]", "}", '"', "'", "`", "*")
CONNECTIVES = ("however", "therefore", "additionally", "furthermore", "moreover", "finally",
               "lastly", "thus", "hence", "consequently", "similarly", "secondly",
               "nevertheless", "nonetheless", "likewise", "accordingly", "ultimately",
               "besides", "meanwhile", "otherwise", "instead", "also", "another")
CONCLUSIONS = ("conclusion", "summary", "overall", "finally", "lastly", "ultimately",
               "summarize")
FUNCTION_WORDS = (
    "a an the and or but if then so of to in on at by for with from as into about than is are "
    "was were be been being am it its this that these those there here i you he she we they me "
    "him her us them my your his our their what which who whom whose how when where why all "
    "any some each more most other such no not only own same too very can could will would "
    "shall should may might must do does did done have has had having just also instruction "
    "input response").split()
# Table columns: content (counts for overlap), closing, colon, connective, conclusion.
COLUMNS = ("content", "closing", "colon", "connective", "conclusion")


def _single_ids(tokenizer: Any, words: tuple[str, ...] | list[str]) -> list[int]:
    """Ids of the words that are one token each (the rest cannot be matched by id)."""
    unknown = tokenizer.unk_token_id
    ids = [tokenizer.convert_tokens_to_ids(w) for w in words]
    return sorted({i for i in ids if isinstance(i, int) and i != unknown})


def stat_token_ids(tokenizer: Any) -> dict[str, list[int]]:
    """The token id lists :class:`TokenStatistics` reads, from a tokenizer's vocabulary:
    ``not-content`` (specials, punctuation-only tokens, function words), ``closing``,
    ``colon``, ``connective`` and ``conclusion``."""
    vocabulary = tokenizer.get_vocab()
    punctuation = [i for t, i in vocabulary.items() if not any(c.isalnum() for c in t)]
    not_content = set(punctuation) | set(tokenizer.all_special_ids)
    not_content |= set(_single_ids(tokenizer, FUNCTION_WORDS))
    return {"not-content": sorted(not_content), "closing": _single_ids(tokenizer, CLOSING),
            "colon": _single_ids(tokenizer, (":",)),
            "connective": _single_ids(tokenizer, CONNECTIVES),
            "conclusion": _single_ids(tokenizer, CONCLUSIONS)}


def _share(hits: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    return (hits * where).sum(dim=1) / where.sum(dim=1).clamp(min=1.0)


class TokenStatistics(nn.Module):
    """``stats(input_ids, attention_mask, response) -> [batch, len(STAT_NAMES)]`` in [-1, 1]."""

    def __init__(self, ids: dict[str, list[int]]) -> None:
        super().__init__()
        size = max(max(v, default=0) for v in ids.values()) + 2  # the last row: any other id
        table = torch.zeros(size, len(COLUMNS))
        table[:, 0] = 1.0
        table[ids["not-content"], 0] = 0.0
        for column, key in enumerate(("closing", "colon", "connective", "conclusion"), 1):
            table[ids[key], column] = 1.0
        self.table: torch.Tensor
        self.register_buffer("table", table, persistent=False)  # rebuilt from the config
        self.last_row = size - 1

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                response: torch.Tensor) -> torch.Tensor:
        """The statistics of each text (module docstring), from its token ids."""
        mask = attention_mask.to(torch.float32)
        answer = response.to(torch.float32)
        flags = self.table[input_ids.clamp(0, self.last_row)]  # [batch, tokens, 5]
        content, closing, colon, connective, conclusion = flags.unbind(dim=-1)
        positions = torch.cumsum(torch.ones_like(mask), dim=1) - 1  # 0..
        length = mask.sum(dim=1, keepdim=True)
        inside = torch.cumsum(answer, dim=1) * answer  # 1.. within the response, 0 outside
        size = answer.sum(dim=1, keepdim=True)
        same = (input_ids.unsqueeze(2) == input_ids.unsqueeze(1)).to(torch.float32)

        # Repeated 4-grams: all NGRAM aligned tokens equal, the earlier one inside the response.
        tokens = input_ids.shape[1]
        padded = nn.functional.pad(same, (0, NGRAM, 0, NGRAM))
        grams = padded[:, :tokens, :tokens]
        for k in range(1, NGRAM):
            grams = grams * padded[:, k:k + tokens, k:k + tokens]
        whole = answer * nn.functional.pad(answer, (0, NGRAM))[:, NGRAM - 1:NGRAM - 1 + tokens]
        earlier = (positions.unsqueeze(2) > positions.unsqueeze(1)).to(torch.float32)
        seen = (grams * earlier * whole.unsqueeze(1)).amax(dim=2)
        repeated = _share(seen, whole)

        # The last token before [SEP], on texts the window did not cut.
        last = (positions == length - 2).to(torch.float32) * answer
        judged = (length.squeeze(1) < END_JUDGED_BELOW).to(torch.float32) * (size.squeeze(1) > 1)
        open_end = judged * (1.0 - (closing * last).sum(dim=1) - (colon * last).sum(dim=1))
        colon_end = judged * (colon * last).sum(dim=1)

        # Content-token overlap of the response with the prompt, both ways.
        prompt_content = content * mask * (1.0 - answer)
        answer_content = content * answer
        in_prompt = (same * prompt_content.unsqueeze(1)).amax(dim=2)
        in_answer = (same * answer_content.unsqueeze(1)).amax(dim=2)
        opening = answer_content * (inside <= START_TOKENS)
        late = (_share(in_prompt, answer_content - opening) - _share(in_prompt, opening)
                ) * (size.squeeze(1) > 2 * START_TOKENS)
        first = (inside == 1).to(torch.float32)
        early = answer * (inside <= EARLY * size)
        return torch.stack([repeated, open_end, colon_end, _share(in_prompt, answer_content),
                            _share(in_answer, prompt_content), late,
                            (connective * first).sum(dim=1),
                            (conclusion * early).amax(dim=1)], dim=1)
