"""`car-engine prepare`: the default models' derived files exist afterwards, and a second run
keeps them (same files, no re-export)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from car_engine.models.registry import cache_dir


@pytest.mark.slow
def test_prepare_makes_and_keeps_the_default_model_files():
    def prepare() -> list[str]:
        proc = subprocess.run([sys.executable, "-m", "car_engine.cli", "prepare"],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return [line.rsplit(" (", 1)[0] for line in proc.stdout.splitlines()]  # minus timings

    first = prepare()
    files = {p: p.stat().st_mtime_ns for p in cache_dir().rglob("*")
             if p.suffix in (".onnx", ".safetensors")}
    assert any(p.suffix == ".safetensors" for p in files)
    assert sum(p.suffix == ".onnx" for p in files) >= 2  # fp32 and int8
    second = prepare()
    assert second == first  # the same files named, in the same places
    assert {p: p.stat().st_mtime_ns for p in files} == files
