"""Devices and precisions for the torch stages: one map from precision names to torch dtypes,
and one rule for picking a device (asking for CUDA without one is an error, never a silent
fallback to the CPU)."""

from __future__ import annotations

import functools
import warnings
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


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere torch emulates
    it, and a bf16 GEMM ran ~100x slower than fp32 (0.9 vs 106 GFLOP/s on an AVX2 EPYC)."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported",
                                                     "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if check is not None)


def warn_if_emulated(dtype: torch.dtype, device: torch.device, what: str) -> None:
    """Warn (once per message) when ``what`` is asked to run bf16 on a CPU that only
    emulates it: it runs, but far slower than fp32."""
    if dtype == torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(f"{what}: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 is "
                      "emulated and much slower than fp32 here; fp32 is the faster choice",
                      stacklevel=3)
