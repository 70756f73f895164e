"""benchmarks/gpu_check.py at tiny sizes on the CPU (as CI runs it), so the script that checks
the GPU paths on a GPU machine never rots: every section runs and passes, and the summary it
writes holds what the GPU run reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_tiny_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"),
                           "--device", "cpu", "--tiny", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    summary = json.loads(out.read_text())
    assert summary["device"] == "cpu" and summary["ok"]
    checks = summary["checks"]
    assert set(checks) == {"native", "kernel", "ifd", "encoders"}
    kernel_rows = checks["kernel"]["rows"]
    assert {r["dtype"] for r in kernel_rows} == {"fp32", "bf16"} and all(r["ok"] for r in
                                                                          kernel_rows)
    for dtype in ("fp32", "bf16"):
        ifd = checks["ifd"]["dtypes"][dtype]
        assert ifd["parity_ok"] and ifd["budgets"] and ifd["speedup_vs_batch1"] > 0
        assert {"ifd.forward", "ifd.loss", "other_s"} <= set(ifd["profile"])
    assert checks["encoders"]["embed"]["cosine_min"] > 0.99
