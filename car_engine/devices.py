"""Devices and precisions for the torch stages: one map from precision names to torch dtypes,
and one rule for picking a device (asking for CUDA without one is an error, never a silent
fallback to the CPU)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from car_engine.errors import UsageError

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def torch_dtype(name: str, allowed: Sequence[str], what: str) -> torch.dtype:
    """The torch dtype of precision ``name``, which must be one of ``allowed`` for ``what``."""
    if name not in allowed:
        raise UsageError(f"{what}: unknown dtype {name!r} (choose from {', '.join(allowed)})")
    return TORCH_DTYPES[name]


def torch_device(device: str | None) -> torch.device:
    """``device``, or CUDA when present and else the CPU; a CUDA device that is not there is
    refused."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {device!r} asked for, but torch sees no CUDA GPU")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise UsageError(f"device {device!r} asked for, but torch sees "
                             f"{torch.cuda.device_count()} GPU(s)")
    return chosen
