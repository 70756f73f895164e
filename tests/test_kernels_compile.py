"""The Triton cross-entropy kernel compiled for Hopper (sm_90) and Ampere (sm_80) on this
GPU-less machine: wgmma on sm_90, mma.sync on sm_80, no register spills, shared memory within
the card's limit."""

from __future__ import annotations

import pytest

triton = pytest.importorskip("triton")

from car_engine.kernels import compile_check, cross_entropy  # noqa: E402

# One config per target keeps this test at ~10 s on a cold Triton cache (each compile is a few
# seconds on 2 cores); benchmarks/gpu_check.py compiles every config of both lists.


@pytest.mark.parametrize("config", cross_entropy.CONFIGS[:1])
def test_sm90_uses_wgmma_without_spills(config):
    got = compile_check.compile_kernel(90, config)
    assert got.wgmma > 0, got
    assert got.fits, got


@pytest.mark.parametrize("config", cross_entropy.AMPERE_CONFIGS[:1])
def test_sm80_uses_mma_sync_without_spills(config):
    got = compile_check.compile_kernel(80, config)
    assert got.wgmma == 0 and got.mma_sync > 0, got
    assert got.fits, got
