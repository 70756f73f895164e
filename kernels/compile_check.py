"""Compile the cross-entropy kernel for a GPU target on any machine (no GPU needed: Triton ships
ptxas) and report what the code does: tensor-core instructions (wgmma on sm_90, mma.sync on
sm_80), registers, spills, shared memory. Used by tests/test_kernels_compile.py and by
benchmarks/gpu_check.py (which prints it for every config)."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import triton
from car_engine.kernels import cross_entropy
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

# Shared memory one block may use: H100/H200 (sm_90) 227 KB, A100 (sm_80) 163 KB.
SHARED_LIMIT = {90: 232_448, 80: 166_912}
_POINTERS = ("hidden_ptr", "weight_ptr", "target_ptr", "max_ptr", "sum_ptr", "picked_ptr")
_INTS = ("n_tokens", "vocab", "width", "split_size", "n_bucket", "stride_hn", "stride_wv")


@dataclass(frozen=True)
class CompiledKernel:
    """What one compile of the partial log-sum-exp kernel produced."""

    capability: int
    config: tuple[int, int, int, int, int]
    wgmma: int  # wgmma.mma_async instructions in the PTX
    mma_sync: int  # mma.sync instructions in the PTX
    registers: int
    spill_bytes: int  # spill stores + loads, from ptxas -v
    shared_bytes: int

    @property
    def fits(self) -> bool:
        """No spills and shared memory within the card's limit."""
        return self.spill_bytes == 0 and self.shared_bytes <= SHARED_LIMIT[self.capability]


def _ptxas_report(ptx: str, capability: int) -> str:
    """``ptxas -v`` on the PTX with the newest ptxas Triton ships (its PTX needs it)."""
    folder = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    arch = "sm_90a" if capability == 90 else f"sm_{capability}"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        errors = []
        for name in ("ptxas-blackwell", "ptxas"):
            tool = os.path.join(folder, name)
            if not os.path.exists(tool):
                continue
            run = subprocess.run([tool, f"--gpu-name={arch}", "-v", path, "-o", os.devnull],
                                 capture_output=True, text=True)
            if run.returncode == 0:
                return run.stderr
            errors.append(run.stderr.strip()[-300:])
    raise RuntimeError(f"no ptxas in {folder} assembles Triton's PTX: {errors}")


def compile_kernel(capability: int, config: tuple[int, int, int, int, int],
                   dtype: str = "bf16") -> CompiledKernel:
    """Compile ``_partial_lse_kernel`` for ``cuda`` ``capability`` (90, 80) at one autotune
    ``config`` (BLOCK_N, BLOCK_V, BLOCK_H, warps, stages), specialised as a launch on contiguous
    ``dtype`` tensors is (unit inner strides, 16-byte aligned pointers and sizes)."""
    fn = cross_entropy._partial_lse_kernel
    block_n, block_v, block_h, warps, stages = config
    types = {"hidden_ptr": f"*{dtype}", "weight_ptr": f"*{dtype}", "target_ptr": "*i64"}
    signature = {name: types.get(name, "*fp32") for name in _POINTERS}
    signature.update({name: "i32" for name in _INTS})
    constants = {"stride_hh": 1, "stride_wh": 1, "BLOCK_N": block_n, "BLOCK_V": block_v,
                 "BLOCK_H": block_h, "PRECISION": "ieee" if dtype == "fp32" else None,
                 "UPCAST": False}
    signature.update(dict.fromkeys(constants, "constexpr"))
    aligned = [*_POINTERS, "width", "stride_hn", "stride_wv"]
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in aligned}
    compiled = triton.compile(ASTSource(fn, signature, constants, attrs),
                              target=GPUTarget("cuda", capability, 32),
                              options={"num_warps": warps, "num_stages": stages})
    ptx = compiled.asm["ptx"]
    report = _ptxas_report(ptx, capability)
    registers = max(int(r) for r in re.findall(r"Used (\d+) registers", report))
    spills = sum(int(b) for b in re.findall(r"(\d+) bytes spill (?:stores|loads)", report))
    return CompiledKernel(capability, config, ptx.count("wgmma.mma_async"),
                          ptx.count("mma.sync"), registers, spills, compiled.metadata.shared)
