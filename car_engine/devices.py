"""Devices and precisions for the torch stages: one map from precision names to torch dtypes,
and one rule for picking a device (asking for CUDA without one is an error, never a silent
fallback to the CPU)."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import torch

from car_engine.config import parse_device
from car_engine.errors import DeviceError, UsageError

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def torch_dtype(name: str, allowed: Sequence[str], what: str) -> torch.dtype:
    """The torch dtype of precision ``name``, which must be one of ``allowed`` for ``what``."""
    if name not in allowed:
        raise UsageError(f"{what}: unknown dtype {name!r} (choose from {', '.join(allowed)})")
    return TORCH_DTYPES[name]


def torch_device(device: str | None) -> torch.device:
    """The torch device for a --device value: ``auto``/None picks CUDA when torch sees a GPU,
    else the CPU; ``cuda`` or ``cuda:N`` that torch cannot use is a :class:`DeviceError`."""
    kind, index = parse_device(device)
    if kind == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise DeviceError(f"--device {device}: torch ({torch.__version__}, {build}) sees no "
                          "CUDA GPU")
    count = torch.cuda.device_count()
    if (index or 0) >= count:
        raise DeviceError(f"--device {device}: torch sees {count} GPU(s) (cuda:0..cuda:"
                          f"{count - 1})")
    return torch.device("cuda", index or 0)


def describe_device(device: torch.device) -> str:
    """``cpu`` or ``cuda:N (card name)``, for summaries and logs."""
    if device.type != "cuda":
        return str(device)
    index = device.index or 0
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def _torch_cpu_check(name: str) -> bool:
    check = getattr(getattr(torch, "cpu", None), name, None)
    return bool(check()) if check is not None else False


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere torch emulates
    it, and a bf16 GEMM ran ~100x slower than fp32 (0.9 vs 106 GFLOP/s on an AVX2 EPYC)."""
    return _torch_cpu_check("_is_avx512_bf16_supported") or cpu_has_amx()


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles, which PyTorch's oneDNN and flash-attention kernels use
    for bf16 (a bf16 GEMM ran 7-12x fp32 on a 2-core Xeon with AMX, benchmarks/RESULTS.md)."""
    return _torch_cpu_check("_is_amx_tile_supported")


def warn_if_emulated(dtype: torch.dtype, device: torch.device, what: str) -> None:
    """Warn (once per message) when ``what`` is asked to run bf16 on a CPU that only
    emulates it: it runs, but far slower than fp32."""
    if dtype == torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(f"{what}: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 is "
                      "emulated and much slower than fp32 here; fp32 is the faster choice",
                      stacklevel=3)
