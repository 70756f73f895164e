"""Export the whole IQS scorer (encoder + layer mix + pooling + head) to ONNX and run it
with ONNX Runtime.

- fp32: the exported graph, with ONNX Runtime's transformer fusions (attention, layer
  norm, GELU) applied offline when they load cleanly.
- fp16: for GPUs; weights and activations in half precision, inputs/outputs kept as they
  are (int64 ids in, fp32 score out); normalisation runs in fp16 too (see to_fp16).
- int8: dynamic quantization of the MatMul weights, for CPUs.
Files are cached next to the model's weights (or in the cache folder when that is not
writable) and re-exported when the weights change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from car_engine.config import IQS_PRECISIONS, parse_device
from car_engine.environment import check_one_build
from car_engine.errors import DeviceError, ModelError, UsageError
from car_engine.io import atomic_path
from car_engine.iqs.model import IQSModel
from car_engine.models.registry import cache_dir

PRECISIONS = IQS_PRECISIONS
INPUT_NAMES = ["input_ids", "attention_mask"]
OPSET = 17
EXPORT_VERSION = 2  # bump when export or quantization changes, so cached files are redone


class _FrozenMixScorer(nn.Module):
    """Inference form of :class:`IQSModel` for export: the mix weights (sparsemax/softmax of
    the scalars, times gamma) are a constant, so the graph needs no sort."""

    mix: torch.Tensor  # a buffer (register_buffer below): [mixes, layers]

    def __init__(self, model: IQSModel) -> None:
        super().__init__()
        self.encoder, self.model = model.encoder, model
        with torch.no_grad():
            mix = torch.stack([m.gamma * m.weights() for m in model.mixes()])
        self.register_buffer("mix", mix.detach().clone())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                           output_hidden_states=True, return_dict=True)
        # sum() starts from 0, so its type says int | Tensor; over one or more layers it is a Tensor
        mixed = [cast(torch.Tensor, sum(w * h for w, h in zip(row, out.hidden_states)))
                 for row in self.mix]
        return self.model.score_mixes(mixed, input_ids, attention_mask)


def _example_inputs(pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Two rows of different lengths so the traced graph keeps the padding-mask path.
    ids = torch.full((2, 16), 1000, dtype=torch.int64)
    mask = torch.ones((2, 16), dtype=torch.int64)
    ids[1, 9:], mask[1, 9:] = pad_id, 0
    return ids, mask


def export_fp32(model: IQSModel, out: Path, pad_id: int = 0) -> Path:
    """Trace ``model`` to an fp32 ONNX graph with dynamic batch and sequence axes."""
    model = model.eval()
    encoder: Any = model.encoder  # a transformers model: its methods are not nn.Module's
    if hasattr(encoder, "set_attn_implementation"):
        encoder.set_attn_implementation("eager")  # plain ops trace and fuse reliably
    wrapper = _FrozenMixScorer(model).eval()
    dynamic = {"input_ids": {0: "batch", 1: "sequence"},
               "attention_mask": {0: "batch", 1: "sequence"}, "score": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, _example_inputs(pad_id), str(out), input_names=INPUT_NAMES,
                          output_names=["score"], dynamic_axes=dynamic, opset_version=OPSET,
                          dynamo=False, do_constant_folding=True)
    return out


def _fuse_transformer_ops(path: Path, model: IQSModel) -> None:
    """Apply ONNX Runtime's BERT fusions in place (attention, skip layer norm, GELU); keep
    the plain graph if the optimizer cannot handle it."""
    from onnxruntime.transformers.optimizer import optimize_model

    cfg: Any = model.encoder.config  # a transformers config (torch types it Tensor | Module)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimized = optimize_model(str(path), model_type="bert",
                                       num_heads=cfg.num_attention_heads,
                                       hidden_size=cfg.hidden_size, opt_level=1)
        optimized.save_model_to_file(str(path))
    except Exception as err:  # noqa: BLE001 - fusion is an optimisation, never a requirement
        warnings.warn(f"ONNX Runtime fusions skipped ({type(err).__name__}: {err})", stacklevel=2)


def to_fp16(src: Path, out: Path) -> Path:
    """An fp16 copy of an fp32 graph, int64 inputs and the fp32 score output unchanged."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # ONNX Runtime's default op block list (which holds no normalisation op). Adding the fused
    # SkipLayerNormalization to it gave a graph ONNX Runtime refuses to load (its inputs bound
    # to fp16 and fp32 at once), so the layer norms run in fp16 like the rest.
    graph = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(graph, str(out))
    return out


def to_int8(src: Path, out: Path) -> Path:
    """Dynamic int8 quantization of the weight matrices (activations quantized at run time).
    Per-channel weight scales: per-tensor ones moved ShareGPT scores enough to drop the rank
    correlation with fp32 to ~0.93 (per-channel: ~0.99)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Fused ops (com.microsoft domain) defeat shape inference; their outputs are fp32.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint at WARNING
    try:
        quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        root.setLevel(level)
    return out


def export(model: IQSModel, out: str | os.PathLike, precision: str = "fp32",
           pad_id: int = 0) -> Path:
    """Write the whole scorer as ONNX at ``precision`` (fp32, fp16 or int8) to ``out``."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fp32 = out if precision == "fp32" else out.with_name(out.stem + ".fp32-tmp.onnx")
    try:
        export_fp32(model, fp32, pad_id)
        _fuse_transformer_ops(fp32, model)
        if precision == "fp16":
            to_fp16(fp32, out)
        elif precision == "int8":
            to_int8(fp32, out)
    finally:
        if fp32 != out:
            fp32.unlink(missing_ok=True)
    return out


def weights_fingerprint(paths: list[Path], extra: str = "") -> str:
    """A short hash of the weight files (path, size, mtime) and library versions, used to
    tell a stale cached export from a current one."""
    from importlib.metadata import version

    check_one_build("onnxruntime")  # before the first import of it on every export path
    import onnxruntime

    # transformers' version from its metadata: importing it only for this was 0.7 s of start-up
    parts = [extra, str(EXPORT_VERSION), torch.__version__, version("transformers"),
             onnxruntime.__version__]
    for p in paths:
        st = p.stat()
        parts.append(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def cached_export_path(weights: Path, precision: str, fingerprint: str) -> Path:
    """Where the exported file lives: ``onnx/`` beside the weights when that folder is
    writable and not inside the installed package (the shipped default model), else the
    car-engine cache folder."""
    package_assets = Path(__file__).resolve().parents[1] / "assets"
    folder = cache_dir() / "iqs-onnx" / fingerprint
    if package_assets not in weights.resolve().parents:
        beside = weights.parent / "onnx"
        try:
            beside.mkdir(exist_ok=True)
            probe = beside / ".write-test"
            probe.touch()
            probe.unlink()
            folder = beside
        except OSError:
            pass
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{weights.stem}-{precision}-{fingerprint}.onnx"


def ensure_export(model_loader: Callable[[], IQSModel], weights: Path, precision: str,
                  pad_id: int) -> Path:
    """The cached export for ``weights`` at ``precision``, made if missing or stale. The
    model comes from ``model_loader()``, called only when an fp32 trace is needed; fp16 and
    int8 files are converted from the cached fp32 one."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    path = cached_export_path(weights, precision, weights_fingerprint([weights]))
    if path.is_file():
        return path
    for stale in path.parent.glob(f"{weights.stem}-{precision}-*.onnx"):
        stale.unlink(missing_ok=True)
    with atomic_path(path, suffix=".onnx") as tmp:
        if precision == "fp32":
            export(model_loader(), tmp, "fp32", pad_id)
        else:
            fp32 = ensure_export(model_loader, weights, "fp32", pad_id)
            (to_fp16 if precision == "fp16" else to_int8)(fp32, tmp)
    return path


CUDA_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"


def providers(device: str | None = None) -> list[Any]:
    """Execution providers for a --device value: ``cpu`` the CPU; ``cuda``/``cuda:N`` the CUDA
    provider on GPU N (``device_id``), an error when this onnxruntime has none; ``auto``/None
    CUDA when this onnxruntime has it, else the CPU."""
    check_one_build("onnxruntime")
    import onnxruntime as ort

    kind, index = parse_device(device)
    has_cuda = CUDA_PROVIDER in ort.get_available_providers()
    if kind == "cuda" and not has_cuda:
        raise DeviceError(f"--device {device}: onnxruntime {ort.__version__} has no "
                          "CUDAExecutionProvider (pip install 'car-engine[gpu]', which "
                          "installs onnxruntime-gpu in place of onnxruntime)")
    if kind == "cpu" or not has_cuda:
        return [CPU_PROVIDER]
    return [(CUDA_PROVIDER, {"device_id": index or 0}), CPU_PROVIDER]


def expects_gpu(device: str | None) -> bool:
    """Whether ONNX Runtime will be asked to run on a GPU for ``device`` (what ``auto``
    precision follows; a provider that then fails to load is :class:`OrtRunner`'s to catch)."""
    return providers(device)[0] != CPU_PROVIDER


class OrtRunner:
    """Runs an exported scorer: ``runner(input_ids, attention_mask) -> scores`` (numpy).

    ONNX Runtime answers a CUDA provider that fails to load (no CUDA or cuDNN libraries, no
    GPU) by running on the CPU with a warning; asked for ``cuda`` that is refused here
    (:class:`DeviceError`), and under ``auto`` the provider that really runs is recorded."""

    def __init__(self, path: str | os.PathLike, device: str | None = None) -> None:
        import onnxruntime as ort

        wanted = providers(device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=wanted)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own error types
            raise ModelError(f"{path}: ONNX Runtime cannot load it: {err}") from None
        self.provider = self.session.get_providers()[0]
        if parse_device(device)[0] == "cuda" and self.provider != CUDA_PROVIDER:
            raise DeviceError(f"--device {device}: onnxruntime's CUDAExecutionProvider did not "
                              f"load (it runs on {self.provider}); check that the CUDA and "
                              "cuDNN libraries onnxruntime-gpu needs are installed")
        self.on_gpu = self.provider == CUDA_PROVIDER
        self.device_id = int(wanted[0][1]["device_id"]) if self.on_gpu else None
        self.path = Path(path)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        return self.session.run(None, feeds)[0].astype(np.float64)

    def describe(self) -> str:
        """Which file and execution provider score."""
        where = f" cuda:{self.device_id}" if self.on_gpu else ""
        return f"onnxruntime {self.provider}{where} {self.path.name}"

    @property
    def device(self) -> str:
        """Where it runs: ``cpu`` or ``cuda:N``."""
        return f"cuda:{self.device_id}" if self.on_gpu else "cpu"


def export_info(path: Path) -> str:
    """A one-line JSON summary of an exported file (size, inputs, outputs)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return json.dumps({"file": str(path), "mb": round(path.stat().st_size / 2**20, 2),
                       "inputs": [i.name for i in graph.input],
                       "outputs": [o.name for o in graph.output]})
