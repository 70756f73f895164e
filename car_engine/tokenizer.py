"""A model folder's ``tokenizer.json`` read by the tokenizers library directly: the same ids as
transformers' fast tokenizer (which wraps that library), without importing transformers, whose
import and tokenizer load took 0.9-1.2 s of every run's start-up (profiled).

It takes the calls the encoders make (:func:`car_engine.batching.tokenize`): a batch of
texts, special tokens added (or not), optionally truncated, never padded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TOKENIZER_FILE = "tokenizer.json"


class JsonTokenizer:
    """The tokenizer of ``tokenizer.json``, with its padding and truncation settings cleared
    (each call says how to truncate)."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._max_length: int | None = None
        padding = self._tokenizer.padding  # None once cleared: read the id from the vocabulary
        self.pad_token_id: int | None = padding["pad_id"] if padding else \
            self._tokenizer.token_to_id("[PAD]")

    def __call__(self, texts: str | list[str], *, truncation: bool = False,
                 max_length: int | None = None, padding: bool = False,
                 return_attention_mask: bool = False, return_token_type_ids: bool = False,
                 add_special_tokens: bool = True) -> dict[str, Any]:
        """``{"input_ids": [[...], ...]}`` as transformers returns it for these arguments (for
        one text, ``{"input_ids": [...]}``)."""
        if padding or return_attention_mask or return_token_type_ids:
            raise ValueError("JsonTokenizer gives unpadded input ids only")
        limit = max_length if truncation else None
        if limit != self._max_length:
            if limit is None:
                self._tokenizer.no_truncation()
            else:
                self._tokenizer.enable_truncation(limit)
            self._max_length = limit
        batch = [texts] if isinstance(texts, str) else texts
        ids = [e.ids for e in self._tokenizer.encode_batch(batch,
                                                           add_special_tokens=add_special_tokens)]
        return {"input_ids": ids[0] if isinstance(texts, str) else ids}


def load_tokenizer(folder: Path, *, light: bool = True) -> Any:
    """The folder's tokenizer: a :class:`JsonTokenizer` where it has a ``tokenizer.json`` and
    ``light`` is set, else transformers' ``AutoTokenizer``."""
    if light and (folder / TOKENIZER_FILE).is_file():
        return JsonTokenizer(folder / TOKENIZER_FILE)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))
