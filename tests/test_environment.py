"""Packaging: the extras that hold FAISS's and ONNX Runtime's CPU and GPU builds cannot put both
builds of one package into one install, and a mix that got there anyway is refused (exit 5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
from packaging.requirements import Requirement

from car_engine import environment
from car_engine.errors import DeviceError, exit_code_for

ROOT = Path(__file__).resolve().parents[1]


def _metadata() -> dict:
    """The [project] table the wheel's metadata (Requires-Dist) is built from."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {Requirement(r).name.lower() for r in requirements}


def test_no_build_of_faiss_or_onnxruntime_is_a_base_dependency():
    base = _names(_metadata()["dependencies"])
    for cpu, gpus in environment.BUILDS.values():
        assert not ({cpu, *gpus} & base), f"{cpu}/{gpus} must live in the cpu/gpu extras"


def test_the_cpu_and_gpu_extras_hold_one_build_each_and_no_twin():
    extras = {name: _names(reqs) for name, reqs in _metadata()["optional-dependencies"].items()}
    assert {"faiss-cpu", "onnxruntime"} <= extras["cpu"]
    assert {"faiss-gpu-cu12", "onnxruntime-gpu"} <= extras["gpu"]
    for package, (cpu, gpus) in environment.BUILDS.items():
        builds = {cpu, *gpus}
        # No extra but cpu/gpu names any build, and each of those names exactly one.
        for name, held in extras.items():
            found = held & builds
            assert len(found) == (1 if name in ("cpu", "gpu") else 0), (name, package, found)


def test_make_setup_installs_the_cpu_extra():
    makefile = (ROOT / "Makefile").read_text()
    assert "-e '.[cpu," in makefile


def test_two_builds_of_one_package_are_refused(monkeypatch):
    installed = {"faiss-cpu": "1.9.0", "faiss-gpu-cu12": "1.9.0", "onnxruntime": "1.20.0"}
    monkeypatch.setattr(environment, "installed_version", installed.get)
    environment.check_one_build.cache_clear()
    try:
        with pytest.raises(DeviceError, match="faiss-cpu==1.9.0 and faiss-gpu-cu12==1.9.0") as e:
            environment.check_one_build("faiss")
        assert exit_code_for(e.value)[0] == 5
        environment.check_one_build("onnxruntime")  # one build: fine
        assert not environment.gpu_build("onnxruntime")
    finally:
        environment.check_one_build.cache_clear()


def test_the_cli_exits_5_when_a_gpu_twin_is_installed_beside_the_cpu_build(tmp_path):
    """A real installed-metadata mix: faiss-gpu-cu12's dist-info on the path beside faiss-cpu."""
    site = tmp_path / "site"
    info = site / "faiss_gpu_cu12-1.9.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: faiss-gpu-cu12\nVersion: 1.9.0\n")
    vectors = tmp_path / "emb.npy"
    np.save(vectors, np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)])}
    proc = subprocess.run([sys.executable, "-m", "car_engine.cli", "cluster", str(vectors),
                           "--out", str(tmp_path / "c.parquet")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 5, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "faiss-gpu-cu12==1.9.0" in lines[0] and "faiss-cpu" in lines[0]
