"""Fused ops (installed as ``car_engine.kernels``), each dispatched by device from here.

- ``cross_entropy.py`` (Triton) and ``cross_entropy_torch.py`` (its PyTorch twin, same API):
  IFD's per-token loss without a full logits tensor. Triton on CUDA tensors, the twin
  otherwise (it is the production CPU path, not only a reference).
- ``attention.py``: packed-sequence attention on the native AVX512 kernel (CPU).
- ``linear.py``: oneDNN linears with bias, GELU/SiLU, residual adds fused in (CPU).
- ``rms_norm.py``: RMSNorm of packed rows on the native kernel (CPU).
- ``native_views.py``: CPU tensors as the numpy arrays those native kernels take.

``CAR_ENGINE_KERNELS=torch|triton`` forces one (``triton`` on CPU tensors needs
``TRITON_INTERPRET=1``, which is how the tests run it).
"""

from __future__ import annotations

import os

import torch
from car_engine.kernels import cross_entropy_torch

BACKENDS = ("torch", "triton")


def backend_for(tensor: torch.Tensor) -> str:
    """The backend that will run for ``tensor``: the forced one, else by device."""
    forced = os.environ.get("CAR_ENGINE_KERNELS", "").strip().lower()
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"CAR_ENGINE_KERNELS={forced!r}: choose one of {', '.join(BACKENDS)}")
        return forced
    return "triton" if tensor.is_cuda else "torch"


def _implementation(tensor: torch.Tensor):
    if backend_for(tensor) == "triton":
        from car_engine.kernels import cross_entropy  # imports triton: only when asked for

        return cross_entropy
    return cross_entropy_torch


def _check(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
           targets_checked: bool = False) -> None:
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} "
                         "must be [N, H] and [V, H]")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden is {hidden.dtype} but weight is {weight.dtype}")
    if targets.shape != (hidden.shape[0],):
        raise ValueError(f"targets {tuple(targets.shape)} must be [{hidden.shape[0]}]")
    # The range check reads the targets back to the host (a sync on a GPU): a caller that built
    # them from ids it has checked already says so with targets_checked.
    if targets_checked or not targets.numel():
        return
    if int(targets.min()) < 0 or int(targets.max()) >= weight.shape[0]:
        raise ValueError(f"targets must lie in [0, {weight.shape[0]})")


def token_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token NLL ``[N]`` (fp32) of ``targets`` under ``softmax(hidden @ weight.T)``."""
    _check(hidden, weight, targets)
    return _implementation(hidden).token_nll(hidden, weight, targets)


def segment_mean(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Per-segment means ``[S]`` of ``values`` split at ``offsets`` ``[S+1]``; NaN if empty."""
    return _implementation(values).segment_mean(values, offsets)


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, offsets: torch.Tensor,
    *, targets_checked: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL ``[N]`` and per-segment mean NLL ``[S]`` from hidden states ``[N, H]``, the
    output projection ``[V, H]``, targets ``[N]`` and segment offsets ``[S+1]``.
    ``targets_checked``: the caller has checked every target is in ``[0, V)`` (no host sync)."""
    _check(hidden, weight, targets, targets_checked)
    return _implementation(hidden).linear_cross_entropy(hidden, weight, targets, offsets)


__all__ = ["backend_for", "linear_cross_entropy", "segment_mean", "token_nll"]
