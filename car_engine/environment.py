"""Which build of each accelerated package is installed: one per import package, or an error.

``faiss`` and ``onnxruntime`` each come as a CPU and a GPU distribution (``faiss-cpu`` /
``faiss-gpu-cu12``, ``onnxruntime`` / ``onnxruntime-gpu``) that install the same import
package over each other, so with both installed which one Python imports is install-order luck.
The ``cpu`` and ``gpu`` extras install one build each; this module refuses a mix (exit 5) before
the package is used. It reads installed metadata only (importlib.metadata), never imports them.
"""

from __future__ import annotations

import functools
from importlib import metadata

from car_engine.errors import DeviceError

# import package -> (the CPU distribution, the GPU distributions that install the same module)
BUILDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "faiss": ("faiss-cpu", ("faiss-gpu-cu12", "faiss-gpu-cu11", "faiss-gpu")),
    "onnxruntime": ("onnxruntime", ("onnxruntime-gpu", "onnxruntime-directml",
                                    "onnxruntime-openvino")),
}


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def installed_builds(package: str) -> list[str]:
    """``name==version`` of every installed distribution that provides import ``package``."""
    cpu, gpus = BUILDS[package]
    found = []
    for name in (cpu, *gpus):
        version = installed_version(name)
        if version is not None:
            found.append(f"{name}=={version}")
    return found


@functools.cache
def check_one_build(package: str) -> None:
    """Raise :class:`DeviceError` when more than one build of ``package`` is installed (checked
    once per process: installs do not change under a running program)."""
    builds = installed_builds(package)
    if len(builds) > 1:
        names = " ".join(b.split("==")[0] for b in builds)
        raise DeviceError(
            f"{' and '.join(builds)} are both installed and provide the same '{package}' "
            f"module, so which one runs is install-order luck: pip uninstall -y {names}, then "
            "pip install 'car-engine[cpu]' (CPU builds) or 'car-engine[gpu]' (GPU builds)")


def gpu_build(package: str) -> bool:
    """Whether the installed build of ``package`` is a GPU one (after :func:`check_one_build`)."""
    check_one_build(package)
    return any(installed_version(name) is not None for name in BUILDS[package][1])
