"""The per-shard work of each scoring stage, as small picklable worker classes.

A worker is built once per process (or Ray actor) from its stage's parameters (config.py),
loads its model, and turns one shard of records into that shard's output: an Arrow table
keyed by ``id`` (IQS, IFD) or a float32 matrix in the shard's row order (embeddings). The
pipeline decides which shards run; backends decide where; workers know nothing of files or
manifests.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from car_engine.config import EmbedParams, IFDParams, IQSParams


class Worker:
    """One stage's work on one shard; ``stage`` names its folder, ``suffix`` its files."""

    stage: ClassVar[str]
    suffix: ClassVar[str] = ".parquet"

    def __init__(self, params: Any) -> None:
        """Build from the stage's parameters (IQSParams, IFDParams, ...): load the model."""
        raise NotImplementedError

    def __call__(self, records: pa.Table) -> pa.Table | np.ndarray:
        raise NotImplementedError


class IQSWorker(Worker):
    """IQS scores (column ``iqs``) of a shard."""

    stage = "iqs"

    def __init__(self, params: IQSParams) -> None:
        from car_engine.iqs import IQSScorer

        self.scorer = IQSScorer.load(params.model, runtime=params.runtime,
                                     precision=params.precision, batch_size=params.batch_size)

    def __call__(self, records: pa.Table) -> pa.Table:
        return self.scorer.score(records, progress=False)


class IFDWorker(Worker):
    """IFD losses, perplexities and ratios of a shard (SPEC §2 columns)."""

    stage = "ifd"

    def __init__(self, params: IFDParams) -> None:
        from car_engine.ifd import IFDScorer

        self.scorer = IFDScorer(params.model, template=params.template, compat=params.compat,
                                max_length=params.max_length, dtype=params.dtype,
                                batch_tokens=params.batch_tokens)

    def __call__(self, records: pa.Table) -> pa.Table:
        return self.scorer.score(records, progress=False)


class PreWorker(Worker):
    """Instruction perplexity and sentence vector of a shard (Cherry's pre-experience pass,
    SPEC §8), on the IFD model: columns car_engine.pre_experience.PRE_COLUMNS."""

    stage = "pre"

    def __init__(self, params: IFDParams) -> None:
        from car_engine.ifd import IFDScorer

        self.scorer = IFDScorer(params.model, template=params.template, compat=params.compat,
                                max_length=params.max_length, dtype=params.dtype,
                                batch_tokens=params.batch_tokens)

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
                                 compile=params.compile)

    def __call__(self, records: pa.Table) -> np.ndarray:
        from car_engine.corpus import pair_texts

        return self.embedder.embed(pair_texts(records), progress=False)
