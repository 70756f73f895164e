"""The reference way to score IQS (what CaR's COMET-based scorer does): eager PyTorch fp32,
texts sorted by character length, each batch tokenized and padded on its own. Tests and the
IQS benchmark compare the engine against this one function."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from car_engine.iqs.model import IQSModel


@torch.inference_mode()
def reference_scores(model: IQSModel, tokenizer: Any, texts: list[str], batch_size: int = 16,
                     *, progress: bool = False) -> np.ndarray:
    """The reference way to score (what CaR's COMET-based scorer does): eager PyTorch fp32,
    texts sorted by character length, each batch tokenized and padded on its own. Tests
    and the benchmark compare the engine against this one function."""
    model = model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    scores = np.empty(len(texts), dtype=np.float64)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="iqs reference", unit="batch", disable=not progress):
        idx = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                          max_length=model.config.max_length, return_tensors="pt")
        scores[idx] = model(batch["input_ids"], batch["attention_mask"]).double().numpy()
    return scores
