"""RMSNorm of packed rows by the native kernel (``csrc/rmsnorm.cpp``) on CPU tensors.

PyTorch's CPU ``rms_norm`` ran at ~2 GB/s on the packed IFD body's [tokens, 576] rows (7.5 ms
for 8192 bf16 rows; 1.9 s of a 16 s bf16 IFD run, profiled). The native kernel reads and
writes each element once, fp32 inside, on every core. Other devices and dtypes keep
``torch.nn.functional.rms_norm``, which the tests hold it to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from car_engine.kernels.native_views import DTYPES, as_numpy

from car_engine import native


def runs(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`rms_norm` takes the native kernel for ``x`` and ``weight``."""
    return x.device.type == "cpu" and x.dim() == 2 and x.dtype in DTYPES and \
        weight.dtype == x.dtype and weight.shape == x.shape[1:]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x**2, -1) + eps) * weight`` over the last axis of ``x`` [n, d]: the
    sum in fp32, one rounding to ``x``'s dtype at the end (as PyTorch's fused kernel)."""
    if not runs(x, weight):
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    x, weight = x.contiguous(), weight.contiguous()
    out = torch.empty_like(x)
    native.rms_norm(as_numpy(x), as_numpy(weight), eps, as_numpy(out), torch.get_num_threads(),
                    bf16=x.dtype == torch.bfloat16)
    return out
