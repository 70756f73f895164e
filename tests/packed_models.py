"""Test helpers for the model bodies: the packed ones (car_engine.models.bert,
car_engine.models.llama) and the tiny random encoders the IQS tests train."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from car_engine.models.registry import minilm_path

MINILM_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                          "special_tokens_map.json")


def copy_minilm_tokenizer(folder: Path) -> None:
    """Put the real MiniLM tokenizer into ``folder``, so a tiny random encoder saved there
    tokenizes like the default model (real ids, real segment markers)."""
    for name in MINILM_TOKENIZER_FILES:
        shutil.copy(minilm_path() / name, folder / name)


def assert_refused(model, supports: Callable, build: Callable, monkeypatch: pytest.MonkeyPatch,
                   setting: str, value, reason: str) -> None:
    """``model`` is supported as it is; with ``config.<setting> = value`` it is not, for
    ``reason``, and building the packed forward from it raises a ValueError naming it."""
    assert supports(model) is None
    monkeypatch.setattr(model.config, setting, value)
    assert supports(model) == reason
    with pytest.raises(ValueError, match=reason):
        build(model)
