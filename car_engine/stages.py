"""The per-shard work of each scoring stage, as small picklable workers.

A worker is built once per process (or Ray actor) from plain parameters, loads its model,
and turns one shard of records into that shard's output: an Arrow table keyed by ``id``
(IQS, IFD) or a float32 matrix in the shard's row order (embeddings). The pipeline decides
which shards run and where; workers know nothing of files or manifests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class IQSParams:
    model: str = "default"
    runtime: str = "onnx"
    precision: str = "fp32"
    batch_size: int | None = None  # the scorer's: 4 on CPU, 32 on GPU


@dataclass(frozen=True)
class IFDParams:
    model: str = "default"
    template: str = "none"
    compat: str | None = None
    max_length: int = 512
    dtype: str = "fp32"
    batch_tokens: int = 8192


@dataclass(frozen=True)
class EmbedParams:
    model: str = "default"
    dtype: str = "fp32"
    batch_size: int | None = None  # the Embedder's: 16 on CPU, 64 on GPU
    compile: bool = False


class IQSWorker:
    """IQS scores (column ``iqs``) of a shard."""

    def __init__(self, params: IQSParams) -> None:
        from car_engine.iqs import IQSScorer

        self.scorer = IQSScorer.load(params.model, runtime=params.runtime,
                                     precision=params.precision, batch_size=params.batch_size)

    def __call__(self, records: pa.Table) -> pa.Table:
        return self.scorer.score(records, progress=False)


class IFDWorker:
    """IFD losses, perplexities and ratios of a shard (SPEC §2 columns)."""

    def __init__(self, params: IFDParams) -> None:
        from car_engine.ifd import IFDScorer

        self.scorer = IFDScorer(params.model, template=params.template, compat=params.compat,
                                max_length=params.max_length, dtype=params.dtype,
                                batch_tokens=params.batch_tokens)

    def __call__(self, records: pa.Table) -> pa.Table:
        return self.scorer.score(records, progress=False)


class EmbedWorker:
    """Unit sentence embeddings (float32 rows in the shard's order) of the SPEC §1 text."""

    def __init__(self, params: EmbedParams) -> None:
        from car_engine.embed import Embedder

        self.embedder = Embedder(params.model, batch_size=params.batch_size, dtype=params.dtype,
                                 compile=params.compile)

    def __call__(self, records: pa.Table) -> np.ndarray:
        from car_engine.corpus import pair_texts

        return self.embedder.embed(pair_texts(records), progress=False)


WORKERS: dict[str, type] = {"iqs": IQSWorker, "ifd": IFDWorker, "embed": EmbedWorker}
PARAMS: dict[str, type] = {"iqs": IQSParams, "ifd": IFDParams, "embed": EmbedParams}


def params_dict(params: Any) -> dict[str, Any]:
    """A stage's parameters as a plain dict (what its fingerprint is made of)."""
    return asdict(params)
