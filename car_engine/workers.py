"""The per-shard work of each scoring stage, as small picklable worker classes.

A worker is built once per process (or Ray actor) from its stage's parameters (config.py),
loads its model, and turns one shard of records into that shard's output: an Arrow table
keyed by ``id`` (IQS, IFD) or a float32 matrix in the shard's row order (embeddings). The
pipeline decides which shards run; backends decide where; workers know nothing of files or
manifests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from car_engine.config import EmbedParams, EncodeParams, IFDParams, IQSParams


class Worker:
    """One stage's work on one shard; ``stage`` names its folder, ``suffix`` its files."""

    stage: ClassVar[str]
    suffix: ClassVar[str] = ".parquet"

    def __init__(self, params: Any) -> None:
        """Build from the stage's parameters (IQSParams, IFDParams, ...): load the model."""
        raise NotImplementedError

    def __call__(self, records: pa.Table) -> pa.Table | np.ndarray:
        raise NotImplementedError

    @classmethod
    def model_files(cls, params: Any) -> list[Path]:
        """The files the stage's output depends on besides its parameters (the score cache
        keys on their contents)."""
        raise NotImplementedError


class IQSWorker(Worker):
    """IQS scores (column ``iqs``) of a shard."""

    stage = "iqs"

    def __init__(self, params: IQSParams) -> None:
        from car_engine.iqs import IQSScorer

        self.scorer = IQSScorer.load(params.model, runtime=params.runtime,
                                     precision=params.precision, batch_size=params.batch_size,
                                     device=params.device)
        self.turns, self.aggregate = params.turns, params.turn_aggregate

    def __call__(self, records: pa.Table) -> pa.Table:
        return self.scorer.score(records, progress=False, turns=self.turns,
                                 turn_aggregate=self.aggregate)

    def describe(self) -> str:
        """Runtime, device and precision the shards ran on."""
        return self.scorer.describe()

    @classmethod
    def model_files(cls, params: IQSParams) -> list[Path]:
        from car_engine.iqs.model import IQSConfig
        from car_engine.iqs.score import weights_path
        from car_engine.iqs.store import CONFIG_FILE
        from car_engine.models.registry import resolve_encoder

        weights = weights_path(params.model)
        if weights.suffix == ".ckpt":
            return [weights]  # a checkpoint holds the whole model
        config = IQSConfig.from_file(weights.parent / CONFIG_FILE)
        return [weights, weights.parent / CONFIG_FILE,
                *model_folder_files(resolve_encoder(config.backbone))]


class IFDWorker(Worker):
    """IFD losses, perplexities and ratios of a shard (SPEC §2 columns)."""

    stage = "ifd"

    def __init__(self, params: IFDParams) -> None:
        from car_engine.ifd import IFDScorer

        self.scorer = IFDScorer(params.model, template=params.template, compat=params.compat,
                                max_length=params.max_length, dtype=params.dtype,
                                batch_tokens=params.batch_tokens, device=params.device,
                                turns=params.turns)

    def __call__(self, records: pa.Table) -> pa.Table:
        return self.scorer.score(records, progress=False)

    def describe(self) -> str:
        """Device and precision the shards ran on."""
        from car_engine.devices import describe_device

        scorer = self.scorer
        body = "packed" if scorer.packed is not None else "transformers"
        return f"torch {describe_device(scorer.device)} {scorer.dtype} ({body} forward)"

    @classmethod
    def model_files(cls, params: IFDParams) -> list[Path]:
        from car_engine.models.registry import causal_lm_path

        return model_folder_files(causal_lm_path(params.model))


class PreWorker(IFDWorker):
    """Instruction perplexity and sentence vector of a shard (Cherry's pre-experience pass,
    SPEC §8), on the IFD model: columns car_engine.pre_experience.PRE_COLUMNS."""

    stage = "pre"

    def __call__(self, records: pa.Table) -> pa.Table:
        from car_engine.pre_experience import instruction_pass, pre_table

        return pre_table(records, instruction_pass(self.scorer, records, progress=False))


class EmbedWorker(Worker):
    """Unit sentence embeddings (float32 rows in the shard's order) of the SPEC §1 text."""

    stage = "embed"
    suffix = ".npy"

    def __init__(self, params: EmbedParams) -> None:
        from car_engine.embed import Embedder

        self.embedder = Embedder(params.model, batch_size=params.batch_size, dtype=params.dtype,
                                 compile=params.compile, device=params.device)
        self.turns = params.turns

    def describe(self) -> str:
        """Device and precision the shards ran on."""
        from car_engine.devices import describe_device

        embedder = self.embedder
        body = "packed" if getattr(embedder, "packed", None) is not None else "transformers"
        return f"torch {describe_device(embedder.device)} {embedder.dtype} ({body} forward)"

    def __call__(self, records: pa.Table) -> np.ndarray:
        from car_engine.turn_scores import embed_turns

        return embed_turns(records, lambda texts: self.embedder.embed(texts, progress=False),
                           turns=self.turns)

    @classmethod
    def model_files(cls, params: EmbedParams) -> list[Path]:
        from car_engine.models.registry import resolve_encoder

        return model_folder_files(resolve_encoder(params.model))


class RelevanceWorker(EmbedWorker):
    """How well each answer fits its own instruction (column ``relevance``, see
    car_engine/relevance.py), on the embedding model: what the IFD quality guard reads."""

    stage = "relevance"
    suffix = ".parquet"

    def __call__(self, records: pa.Table) -> pa.Table:
        from car_engine.relevance import records_relevance

        return records_relevance(records, lambda texts: self.embedder.embed(texts,
                                                                            progress=False))


class EncodeWorker(Worker):
    """IQS and embeddings of a shard from one encoder forward per text (SPEC §10): the IQS
    table's columns plus ``embedding`` (a fixed-size list of float32, unit length)."""

    stage = "encode"

    def __init__(self, params: EncodeParams) -> None:
        from car_engine.one_pass import OnePassEncoder

        embed = params.embed
        self.encoder = OnePassEncoder(params.iqs_model, model=embed.model,
                                      batch_size=embed.batch_size, dtype=embed.dtype,
                                      compile=embed.compile, device=embed.device)
        self.turns, self.aggregate = embed.turns, params.turn_aggregate

    def __call__(self, records: pa.Table) -> pa.Table:
        table, vectors = self.encoder.encode(records, turns=self.turns,
                                             turn_aggregate=self.aggregate, progress=False)
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
        return table.append_column("embedding",
                                   pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]))

    def describe(self) -> str:
        """Device, precision and forward the shards ran on."""
        return self.encoder.describe()

    @classmethod
    def model_files(cls, params: EncodeParams) -> list[Path]:
        return [*IQSWorker.model_files(IQSParams(model=params.iqs_model)),
                *EmbedWorker.model_files(params.embed)]


MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model", ".jinja", ".gguf")


def model_folder_files(folder: Path) -> list[Path]:
    """A model folder's weights, configuration and tokenizer files (not its README, nor the
    exports cached beside them)."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and p.suffix in MODEL_FILE_SUFFIXES)
