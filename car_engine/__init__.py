"""car-engine: pick the small, high-quality, diverse subset of an instruction corpus.

The public Python API, one import away (heavy modules load on first use)::

    import car_engine as ce
    result = ce.run("corpus.jsonl", "runs/x", ce.RunConfig(method="car", n1=1000))
    corpus = ce.load_corpus("corpus.jsonl")
    iqs = ce.score_iqs(corpus.records)             # id, iqs
    ifd = ce.score_ifd(corpus.records)             # id, loss_cond, ..., ifd_ppl, status
    vectors = ce.embed_records(corpus.records)     # float32 [n, 384], unit rows
    clusters = ce.cluster_vectors(vectors)         # labels, distances, centroids, PCA
    picks = ce.select_car(iqs_array, clusters.labels, n1=1000, n2=1)
"""

from __future__ import annotations

import importlib
from typing import Any

from car_engine.omp import limit_omp_spinning

limit_omp_spinning()  # before any car_engine module loads torch or faiss (and their OpenMP)

__version__ = "0.1.0"

_API = {
    "run": "car_engine.pipeline",
    "RunConfig": "car_engine.pipeline",
    "RunResult": "car_engine.pipeline",
    "load_corpus": "car_engine.corpus",
    "read_corpus": "car_engine.corpus",
    "records_from_items": "car_engine.corpus",
    "select_car": "car_engine.select",
    "select_ifd": "car_engine.select",
    "Selection": "car_engine.select",
    "score_iqs": "car_engine.iqs",
    "IQSScorer": "car_engine.iqs",
    "score_ifd": "car_engine.ifd",
    "IFDScorer": "car_engine.ifd",
    "Embedder": "car_engine.embed",
    "embed_records": "car_engine.embed",
    "cluster_vectors": "car_engine.cluster:cluster",
    "ClusterResult": "car_engine.cluster",
    "build_report": "car_engine.report",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        module, _, attr = _API[name].partition(":")
        return getattr(importlib.import_module(module), attr or name)
    raise AttributeError(f"module 'car_engine' has no attribute {name!r}")
