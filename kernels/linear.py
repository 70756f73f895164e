"""The fastest dense layer torch offers on CPU: oneDNN's linear, with the elementwise work
around it (bias, GELU or SiLU, a residual add, the gated-FFN product) done inside the GEMM.

``torch.nn.functional.linear`` goes to the BLAS torch was built with. On this machine's AMD
EPYC that reaches ~140 GFLOP/s in fp32, where oneDNN reaches 175-195 (measured on 4096-token
transformer layer shapes). In bf16 both are near the ~380 GFLOP/s peak, but oneDNN also
applies bias and GELU inside the GEMM instead of in extra passes over the output (a separate
GELU cost 70% of its GEMM's time in bf16). Torch builds without oneDNN, GPUs and fp16 get
the plain ops.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn,
                                                             "_linear_pointwise")


@functools.cache
def _onednn_runs(dtype: torch.dtype) -> bool:
    """Whether oneDNN's linear runs ``dtype`` on this CPU. fp16 needs AVX512-FP16; bf16 has
    no oneDNN kernel on AVX2-only CPUs ("could not create a primitive descriptor"), where
    torch's own ops still run it. Probed once, on a tiny GEMM."""
    if dtype not in (torch.float32, torch.bfloat16):
        return False
    if dtype == torch.float32:
        return True
    x = torch.ones(2, 2, dtype=dtype)
    try:
        torch.ops.mkldnn._linear_pointwise(x, x, None, "none", [], "")
    except RuntimeError:
        return False
    return True


def _onednn(x: torch.Tensor) -> bool:
    return AVAILABLE and x.device.type == "cpu" and _onednn_runs(x.dtype)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           gelu: bool = False) -> torch.Tensor:
    """``x @ weight.T + bias``, then exact GELU when ``gelu``. ``weight`` is [out, in], as in
    ``nn.Linear``."""
    if _onednn(x):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu" if gelu else "none",
                                                  [], "none" if gelu else "")
    out = F.linear(x, weight, bias)
    return F.gelu(out) if gelu else out


def linear_add(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T + residual`` (a residual connection), the add inside the GEMM."""
    if _onednn(x):
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, None, "add")
    return F.linear(x, weight).add_(residual)


def linear_silu_mul(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(x @ gate.T) * (x @ up.T)``, the gated FFN input of Llama-style models: SiLU
    fused into the first GEMM, the product into the second."""
    if _onednn(x):
        gated = torch.ops.mkldnn._linear_pointwise(x, gate, None, "swish", [], "")
        return torch.ops.mkldnn._linear_pointwise.binary(x, gated, up, None, "mul")
    return F.silu(F.linear(x, gate)).mul_(F.linear(x, up))
