"""Score records with an IQS model: ``IQSScorer.load(...).score(records) -> id, iqs``.

Two runtimes share the tokenization and length-bucketed batching: ``torch`` (eager
PyTorch, the reference) and ``onnx`` (ONNX Runtime on the exported scorer, the fast one).
A model is ``default`` (the shipped all-MiniLM-L6-v2 scorer), an IQS model folder, or a
CaR/COMET ``.ckpt``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from car_engine.batching import length_batches, pad_batch, tokenize
from car_engine.config import (
    GPU_BATCH_TOKENS,
    IQS_BATCH,
    IQS_PRECISIONS,
    IQS_RUNTIMES,
    IQS_TORCH_PRECISIONS,
    IQSParams,
    check_turns,
    resolve_precision,
)
from car_engine.corpus import RecordsLike, as_records
from car_engine.devices import torch_device, torch_dtype
from car_engine.errors import ModelError, UsageError
from car_engine.iqs.checkpoint import load_comet_checkpoint
from car_engine.iqs.model import IQSModel
from car_engine.iqs.onnx import OrtRunner, ensure_export, expects_gpu
from car_engine.iqs.store import WEIGHTS_FILE, load_model, resolve_model_dir
from car_engine.models.registry import DEFAULT
from car_engine.turn_scores import iqs_turns

RUNTIMES = IQS_RUNTIMES
# Pairs per batch when not given. On CPU small batches win: ONNX Runtime scored 120 ShareGPT
# pairs 1.25x (int8) / 1.18x (fp32) faster at 4 than at 32 (less padding, activations stay in
# cache; 2 measured about the same as 4, 1 slower). The eager torch runtime was not measured
# at 4. GPUs want the larger batches.
CPU_BATCH, GPU_BATCH = IQS_BATCH


def load_any(model: str | os.PathLike = DEFAULT) -> tuple[IQSModel, Any]:
    """An IQS model and tokenizer from ``default``, a model folder or a COMET ``.ckpt``."""
    if str(model).endswith(".ckpt"):
        return load_comet_checkpoint(model)
    return load_model(model)


def weights_path(model: str | os.PathLike = DEFAULT) -> Path:
    """The file whose contents define the model (exports are cached beside it)."""
    if str(model).endswith(".ckpt"):
        if not Path(model).is_file():
            raise ModelError(f"{model}: no such checkpoint")
        return Path(model)
    return resolve_model_dir(model) / WEIGHTS_FILE


class Runner(Protocol):
    """What :class:`IQSScorer` runs: :class:`TorchRunner` or :class:`OrtRunner` (an
    ``on_gpu`` attribute, when present, picks the default batch size)."""

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...

    def describe(self) -> str: ...


class TorchRunner:
    """Eager PyTorch scoring (the reference): ``runner(input_ids, attention_mask) -> scores``."""

    def __init__(self, model: IQSModel, device: str | None = None,
                 precision: str = IQSParams.precision):
        self.device = torch_device(device)
        precision = resolve_precision("iqs", precision, self.device.type == "cuda")
        self.dtype = torch_dtype(precision, IQS_TORCH_PRECISIONS, "iqs --runtime torch")
        self.model = model.to(self.device).eval()
        self.on_gpu = self.device.type == "cuda"

    @torch.inference_mode()
    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        ids = torch.from_numpy(input_ids).to(self.device)
        mask = torch.from_numpy(attention_mask).to(self.device)
        low_precision = self.dtype != torch.float32
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=low_precision):
            scores = self.model(ids, mask)
        return scores.float().cpu().numpy().astype(np.float64)

    def describe(self) -> str:
        """Which device and dtype score."""
        return f"torch {self.device} {str(self.dtype).removeprefix('torch.')}"


class IQSScorer:
    """Tokenize, batch by length, run, and put the scores back in input order."""

    def __init__(self, runner: Runner, tokenizer: Any,
                 max_length: int, batch_size: int | None = None) -> None:
        # On a GPU the default batch is cut at a token budget, not a count.
        on_gpu = getattr(runner, "on_gpu", False)
        self.max_tokens = GPU_BATCH_TOKENS if on_gpu and batch_size is None else None
        if batch_size is None:
            batch_size = GPU_BATCH if on_gpu else CPU_BATCH
        if batch_size < 1:
            raise UsageError("batch_size must be at least 1")
        self.runner, self.tokenizer = runner, tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @classmethod
    def load(cls, model: str = DEFAULT, *, runtime: str = IQSParams.runtime,
             precision: str = IQSParams.precision,
             device: str | None = None, batch_size: int | None = None) -> IQSScorer:
        """A scorer for ``model`` (``default``, an IQS folder or a COMET ``.ckpt``) on
        ``runtime`` ``onnx`` (exported once and cached beside the weights) or ``torch``;
        ``batch_size`` pairs per batch, by default CPU_BATCH on CPU and GPU_BATCH on GPU."""
        if runtime not in RUNTIMES:
            raise UsageError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
        if runtime == "torch":
            iqs, tokenizer = load_any(model)
            return cls(TorchRunner(iqs, device, precision), tokenizer, iqs.config.max_length,
                       batch_size)
        precision = resolve_precision("iqs", precision, expects_gpu(device))
        if precision not in IQS_PRECISIONS:
            raise UsageError(f"onnx precision must be one of {IQS_PRECISIONS}, not {precision!r}")
        loaded: dict = {}

        def load_once() -> IQSModel:
            if "model" not in loaded:
                loaded["model"], loaded["tokenizer"] = load_any(model)
            return loaded["model"]

        if str(model).endswith(".ckpt"):
            load_once()  # a checkpoint carries its tokenizer folder in its hparams
            tokenizer, max_length = loaded["tokenizer"], loaded["model"].config.max_length
        else:
            tokenizer, max_length = _tokenizer_of(model)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        path = ensure_export(load_once, weights_path(model), precision, pad_id)
        return cls(OrtRunner(path, device), tokenizer, max_length, batch_size)

    def score_texts(self, texts: list[str], *, progress: bool = True) -> np.ndarray:
        """Scores (float64) of pair texts, in input order."""
        if not texts:  # the tokenizer fails on an empty batch
            return np.empty(0, dtype=np.float64)
        token_ids = tokenize(self.tokenizer, texts, self.max_length)
        scores = np.empty(len(texts), dtype=np.float64)
        with tqdm(total=len(texts), desc="iqs", unit="pair", disable=not progress) as bar:
            for idx in length_batches(token_ids, self.batch_size, max_tokens=self.max_tokens):
                ids, mask = pad_batch(token_ids, idx, self.pad_id)
                scores[idx] = self.runner(ids, mask)
                bar.update(len(idx))
        return scores

    def score(self, records: pa.Table, *, progress: bool = True,
              turns: str = IQSParams.turns,
              turn_aggregate: str = IQSParams.turn_aggregate) -> pa.Table:
        """IQS of every record, one row per record, in input order: columns ``id`` (string)
        and ``iqs`` (float64) of the SPEC §1 text; with ``turns`` ``all`` (SPEC §5) a
        conversation's IQS aggregates its turns' (``turn_aggregate``: mean|min|first), kept in
        ``turn_iqs``; ``first`` scores the first pair only."""
        for column in ("id", "instruction", "input", "output"):
            if column not in records.column_names:
                raise UsageError(f"records table has no '{column}' column")
        check_turns(turns, turn_aggregate)
        return iqs_turns(records, lambda texts: self.score_texts(texts, progress=progress),
                         turns=turns, how=turn_aggregate)

    def describe(self) -> str:
        """Runtime, device and file in one line (for logs and reports)."""
        return self.runner.describe()


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two score vectors (average ranks for ties)."""
    def ranks(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=np.float64)
        _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
        sums = np.bincount(inverse, weights=r)
        return sums[inverse] / counts[inverse]

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def _tokenizer_of(model: str | os.PathLike) -> tuple[Any, int]:
    """Tokenizer and max length of a model folder without building the encoder. A plain BERT
    backbone's tokenizer is read from its tokenizer.json without transformers (the same ids,
    tests/test_embed.py; the import was 1.3 s of an IFD run's start-up, profiled)."""
    from car_engine.iqs.model import IQSConfig
    from car_engine.iqs.store import CONFIG_FILE
    from car_engine.models.bert import supports
    from car_engine.models.folder import read_config
    from car_engine.models.registry import resolve_encoder
    from car_engine.tokenizer import load_tokenizer

    config = IQSConfig.from_file(resolve_model_dir(model) / CONFIG_FILE)
    folder = resolve_encoder(config.backbone)
    light = (folder / "config.json").is_file() and supports(read_config(folder)) is None
    return load_tokenizer(folder, light=light), config.max_length


def score_iqs(records: RecordsLike, **kwargs: Any) -> pa.Table:
    """IQS for a records table or a corpus path: ``id, iqs`` (and ``turn_iqs``, see
    :meth:`IQSScorer.score`). ``kwargs`` go to :meth:`IQSScorer.load` (model, runtime,
    precision, device, batch_size), except ``progress``, ``turns`` and ``turn_aggregate``."""
    how = {k: kwargs.pop(k) for k in ("progress", "turns", "turn_aggregate") if k in kwargs}
    records = as_records(records)
    return IQSScorer.load(**kwargs).score(records, **how)
