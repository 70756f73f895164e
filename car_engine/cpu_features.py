"""What this CPU computes natively, as PyTorch reports it: the facts the "auto" precisions and
the packed bodies' kernel choices depend on. torch is imported on the first question only, so
the configuration can ask without loading it at import."""

from __future__ import annotations

import functools


def _torch_cpu_check(name: str) -> bool:
    import torch

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
