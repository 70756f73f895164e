"""The plain way to compute IFD, as Superfiltering and Cherry LLM do: one pair at a time, two
full Hugging Face forwards with ``labels`` (full-vocabulary logits at every position).

It takes the token ids from :func:`car_engine.ifd.encode_pairs`, so it checks the engine's
arithmetic (batching, body-only forward, fused cross-entropy) on the same token boundaries.
Used by the IFD tests and by ``benchmarks/bench_ifd.py``.
"""

from __future__ import annotations

import pyarrow as pa
import torch

from car_engine.ifd_pairs import scores_table
from car_engine.ifd_prompts import OK, EncodedPair


@torch.inference_mode()
def sequence_loss(model, ids: list[int], n_score: int) -> float:
    """Mean NLL of the last ``n_score`` tokens of ``ids``, batch 1, via ``model(labels=...)``."""
    input_ids = torch.tensor([ids], device=model.device)
    labels = torch.full_like(input_ids, -100)
    labels[0, len(ids) - n_score:] = input_ids[0, len(ids) - n_score:]
    return float(model(input_ids=input_ids, labels=labels).loss)


def reference_scores(model, records: pa.Table, pairs: list[EncodedPair]) -> pa.Table:
    """IFD table for ``records`` (encoded as ``pairs``) the reference way."""
    losses: list[tuple[float | None, float | None]] = []
    for pair in pairs:
        if pair.status != OK:
            losses.append((None, None))
            continue
        losses.append((sequence_loss(model, pair.cond_ids, pair.n_answer),
                       sequence_loss(model, pair.direct_ids, pair.n_answer)))
    ids = [str(v) for v in records.column("id").to_pylist()]
    return scores_table(ids, pairs, losses)
