"""Builds car_engine._native by running CMake on CMakeLists.txt.

Everything else about the package lives in pyproject.toml; this file exists only
because setuptools needs a build_ext that knows how to drive CMake.
"""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        cfg = "Debug" if self.debug else "Release"
        configure = [
            "cmake",
            str(ROOT),
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
        ]
        jobs = str(os.cpu_count() or 2)
        subprocess.run(configure, cwd=build_dir, check=True)
        subprocess.run(["cmake", "--build", ".", "--config", cfg, "-j", jobs],
                       cwd=build_dir, check=True)


setup(
    # kernels/ and benchmarks/ sit at the top level but install inside our namespace.
    packages=find_packages(include=["car_engine", "car_engine.*"])
    + ["car_engine.kernels", "car_engine.benchmarks"],
    package_dir={"car_engine.kernels": "kernels", "car_engine.benchmarks": "benchmarks"},
    package_data={"car_engine": ["assets/**/*", "py.typed", "_native.pyi"]},
    ext_modules=[CMakeExtension("car_engine._native")],
    cmdclass={"build_ext": CMakeBuild},
)
