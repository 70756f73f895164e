"""The reference way to embed (CaR's encoder as its scripts call it), the yardstick that tests
and benchmarks measure car_engine.embed against: one ``SentenceTransformer.encode`` per text."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def reference_encoder(model_folder: str | Path) -> Any:
    """A ``SentenceTransformer`` on CPU, loaded from a local folder (never the hub)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_folder), device="cpu")


def reference_embed(texts: Sequence[str], encoder: Any) -> np.ndarray:
    """float32 [n, d] unit vectors, one ``encode`` call per text, as the reference scripts do."""
    return np.stack([encoder.encode(text, normalize_embeddings=True) for text in texts])
