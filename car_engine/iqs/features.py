"""Frozen-encoder features for IQS training, computed once and cached on disk.

The bottom of the encoder stays frozen, so its work is done once: every text is encoded a
single time and, per frozen layer, the mean over all tokens, the prompt, the response, the
response's end and the order-sensitive pools (:func:`car_engine.iqs.model.order_pools`) are
cached, plus the token states that feed the first trained block, if any. Because pooling and
the layer mix are linear, an epoch then only runs the trained top blocks, the mix and the head.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from car_engine.batching import length_batches, pad_batch, pad_states, tokenize
from car_engine.devices import cpu_has_native_bf16
from car_engine.io import atomic_path
from car_engine.iqs.model import ORDER_POOLS, IQSModel, encoder_blocks, order_pools, run_blocks
from car_engine.iqs.token_stats import STAT_NAMES
from car_engine.models.registry import DEFAULT, cache_dir

BLOCK_TOKENS = 8192  # padded tokens per run of the trained blocks on cached states
CACHE_VERSION = 4  # 3: prompt/response/end pools; 4: + the order pools (model.order_pools)


@dataclass
class CachedFeatures:
    """Frozen-encoder outputs for a list of texts."""

    pooled: torch.Tensor  # [every hidden state, texts, ORDER_POOLS (order_pools), hidden] fp32
    starts: torch.Tensor  # [texts] int64: first response token (= length when there is none)
    states: list[torch.Tensor] | None  # per text [tokens, hidden] fp16, fed to the first
    # trained block (None when the whole backbone is frozen)
    stats: torch.Tensor | None = None  # [texts, STAT_NAMES] for a model with token statistics


def _cache_stem(model: IQSModel, texts: list[str], name: str, max_length: int) -> str:
    backbone = model.config.backbone
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    raw = json.dumps([CACHE_VERSION, backbone if backbone == DEFAULT
                      else str(Path(backbone).resolve()), digest.hexdigest(), max_length,
                      model.config.segment_markers])
    return f"{name}-{hashlib.sha256(raw.encode()).hexdigest()[:16]}"


@torch.inference_mode()
def encode_frozen(model: IQSModel, token_ids: list[list[int]], boundary: int | None,
                  batch_size: int = 32, pad_id: int = 0, desc: str = "encode") -> CachedFeatures:
    """One encoder pass over every text: every hidden state pooled (all, prompt, response)
    and, when ``boundary`` is given, hidden state ``boundary`` token by token."""
    model.eval()
    config = model.config
    pooled = torch.zeros((config.num_layers, len(token_ids), ORDER_POOLS, config.hidden_size))
    starts = torch.tensor([len(t) for t in token_ids], dtype=torch.int64)
    states: list[torch.Tensor | None] | None = (None if boundary is None
                                                else [None] * len(token_ids))
    markers = config.segment_markers
    for idx in tqdm(list(length_batches(token_ids, batch_size)), desc=desc, unit="batch"):
        ids, mask = (torch.from_numpy(a) for a in pad_batch(token_ids, idx, pad_id))
        layers = model.hidden_states(ids, mask)
        response = (model.response_mask(ids, mask) if markers
                    else torch.zeros_like(mask, dtype=torch.bool))
        rows = torch.from_numpy(idx)
        pooled[:, rows] = order_pools(layers, mask, response)
        found = response.any(dim=1)
        starts[rows[found]] = response[found].to(torch.int64).argmax(dim=1)
        if states is not None:
            for row, i in enumerate(idx):
                states[i] = layers[boundary, row, : len(token_ids[i])].to(torch.float16).clone()
    # length_batches hands out every text once, so no slot of states is still None here
    return CachedFeatures(pooled, starts, cast("list[torch.Tensor] | None", states))


def _save_atomic(blob: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def cached_features(model: IQSModel, tokenizer: Any, texts: list[str], name: str,
                    boundary: int | None, batch_size: int,
                    max_length: int | None = None) -> CachedFeatures:
    """:func:`encode_frozen` for ``texts`` (truncated at ``max_length``, default the model's),
    cached on disk under their content's hash (read back with ``torch.load(weights_only=
    True)``), so repeated trainings skip the encoder pass."""
    max_length = max_length or model.config.max_length
    folder = cache_dir() / "iqs-features"
    stem = _cache_stem(model, texts, name, max_length)
    pooled_path = folder / f"{stem}-pooled.pt"
    states_path = folder / f"{stem}-states{boundary}.pt"
    if pooled_path.is_file() and (boundary is None or states_path.is_file()):
        blob = torch.load(pooled_path, weights_only=True)
        states = None
        if boundary is not None:
            saved = torch.load(states_path, weights_only=True)
            states = list(torch.split(saved["states"], saved["lengths"].tolist()))
        return CachedFeatures(blob["pooled"], blob["starts"], states)
    token_ids = tokenize(tokenizer, texts, max_length)
    feats = encode_frozen(model, token_ids, boundary, batch_size, tokenizer.pad_token_id or 0,
                          desc=f"encode {name}")
    _save_atomic({"pooled": feats.pooled, "starts": feats.starts}, pooled_path)
    if feats.states is not None:
        _save_atomic({"states": torch.cat(feats.states),
                      "lengths": torch.tensor([s.shape[0] for s in feats.states])}, states_path)
    return feats


@torch.no_grad()
def token_statistics(model: IQSModel, tokenizer: Any, texts: list[str], max_length: int,
                     batch_size: int = 64) -> torch.Tensor | None:
    """The token statistics (``token_stats.py``) of ``texts`` truncated at ``max_length``, as
    the model computes them in its forward (None for a model without them). Cheap next to the
    encoder: not cached."""
    if model.token_stats is None:
        return None
    token_ids = tokenize(tokenizer, texts, max_length)
    out = torch.zeros((len(texts), len(STAT_NAMES)))
    for idx in length_batches(token_ids, batch_size):
        ids, mask = (torch.from_numpy(a)
                     for a in pad_batch(token_ids, idx, tokenizer.pad_token_id or 0))
        out[torch.from_numpy(idx)] = model.token_stats(ids, mask, model.response_mask(ids, mask))
    return out


def pooled_from_cache(model: IQSModel, feats: CachedFeatures, idx: np.ndarray,
                      boundary: int) -> torch.Tensor:
    """Per-layer pools ``[layers, texts, pools, hidden]`` of texts ``idx``: the cached frozen
    layers' up to ``boundary``, the trained top blocks' run on the cached token states."""
    pooled = feats.pooled[: boundary + 1, torch.from_numpy(idx)]
    top = encoder_blocks(model.encoder)[boundary:]
    if not len(top):
        return pooled
    assert feats.states is not None  # cached whenever blocks above boundary are trained
    # Training runs the blocks in bf16 where the CPU has it natively (fp32 master weights).
    fast = model.training and cpu_has_native_bf16()
    lengths = np.array([feats.states[i].shape[0] for i in idx])
    order = np.argsort(lengths, kind="stable")  # like lengths together: little padding
    parts, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end + 1 - start) * lengths[order[end]] <= BLOCK_TOKENS:
            end += 1
        group = idx[order[start:end]]
        # Widths in steps of 32: few distinct shapes for oneDNN's per-shape caches.
        states, mask = pad_states([feats.states[i] for i in group], 32)
        positions = torch.arange(mask.shape[1]).unsqueeze(0)
        response = ((positions >= feats.starts[torch.from_numpy(group)].unsqueeze(1))
                    & mask.bool())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
            parts.append(torch.stack(run_blocks(top, states, mask, response)).float())
        start = end
    trained = torch.cat(parts, dim=1)[:, torch.from_numpy(np.argsort(order))]
    return torch.cat([pooled, trained], dim=0)


def scores_from_cache(model: IQSModel, feats: CachedFeatures, idx: np.ndarray,
                      boundary: int) -> torch.Tensor:
    """Scores of texts ``idx`` from cached frozen features plus the trained top blocks."""
    stats = None if feats.stats is None else feats.stats[torch.from_numpy(idx)]
    return model.score_pooled(pooled_from_cache(model, feats, idx, boundary), stats)


@torch.no_grad()
def scores_cached(model: IQSModel, feats: CachedFeatures, boundary: int,
                  batch_size: int = 64) -> np.ndarray:
    """Scores of every cached text, in order (eval mode)."""
    model.eval()
    n = feats.pooled.shape[1]
    return np.concatenate([
        scores_from_cache(model, feats, np.arange(s, min(s + batch_size, n)), boundary).numpy()
        for s in range(0, n, batch_size)]) if n else np.empty(0)
