"""The data a composite IQS head trains on (issue #21): the expert pairs, fresh corrupted
copies of the training answers, the validation suite and, optionally, another corpus's real
answers, each encoded once by the frozen encoder (``features.py``, cached in chunks so a long
pass can stop and resume) with the token statistics the model computes in its forward.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from car_engine.iqs.extra_answers import ExtraAnswers, visible
from car_engine.iqs.features import CachedFeatures, cached_features, token_statistics
from car_engine.iqs.model import IQSModel
from car_engine.iqs.pairs import Pairs, read_pairs
from car_engine.iqs.robustness import SUITE_SEED, Corruption, corrupt
from car_engine.iqs.train import pick_negatives

CHUNK = 1024  # texts per cached feature file
FOCUS = ("truncate", "shuffle")  # the kinds the earlier heads missed: always drawn


@dataclass
class FeatureSets:
    """Everything an epoch reads: the pairs, the negatives and the suite, with features."""

    train: Pairs
    valid: Pairs
    negatives: list[Corruption]
    suite: list[Corruption]
    feats: dict[str, CachedFeatures]
    extra_negatives: list[Corruption] = field(default_factory=list)  # of feats["extra"]
    extra_suite: list[Corruption] = field(default_factory=list)  # of feats["extra-valid"]


def chunked_features(model: IQSModel, tokenizer: Any, texts: list[str], name: str,
                     length: int, batch_size: int, boundary: int | None = None
                     ) -> CachedFeatures:
    """:func:`cached_features` over ``texts`` in CHUNK-sized files (a prefix of the list
    reuses the same files), concatenated; with ``boundary``, hidden state ``boundary``'s
    token states too (what a trained top block reads)."""
    parts = [cached_features(model, tokenizer, texts[s:s + CHUNK], f"{name}-{s // CHUNK}",
                             boundary, batch_size, length) for s in range(0, len(texts), CHUNK)]
    states = None if boundary is None else [t for p in parts for t in p.states or []]
    return CachedFeatures(torch.cat([p.pooled for p in parts], dim=1),
                          torch.cat([p.starts for p in parts]), states,
                          token_statistics(model, tokenizer, texts, length, batch_size))


def feature_sets(model: IQSModel, tokenizer: Any, train_csv: str | os.PathLike,
                 valid_csv: str | os.PathLike, per_pair: int, seed: int, length: int,
                 batch_size: int, limit: int = 0, extra: ExtraAnswers | None = None,
                 boundary: int | None = None,
                 log: Callable[[str], None] = lambda _: None) -> FeatureSets:
    """The training pairs (the first ``limit`` when given), ``per_pair`` negatives of each
    (the FOCUS kinds first; fresh draws from the training split only), the validation pairs
    and their robustness suite, all encoded at ``length`` tokens; with ``extra``, that
    corpus's real answers with ``per_pair`` visible negatives each, and a held-out slice of
    it with its own suite (reported, never trained on). ``boundary``: see
    :func:`chunked_features`."""
    train, valid = read_pairs(train_csv), read_pairs(valid_csv)
    n = len(train) if limit <= 0 else min(limit, len(train))
    drawn = [c for c in corrupt(train, seed=seed + SUITE_SEED + 1) if c.pair < n]
    negatives = pick_negatives(drawn, per_pair, seed, FOCUS)
    suite = corrupt(valid)
    texts = {Path(valid_csv).stem: valid.texts, "valid-suite": [c.bad for c in suite],
             Path(train_csv).stem: train.texts[: 2 * n],
             f"train-negatives{per_pair}": [c.bad for c in negatives]}
    keys = ["valid", "suite", "train", "negatives"]
    extra_negatives: list[Corruption] = []
    extra_suite: list[Corruption] = []
    if extra is not None:
        answers, held = extra.pairs()
        drawn = visible(tokenizer, corrupt(answers, seed=seed + SUITE_SEED + 2), length)
        extra_negatives = pick_negatives(drawn, per_pair, seed, FOCUS)
        extra_suite = visible(tokenizer, corrupt(held), length)
        texts |= {"extra-answers": answers.texts[1::2],
                  f"extra-negatives{per_pair}": [c.bad for c in extra_negatives],
                  "extra-valid": held.texts[1::2],
                  "extra-valid-suite": [c.bad for c in extra_suite]}
        keys += ["extra", "extra-negatives", "extra-valid", "extra-suite"]
    feats = {}
    for key, name in zip(keys, texts):
        log(f"{name}: {len(texts[name])} texts")
        feats[key] = chunked_features(model, tokenizer, texts[name], name, length, batch_size,
                                      boundary)
    return FeatureSets(train, valid, negatives, suite, feats, extra_negatives, extra_suite)
