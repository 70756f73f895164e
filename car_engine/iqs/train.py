"""Train the IQS estimator on expert-revision pairs (CaR's recipe, made cheap on a CPU).

The frozen bottom of the encoder runs once per text (``features.py`` caches it); an epoch
only runs the trained top blocks, the mix and the head. ``train_blocks=0`` is the frozen
backbone; ``train_blocks=-1`` fine-tunes every block (embeddings stay frozen, as in COMET's
``keep_embeddings_frozen``).

``negatives=N`` (issue #21) adds N corrupted copies of each training pair's revised answer
(:mod:`car_engine.iqs.robustness`, fresh draws from the training split only), each held below
the revised answer (and, for the kinds that are plainly no answer, below the original too) by
the hinge margin; the epoch kept is then the best on min(expert accuracy, worst suite share)
over the validation split's robustness suite.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from car_engine.errors import UsageError
from car_engine.iqs.features import (
    CachedFeatures,
    cached_features,
    scores_cached,
    scores_from_cache,
)
from car_engine.iqs.model import HEAD_INPUTS, IQSModel, encoder_blocks
from car_engine.iqs.pairs import pairwise_accuracy, read_pairs
from car_engine.iqs.robustness import KINDS, SUITE_SEED, Corruption, corrupt, win_shares
from car_engine.iqs.store import new_model, save_model, trained_state
from car_engine.models.registry import DEFAULT

LOSSES = ("mse", "margin", "mse+margin")
# Corruptions that are no answer at all: held below the original answer too, not only below
# the revised one (a cut or reordered revision may still be as good as a weak original).
NOT_AN_ANSWER = ("random-same", "random-long", "loop", "off-topic", "swap-instruction")


@dataclass
class TrainOptions:
    """Training knobs; the CLI maps its flags onto these."""

    epochs: int = 10
    train_blocks: int = 0  # top encoder blocks fine-tuned; 0 = frozen backbone, -1 = all
    batch_pairs: int = 16  # pairs per step (both texts of a pair share a batch)
    head_lr: float = 1e-3
    encoder_lr: float = 3e-5
    weight_decay: float = 0.01
    loss: str = "mse"  # CaR's MSE on 0/1 targets; "margin" is a pairwise hinge
    margin: float = 0.3
    seed: int = 0
    hidden_sizes: list[int] = field(default_factory=list)  # empty: [2H, H] (H = encoder width)
    dropout: float = 0.1
    layer_transform: str = "sparsemax"
    max_length: int = 512  # the saved model's token limit (what the scorer truncates at)
    encode_batch_size: int = 32
    train_length: int = 0  # token limit of the training features; 0: max_length
    head_input: str = "mean"  # "segments": prompt/response pools too (model.py)
    negatives: int = 0  # corrupted copies per training pair (0: the expert pairs only)
    negative_weight: float = 1.0

    def check(self) -> None:
        """Reject option values that cannot work, naming the option."""
        if self.loss not in LOSSES:
            raise UsageError(f"--loss must be one of {LOSSES}, not {self.loss!r}")
        if self.epochs < 1 or self.batch_pairs < 1:
            raise UsageError("--epochs and --batch-pairs must be at least 1")
        if self.head_input not in HEAD_INPUTS:
            raise UsageError(f"--head-input must be one of {HEAD_INPUTS}, not "
                             f"{self.head_input!r}")
        if not 0 <= self.negatives <= len(KINDS):
            raise UsageError(f"--negatives must be 0..{len(KINDS)} (one per corruption kind)")
        if self.train_length < 0:
            raise UsageError("--train-length must be 0 (the max length) or positive")


def pair_loss(scores: torch.Tensor, loss: str, margin: float) -> torch.Tensor:
    """The training loss over interleaved (original, revised) scores."""
    pairs = scores.view(-1, 2)
    mse = ((pairs - pairs.new_tensor([0.0, 1.0])) ** 2).mean()
    hinge = torch.relu(margin - (pairs[:, 1] - pairs[:, 0])).mean()
    return {"mse": mse, "margin": hinge, "mse+margin": mse + hinge}[loss]


def evaluate_cached(model: IQSModel, feats: CachedFeatures, boundary: int,
                    batch_size: int = 64) -> tuple[dict, np.ndarray]:
    """Pairwise accuracy (SPEC §1) and the scores, from cached features."""
    scores = scores_cached(model, feats, boundary, batch_size)
    return pairwise_accuracy(scores), scores


def pick_negatives(corruptions: list[Corruption], per_pair: int, seed: int,
                   focus: tuple[str, ...] = ()) -> list[Corruption]:
    """``per_pair`` corruptions of each pair, of kinds drawn without replacement; the
    ``focus`` kinds (the hard ones) first, wherever the pair has them."""
    by_pair: dict[int, list[Corruption]] = {}
    for c in corruptions:
        by_pair.setdefault(c.pair, []).append(c)
    rng = np.random.default_rng(seed)
    out = []
    for pair in sorted(by_pair):
        options = by_pair[pair]
        first = [i for i, c in enumerate(options) if c.kind in focus][:per_pair]
        rest = [i for i in rng.permutation(len(options)) if i not in first]
        out += [options[i] for i in sorted([*first, *rest[:per_pair - len(first)]])]
    return out


def negative_loss(good: torch.Tensor, original: torch.Tensor, bad: torch.Tensor,
                  strict: torch.Tensor, margin: float) -> torch.Tensor:
    """Hinge: each bad copy below its revised answer by ``margin`` and, where ``strict``,
    below the original answer too."""
    loss = torch.relu(margin - (good - bad))
    loss = loss + strict.to(bad.dtype) * torch.relu(margin - (original - bad))
    return loss.mean()


def copies_by_pair(copies: list[Corruption]) -> dict[int, list[int]]:
    """Each pair's corrupted copies, as indices into ``copies``."""
    by_pair: dict[int, list[int]] = {}
    for j, c in enumerate(copies):
        by_pair.setdefault(c.pair, []).append(j)
    return by_pair


def negative_batch(copies: list[Corruption], by_pair: dict[int, list[int]],
                   chosen: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """Indices (into ``copies``) of the corrupted copies of the ``chosen`` pairs, and for
    each the row of its pair within ``chosen``."""
    neg = np.array([j for k in chosen for j in by_pair.get(int(k), [])], dtype=np.int64)
    where = {int(k): i for i, k in enumerate(chosen)}
    return neg, torch.tensor([where[copies[j].pair] for j in neg], dtype=torch.int64)


def train(train_csv: str | os.PathLike, valid_csv: str | os.PathLike, out: str | os.PathLike,
          *, backbone: str = DEFAULT, options: TrainOptions | None = None,
          progress: bool = True) -> dict:
    """Train on ``train_csv``, pick the epoch with the best pairwise accuracy on
    ``valid_csv`` (with negatives: the best min(accuracy, worst robustness share)), save that
    model to ``out``; returns the per-epoch history and the best."""
    options = options or TrainOptions()
    options.check()
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    train_pairs, valid_pairs = read_pairs(train_csv), read_pairs(valid_csv)
    model, tokenizer = new_model(backbone, hidden_sizes=list(options.hidden_sizes),
                                 dropout=options.dropout, layer_transform=options.layer_transform,
                                 max_length=options.max_length, head_input=options.head_input)
    blocks = encoder_blocks(model.encoder)
    n_blocks = len(blocks)
    trained = n_blocks if options.train_blocks < 0 else options.train_blocks
    if trained > n_blocks:
        raise UsageError(f"--train-blocks {trained}: the encoder has only {n_blocks} blocks")
    boundary = n_blocks - trained  # hidden state index feeding the first trained block
    model.config.trained_encoder_layers = list(range(boundary, n_blocks))
    model.encoder.requires_grad_(False)
    blocks[boundary:].requires_grad_(True)

    def features(texts: list[str], name: str) -> CachedFeatures:
        return cached_features(model, tokenizer, texts, name, boundary if trained else None,
                               options.encode_batch_size, options.train_length or None)

    feats = {"train": features(train_pairs.texts, Path(train_csv).stem),
             "valid": features(valid_pairs.texts, Path(valid_csv).stem)}
    # Training negatives: fresh draws from the training split only (never the suite's seed).
    negatives = (pick_negatives(corrupt(train_pairs, seed=options.seed + SUITE_SEED + 1),
                                options.negatives, options.seed) if options.negatives else [])
    suite = corrupt(valid_pairs) if options.negatives else []
    if negatives:
        feats["negatives"] = features([c.bad for c in negatives], "train-negatives")
        feats["suite"] = features([c.bad for c in suite], "valid-suite")
    by_pair = copies_by_pair(negatives)
    strict = torch.tensor([c.kind in NOT_AN_ANSWER for c in negatives], dtype=torch.bool)

    groups = [{"params": [*model.layer_mix.parameters(), *model.head.parameters()],
               "lr": options.head_lr}]
    if trained:
        groups.append({"params": list(blocks[boundary:].parameters()), "lr": options.encoder_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=options.weight_decay)

    history, best, best_state = [], None, None
    epochs = tqdm(range(1, options.epochs + 1), desc="epochs", disable=not progress)
    for epoch in epochs:
        model.train()
        order = rng.permutation(len(train_pairs))
        total = 0.0
        steps = range(0, len(order), options.batch_pairs)
        for start in tqdm(steps, desc=f"epoch {epoch}", leave=False, disable=not progress):
            chosen = order[start:start + options.batch_pairs]
            idx = np.stack([2 * chosen, 2 * chosen + 1], axis=1).reshape(-1)
            scores = scores_from_cache(model, feats["train"], idx, boundary)
            loss = pair_loss(scores, options.loss, options.margin)
            neg, rows = negative_batch(negatives, by_pair, chosen)
            if len(neg):
                bad = scores_from_cache(model, feats["negatives"], neg, boundary)
                pair_scores = scores.view(-1, 2)
                loss = loss + options.negative_weight * negative_loss(
                    pair_scores[rows, 1], pair_scores[rows, 0], bad,
                    strict[torch.from_numpy(neg)], options.margin)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(chosen)
        metrics, valid_scores = evaluate_cached(model, feats["valid"], boundary)
        row = {"epoch": epoch, "train_loss": total / len(train_pairs),
               **{f"valid_{k}": v for k, v in metrics.items()}}
        criterion = metrics["accuracy"]
        if suite:
            suite_bad = scores_cached(model, feats["suite"], boundary)
            good = valid_scores[[2 * c.pair + 1 for c in suite]]
            shares = {k: v["share"] for k, v in win_shares(suite, good, suite_bad).items()}
            row["valid_robustness"] = shares
            criterion = min(criterion, *shares.values())
        row["criterion"] = criterion
        history.append(row)
        epochs.set_postfix(loss=f"{row['train_loss']:.4f}", acc=f"{metrics['accuracy']:.4f}",
                           crit=f"{criterion:.4f}")
        if best is None or criterion > best["criterion"]:
            best, best_state = row, copy.deepcopy(trained_state(model))
    assert best is not None and best_state is not None  # options.check(): epochs >= 1
    model.load_state_dict(best_state, strict=False)
    model.config.metrics = {"best_epoch": best["epoch"],
                            "valid_accuracy": best["valid_accuracy"],
                            "valid_ties": best["valid_ties"], "valid_pairs": best["valid_pairs"],
                            "train_csv": Path(train_csv).name, "valid_csv": Path(valid_csv).name,
                            "options": asdict(options)}
    if "valid_robustness" in best:
        model.config.metrics["valid_robustness"] = best["valid_robustness"]
    save_model(model.eval(), out)
    (Path(out) / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    return {"history": history, "best": best}
