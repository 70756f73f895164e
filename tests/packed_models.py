"""Test helper for the packed model bodies (car_engine.models.bert, car_engine.models.llama)."""

from __future__ import annotations

from collections.abc import Callable

import pytest


def assert_refused(model, supports: Callable, build: Callable, monkeypatch: pytest.MonkeyPatch,
                   setting: str, value, reason: str) -> None:
    """``model`` is supported as it is; with ``config.<setting> = value`` it is not, for
    ``reason``, and building the packed forward from it raises a ValueError naming it."""
    assert supports(model) is None
    monkeypatch.setattr(model.config, setting, value)
    assert supports(model) == reason
    with pytest.raises(ValueError, match=reason):
        build(model)
