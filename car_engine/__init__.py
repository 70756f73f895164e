"""car-engine: pick the small, high-quality, diverse subset of an instruction corpus.

The public Python API, one import away::

    import car_engine as ce
    result = ce.run("corpus.jsonl", "runs/x", ce.RunConfig(method="car", n1=1000))
    corpus = ce.load_corpus("corpus.jsonl")
    iqs = ce.score_iqs(corpus.records)             # id, iqs, turn_iqs
    ifd = ce.score_ifd(corpus.records)             # id, loss_cond, ..., ifd_ppl, status
    vectors = ce.embed_records(corpus.records)     # float32 [n, 384], unit rows
    clusters = ce.cluster_vectors(vectors)         # labels, distances, centroids, PCA
    picks = ce.select_car(iqs_array, clusters.labels, n1=1000, n2=1)

The scorers take what other tools hold: an Arrow table, a pandas or polars DataFrame, a
Hugging Face ``Dataset``, a list of dicts or a corpus path (see :func:`as_records`).

Every name below is an explicit, typed re-export (type checkers and IDEs read the
``TYPE_CHECKING`` block); at run time each loads on first use, so ``import car_engine`` does
not import torch, FAISS or ONNX Runtime until a stage needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from car_engine.omp import limit_omp_spinning

limit_omp_spinning()  # before any car_engine module loads torch or faiss (and their OpenMP)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from car_engine.cluster import ClusterResult
    from car_engine.cluster import cluster as cluster_vectors
    from car_engine.config import (
        ClusterParams,
        EmbedParams,
        IFDParams,
        IQSParams,
        RunConfig,
        SelectParams,
    )
    from car_engine.corpus import (
        Corpus,
        RecordsLike,
        Rejection,
        as_records,
        load_corpus,
        read_corpus,
        records_from_items,
    )
    from car_engine.embed import Embedder, embed_records
    from car_engine.errors import CorpusError, ModelError, RunDirBusy, UsageError
    from car_engine.ifd import IFDScorer, score_ifd
    from car_engine.iqs import IQSScorer, score_iqs
    from car_engine.one_pass import OnePassEncoder, encode_records
    from car_engine.pipeline import RunResult, run
    from car_engine.report import build_report
    from car_engine.select import Selection, select_car, select_car_ifd, select_ifd

# name -> "module" or "module:attribute"; must list exactly the names imported above.
_LAZY = {
    "ClusterResult": "car_engine.cluster",
    "cluster_vectors": "car_engine.cluster:cluster",
    "ClusterParams": "car_engine.config",
    "EmbedParams": "car_engine.config",
    "IFDParams": "car_engine.config",
    "IQSParams": "car_engine.config",
    "RunConfig": "car_engine.config",
    "SelectParams": "car_engine.config",
    "Corpus": "car_engine.corpus",
    "RecordsLike": "car_engine.corpus",
    "Rejection": "car_engine.corpus",
    "as_records": "car_engine.corpus",
    "load_corpus": "car_engine.corpus",
    "read_corpus": "car_engine.corpus",
    "records_from_items": "car_engine.corpus",
    "Embedder": "car_engine.embed",
    "embed_records": "car_engine.embed",
    "CorpusError": "car_engine.errors",
    "ModelError": "car_engine.errors",
    "RunDirBusy": "car_engine.errors",
    "UsageError": "car_engine.errors",
    "IFDScorer": "car_engine.ifd",
    "score_ifd": "car_engine.ifd",
    "IQSScorer": "car_engine.iqs",
    "score_iqs": "car_engine.iqs",
    "OnePassEncoder": "car_engine.one_pass",
    "encode_records": "car_engine.one_pass",
    "RunResult": "car_engine.pipeline",
    "run": "car_engine.pipeline",
    "build_report": "car_engine.report",
    "Selection": "car_engine.select",
    "select_car": "car_engine.select",
    "select_car_ifd": "car_engine.select",
    "select_ifd": "car_engine.select",
}

__all__ = [
    "__version__", "ClusterResult", "cluster_vectors", "ClusterParams", "EmbedParams",
    "IFDParams", "IQSParams", "RunConfig", "SelectParams", "Corpus", "RecordsLike", "Rejection",
    "as_records", "load_corpus", "read_corpus", "records_from_items", "Embedder", "embed_records",
    "CorpusError", "ModelError", "RunDirBusy", "UsageError", "IFDScorer", "score_ifd",
    "IQSScorer", "score_iqs", "OnePassEncoder", "encode_records", "RunResult", "run",
    "build_report", "Selection", "select_car", "select_car_ifd", "select_ifd",
]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'car_engine' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module), attr or name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
