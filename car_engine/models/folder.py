"""A transformers model folder read straight into a packed body (car_engine.models.bert,
car_engine.models.llama): ``config.json`` and ``model.safetensors``, without building the
transformers model, whose import and construction cost 1.5-2.6 s of a run (profiled).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

WEIGHTS_FILE = "model.safetensors"


class _Body(Protocol):
    def _load(self, config: Mapping[str, Any], weights: Mapping[str, torch.Tensor],
              dtype: torch.dtype) -> None: ...


B = TypeVar("B", bound=_Body)


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's ``config.json``."""
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def config_of(model: Any) -> Mapping[str, Any]:
    """The config of ``model`` (a transformers model) as a dict, or ``model`` when it is one."""
    # torch types a config read off a Module as Tensor | Module: it is transformers' config
    return model.config.to_dict() if hasattr(model, "config") else model


def body_from_folder(cls: type[B], folder: Path, dtype: torch.dtype, prefix: str,
                     kind: str) -> B:
    """``cls`` (a packed body) loaded from ``folder`` in ``dtype``; weight names lose
    ``prefix`` (where a task model, e.g. ``BertForX``, keeps its encoder). A missing weight is
    a ValueError naming the file and the ``kind`` of model expected."""
    from safetensors.torch import load_file

    weights = {name.removeprefix(prefix): w
               for name, w in load_file(str(folder / WEIGHTS_FILE)).items()}
    body = cls.__new__(cls)
    try:
        body._load(read_config(folder), weights, dtype)
    except KeyError as err:
        raise ValueError(f"{folder / WEIGHTS_FILE}: no {kind} weight {err}") from err
    return body
