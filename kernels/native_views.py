"""CPU tensors as the numpy arrays the native kernels (``car_engine._native``) read and write:
numpy has no bf16, so a bf16 tensor passes its bits as int16.
"""

from __future__ import annotations

import numpy as np
import torch

DTYPES = {torch.bfloat16: torch.int16, torch.float32: torch.float32}  # the kernels' dtypes


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy view of the contiguous CPU tensor ``t`` (one of DTYPES): same memory."""
    return t.view(DTYPES[t.dtype]).numpy()
