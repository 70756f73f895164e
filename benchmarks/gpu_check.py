"""The one script that checks every GPU path on a bare CUDA machine (torch, triton,
transformers, numpy, pyarrow, tqdm; no faiss, ray, onnxruntime, no network, no model files:
the models are random-initialised with SmolLM2-135M's and all-MiniLM-L6-v2's dimensions and fed
random token ids).

    python benchmarks/gpu_check.py --out gpu_check.json            # a GPU: the full sizes
    python benchmarks/gpu_check.py --device cpu --tiny --out x.json # anywhere (CI runs this)

Sections: ``native`` (the extension imports or is built, else skipped with the reason),
``compile`` (the Triton kernel compiled for sm_90 and sm_80 at every autotune config: wgmma /
mma.sync, registers, spills, shared memory), ``kernel`` (fused cross-entropy against a chunked
fp32 oracle in fp32 and bf16, and its time and peak memory against cuBLAS logits +
logsumexp), ``ifd`` and ``encoders`` (benchmarks/gpu_check_models.py). One JSON summary is
printed and written to ``--out``; the exit status is 0 only when every check passed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
for _path in (HERE.parent, HERE):  # a script run from a checkout: the package, and the helper
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

# (N, V, H) of the kernel checks, and the tolerances of the targets.
KERNEL_SIZES = {
    "full": [(1, 49152, 576), (31, 49152, 576), (33, 49152, 576), (4096, 49152, 576),
             (16384, 49152, 576), (4096, 128256, 4096)],
    "tiny": [(1, 1000, 64), (31, 1000, 64), (33, 3001, 64), (300, 3001, 128)],
}
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-3}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sync(device: torch.device) -> None:
    """Wait for the device (timings must include the GPU work)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Any, device: torch.device, repeat: int = 3) -> tuple[float, Any]:
    """Best wall time of ``repeat`` runs of ``fn()`` (after one warm-up) and its last result."""
    result = fn()
    sync(device)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def peak_bytes(fn: Any, device: torch.device) -> int | None:
    """Peak device memory ``fn()`` allocates above what was allocated before (CUDA only)."""
    if device.type != "cuda":
        return None
    sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


def check_native() -> dict[str, Any]:
    """The native extension: imported, built here, or skipped with the reason."""
    try:
        from car_engine import native

        native.topk(__import__("numpy").arange(5, dtype="float64"), 2)
        return {"ok": True, "status": "imported"}
    except Exception as err:  # noqa: BLE001 - any failure to load is reported, not raised
        reason = f"{type(err).__name__}: {err}"
    missing = [m for m in ("pybind11", "cmake") if importlib.util.find_spec(m) is None]
    if missing:
        return {"ok": True, "status": "skipped", "reason": f"{reason}; cannot build: "
                f"{', '.join(missing)} not installed"}
    import subprocess

    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"],
                           cwd=HERE.parent, capture_output=True, text=True)
    return {"ok": build.returncode == 0, "status": "built" if build.returncode == 0 else
            "build failed", "reason": reason, "log_tail": build.stderr[-1500:]}


def check_compile() -> dict[str, Any]:
    """Every autotune config compiled for sm_90 and sm_80 (no GPU needed)."""
    from car_engine.kernels import compile_check, cross_entropy

    rows, ok = [], True
    for capability, configs in ((90, cross_entropy.CONFIGS), (80, cross_entropy.AMPERE_CONFIGS)):
        for config in configs:
            got = compile_check.compile_kernel(capability, config)
            tensor_cores = got.wgmma > 0 if capability == 90 else got.mma_sync > 0
            ok &= got.fits and tensor_cores
            rows.append({"sm": capability, "config": list(config), "wgmma": got.wgmma,
                         "mma_sync": got.mma_sync, "registers": got.registers,
                         "spill_bytes": got.spill_bytes, "shared_bytes": got.shared_bytes,
                         "ok": got.fits and tensor_cores})
    return {"ok": ok, "configs": rows}


def oracle_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
               chunk: int = 1024, *, input_dtype_gemm: bool = False) -> torch.Tensor:
    """Per-token NLL from fp32 logits computed ``chunk`` rows at a time (TF32 off); with
    ``input_dtype_gemm`` the logits come from a GEMM in the input dtype, as the CPU twin's do
    (its bf16 GEMM rounds the logits to bf16: the Triton kernel accumulates in fp32)."""
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    w = weight if input_dtype_gemm else weight.float()
    for i in range(0, hidden.shape[0], chunk):
        rows = hidden[i:i + chunk]
        logits = (rows @ w.T if input_dtype_gemm else rows.float() @ w.T).float()
        picked = logits.gather(1, targets[i:i + chunk, None])[:, 0]
        out[i:i + chunk] = torch.logsumexp(logits, dim=1) - picked
    return out


def cublas_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
               ) -> torch.Tensor:
    """The plain way: the whole [N, V] logits in the input dtype, then fp32 logsumexp."""
    logits = (hidden @ weight.T).float()
    return torch.logsumexp(logits, dim=1) - logits.gather(1, targets[:, None])[:, 0]


def ragged_offsets(n: int, gen: torch.Generator) -> torch.Tensor:
    """Segment offsets over n tokens with some empty segments (as IFD's batches have none, but
    the kernel must take them)."""
    lengths: list[int] = []
    left = n
    while left > 0:
        length = 0 if torch.rand(1, generator=gen).item() < 0.2 else \
            int(torch.randint(1, max(2, n // 8 + 2), (1,), generator=gen))
        lengths.append(min(length, left))
        left -= lengths[-1]
    lengths.insert(len(lengths) // 2, 0)
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int64)


def check_kernel(device: torch.device, tiny: bool) -> dict[str, Any]:
    """Parity with the oracle in fp32 and bf16; time and memory against cuBLAS + logsumexp."""
    from car_engine import kernels

    torch.backends.cuda.matmul.allow_tf32 = False  # the oracle and fp32 are exact
    rows, ok = [], True
    gen = torch.Generator().manual_seed(0)
    for n, vocab, width in KERNEL_SIZES["tiny" if tiny else "full"]:
        hidden32 = torch.randn(n, width, generator=gen).to(device)
        weight32 = (torch.randn(vocab, width, generator=gen) * (4 / width**0.5)).to(device)
        targets = torch.randint(0, vocab, (n,), generator=gen).to(device)
        offsets = ragged_offsets(n, gen).to(device)
        for name, dtype in DTYPES.items():
            hidden, weight = hidden32.to(dtype), weight32.to(dtype)
            backend = kernels.backend_for(hidden)
            want = oracle_nll(hidden, weight, targets, input_dtype_gemm=backend == "torch")
            nll, means = kernels.linear_cross_entropy(hidden, weight, targets, offsets)
            err = float((nll - want).abs().max())
            segs = offsets.tolist()
            want_means = torch.stack([want[a:b].mean() if b > a else want.new_tensor(float("nan"))
                                      for a, b in zip(segs, segs[1:])])
            mean_err = float((means - want_means).nan_to_num(0.0).abs().max())
            nan_ok = bool((means.isnan() == want_means.isnan()).all())
            row = {"n": n, "v": vocab, "h": width, "dtype": name,
                   "backend": backend, "max_abs_err": err,
                   "segment_mean_err": mean_err, "empty_segments_nan": nan_ok,
                   "ok": err <= TOLERANCE[name] and mean_err <= TOLERANCE[name] and nan_ok}
            if not tiny or device.type == "cuda":
                flops = 2.0 * n * vocab * width
                fused = lambda h=hidden, w=weight, t=targets: kernels.token_nll(h, w, t)  # noqa: E731
                plain = lambda h=hidden, w=weight, t=targets: cublas_nll(h, w, t)  # noqa: E731
                t_kernel, _ = timed(fused, device)
                t_plain, _ = timed(plain, device)
                row.update({
                    "kernel_ms": t_kernel * 1e3, "cublas_ms": t_plain * 1e3,
                    "kernel_tflops": flops / t_kernel / 1e12,
                    "cublas_tflops": flops / t_plain / 1e12,
                    "kernel_peak_mb": _mb(peak_bytes(fused, device)),
                    "cublas_peak_mb": _mb(peak_bytes(plain, device)),
                })
            ok &= row["ok"]
            rows.append(row)
        del hidden32, weight32
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"ok": ok, "rows": rows}


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def run_section(name: str, fn: Any, summary: dict[str, Any]) -> None:
    """Run one section; a crash is recorded as a failed check, and the others still run."""
    start = time.perf_counter()
    try:
        result = fn()
    except Exception as err:  # noqa: BLE001 - the summary must say what broke, and go on
        result = {"ok": False, "error": f"{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc()[-2000:]}
    result["seconds"] = round(time.perf_counter() - start, 1)
    summary["checks"][name] = result
    print(f"gpu_check: {name}: {'ok' if result['ok'] else 'FAILED'} "
          f"({result['seconds']} s)", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run every section, print and write the JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (CPU, CI)")
    parser.add_argument("--out", help="write the JSON summary here too")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="the card's dense bf16 peak, for the IFD MFU (H100/H200 SXM: 989)")
    args = parser.parse_args(argv)
    import gpu_check_models as models  # beside this file

    from car_engine.devices import describe_device, torch_device

    device = torch_device(args.device)
    summary: dict[str, Any] = {
        "device": describe_device(device), "tiny": args.tiny, "torch": torch.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(), "checks": {}}
    try:
        import triton

        summary["triton"] = triton.__version__
    except ImportError:
        summary["triton"] = None
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    sections = {
        "native": check_native,
        "compile": check_compile,
        "kernel": lambda: check_kernel(device, args.tiny),
        "ifd": lambda: models.check_ifd(device, args.tiny, args.peak_tflops),
        "encoders": lambda: models.check_encoders(device, args.tiny),
    }
    if args.tiny or summary["triton"] is None:
        skip.add("compile")  # tests/test_kernels_compile.py covers it in CI
    for name, fn in sections.items():
        if name not in skip:
            run_section(name, fn, summary)
    summary["ok"] = all(c["ok"] for c in summary["checks"].values())
    text = json.dumps(summary, indent=1, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
