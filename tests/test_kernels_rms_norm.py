"""The native RMSNorm (csrc/rmsnorm.cpp) against float64 and PyTorch's rms_norm."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from car_engine.kernels.rms_norm import rms_norm, runs

from car_engine import native


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, width", [(1, 1), (3, 15), (257, 576), (64, 17)])
def test_matches_float64_and_torch(dtype, rows, width):
    # widths below, at and not a multiple of the kernel's 16 partial sums; rows over threads
    torch.manual_seed(rows * width)
    x = (torch.randn(rows, width) * 3).to(dtype)
    weight = (torch.rand(width) + 0.5).to(dtype)
    assert runs(x, weight)
    got = rms_norm(x, weight, 1e-5)
    exact = F.rms_norm(x.double(), (width,), weight.double(), 1e-5)
    step = 2 ** -7 if dtype == torch.bfloat16 else 2 ** -22  # half an ulp, relative
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), exact, rtol=step * 1.01, atol=1e-12)
    if dtype == torch.bfloat16:  # torch's bf16 values, except where the sums' order tips one
        want = F.rms_norm(x, (width,), weight, 1e-5)
        assert (got == want).float().mean() >= 0.99


def test_special_values_pass_through():
    x = torch.tensor([[0.0, 0.0, 0.0], [float("inf"), 1.0, 2.0], [float("nan"), 1.0, 2.0]])
    for dtype in (torch.float32, torch.bfloat16):
        got = rms_norm(x.to(dtype), torch.ones(3, dtype=dtype), 1e-6).float()
        assert torch.equal(got[0], torch.zeros(3))  # 0 / sqrt(eps)
        assert got[2].isnan().all()  # a NaN spoils its row
        assert torch.equal(got.isnan(), F.rms_norm(x, (3,), torch.ones(3), 1e-6).isnan())


def test_other_inputs_take_torch_and_bad_arrays_are_refused():
    x = torch.randn(4, 8, dtype=torch.float64)
    assert not runs(x, torch.ones(8, dtype=torch.float64))
    torch.testing.assert_close(rms_norm(x, torch.ones(8, dtype=torch.float64), 1e-5),
                               F.rms_norm(x, (8,), torch.ones(8, dtype=torch.float64), 1e-5))
    assert not runs(torch.randn(2, 3, 8), torch.ones(8))  # not 2-D
    with pytest.raises(ValueError, match="shapes disagree"):
        native.rms_norm(np.ones((2, 8), np.float32), np.ones(7, np.float32), 1e-5,
                        np.empty((2, 8), np.float32), 1, bf16=False)
