"""Train the IQS estimator on expert-revision pairs (CaR's recipe, made cheap on a CPU).

The bottom of the encoder stays frozen, so its work is done once: every text is encoded a
single time and the mean-pooled vector of each frozen layer (plus the token states that
feed the first trained block, if any) is cached. Because pooling and the layer mix are
linear, an epoch then only runs the trained top blocks, the mix and the head.
``train_blocks=0`` is the frozen backbone; ``train_blocks=-1`` fine-tunes every block
(embeddings stay frozen, as in COMET's ``keep_embeddings_frozen``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from car_engine.batching import length_batches, pad_batch, pad_states, tokenize
from car_engine.errors import UsageError
from car_engine.io import atomic_path
from car_engine.iqs.model import IQSModel, encoder_blocks, masked_mean, run_blocks
from car_engine.iqs.pairs import Pairs, pairwise_accuracy, read_pairs
from car_engine.iqs.store import new_model, save_model, trained_state
from car_engine.models.registry import DEFAULT, cache_dir

LOSSES = ("mse", "margin", "mse+margin")


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
    max_length: int = 512
    encode_batch_size: int = 32

    def check(self) -> None:
        """Reject option values that cannot work, naming the option."""
        if self.loss not in LOSSES:
            raise UsageError(f"--loss must be one of {LOSSES}, not {self.loss!r}")
        if self.epochs < 1 or self.batch_pairs < 1:
            raise UsageError("--epochs and --batch-pairs must be at least 1")


@dataclass
class CachedFeatures:
    """Frozen-encoder outputs for a list of texts."""

    pooled: torch.Tensor  # [every hidden state, texts, hidden] mean-pooled, float32
    states: list[torch.Tensor] | None  # per text [tokens, hidden] fp16, fed to the first
    # trained block (None when the whole backbone is frozen)


def _cache_stem(model: IQSModel, texts_source: str) -> str:
    stat = Path(texts_source).stat()
    backbone = model.config.backbone
    raw = json.dumps([backbone if backbone == DEFAULT else str(Path(backbone).resolve()),
                      str(Path(texts_source).resolve()), stat.st_size, stat.st_mtime_ns,
                      model.config.max_length])
    return f"{Path(texts_source).stem}-{hashlib.sha256(raw.encode()).hexdigest()[:16]}"


@torch.inference_mode()
def encode_frozen(model: IQSModel, token_ids: list[list[int]], boundary: int | None,
                  batch_size: int = 32, pad_id: int = 0, desc: str = "encode") -> CachedFeatures:
    """One encoder pass over every text: every hidden state mean-pooled and, when
    ``boundary`` is given, hidden state ``boundary`` token by token."""
    model.eval()
    pooled = torch.zeros((model.config.num_layers, len(token_ids), model.config.hidden_size))
    states: list[torch.Tensor | None] | None = (None if boundary is None
                                                else [None] * len(token_ids))
    for idx in tqdm(list(length_batches(token_ids, batch_size)), desc=desc, unit="batch"):
        ids, mask = (torch.from_numpy(a) for a in pad_batch(token_ids, idx, pad_id))
        layers = model.hidden_states(ids, mask)
        pooled[:, torch.from_numpy(idx)] = masked_mean(layers, mask)
        if states is not None:
            for row, i in enumerate(idx):
                states[i] = layers[boundary, row, : len(token_ids[i])].to(torch.float16).clone()
    # length_batches hands out every text once, so no slot of states is still None here
    return CachedFeatures(pooled, cast("list[torch.Tensor] | None", states))


def _save_atomic(blob: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def cached_features(model: IQSModel, tokenizer: Any, pairs: Pairs, boundary: int | None,
                    batch_size: int) -> CachedFeatures:
    """:func:`encode_frozen` for a pairs file, cached on disk (read back with
    ``torch.load(weights_only=True)``) so repeated trainings skip the encoder pass."""
    folder = cache_dir() / "iqs-features"
    stem = _cache_stem(model, pairs.source)
    pooled_path = folder / f"{stem}-pooled.pt"
    states_path = folder / f"{stem}-states{boundary}.pt"
    if pooled_path.is_file() and (boundary is None or states_path.is_file()):
        pooled = torch.load(pooled_path, weights_only=True)["pooled"]
        states = None
        if boundary is not None:
            blob = torch.load(states_path, weights_only=True)
            states = list(torch.split(blob["states"], blob["lengths"].tolist()))
        return CachedFeatures(pooled, states)
    token_ids = tokenize(tokenizer, pairs.texts, model.config.max_length)
    feats = encode_frozen(model, token_ids, boundary, batch_size, tokenizer.pad_token_id or 0,
                          desc=f"encode {Path(pairs.source).name}")
    _save_atomic({"pooled": feats.pooled}, pooled_path)
    if feats.states is not None:
        _save_atomic({"states": torch.cat(feats.states),
                      "lengths": torch.tensor([s.shape[0] for s in feats.states])}, states_path)
    return feats


def scores_from_cache(model: IQSModel, feats: CachedFeatures, idx: np.ndarray,
                      boundary: int) -> torch.Tensor:
    """Scores of texts ``idx`` from cached frozen features plus the trained top blocks."""
    pooled = feats.pooled[: boundary + 1, torch.from_numpy(idx)]
    top = encoder_blocks(model.encoder)[boundary:]
    if len(top):
        assert feats.states is not None  # cached whenever blocks above boundary are trained
        states, mask = pad_states([feats.states[i] for i in idx])
        pooled = torch.cat([pooled, torch.stack(run_blocks(top, states, mask))], dim=0)
    return model.score_pooled(pooled)


def pair_loss(scores: torch.Tensor, loss: str, margin: float) -> torch.Tensor:
    """The training loss over interleaved (original, revised) scores."""
    pairs = scores.view(-1, 2)
    mse = ((pairs - pairs.new_tensor([0.0, 1.0])) ** 2).mean()
    hinge = torch.relu(margin - (pairs[:, 1] - pairs[:, 0])).mean()
    return {"mse": mse, "margin": hinge, "mse+margin": mse + hinge}[loss]


@torch.no_grad()
def evaluate_cached(model: IQSModel, feats: CachedFeatures, boundary: int,
                    batch_size: int = 64) -> tuple[dict, np.ndarray]:
    """Pairwise accuracy (SPEC §1) and the scores, from cached features."""
    model.eval()
    n = feats.pooled.shape[1]
    scores = np.concatenate([
        scores_from_cache(model, feats, np.arange(s, min(s + batch_size, n)), boundary).numpy()
        for s in range(0, n, batch_size)])
    return pairwise_accuracy(scores), scores


def train(train_csv: str | os.PathLike, valid_csv: str | os.PathLike, out: str | os.PathLike,
          *, backbone: str = DEFAULT, options: TrainOptions | None = None,
          progress: bool = True) -> dict:
    """Train on ``train_csv``, pick the epoch with the best pairwise accuracy on
    ``valid_csv``, save that model to ``out``; returns the per-epoch history and the best."""
    options = options or TrainOptions()
    options.check()
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    train_pairs, valid_pairs = read_pairs(train_csv), read_pairs(valid_csv)
    model, tokenizer = new_model(backbone, hidden_sizes=list(options.hidden_sizes),
                                 dropout=options.dropout, layer_transform=options.layer_transform,
                                 max_length=options.max_length)
    blocks = encoder_blocks(model.encoder)
    n_blocks = len(blocks)
    trained = n_blocks if options.train_blocks < 0 else options.train_blocks
    if trained > n_blocks:
        raise UsageError(f"--train-blocks {trained}: the encoder has only {n_blocks} blocks")
    boundary = n_blocks - trained  # hidden state index feeding the first trained block
    model.config.trained_encoder_layers = list(range(boundary, n_blocks))
    model.encoder.requires_grad_(False)
    blocks[boundary:].requires_grad_(True)

    feats = {name: cached_features(model, tokenizer, pairs, boundary if trained else None,
                                   options.encode_batch_size)
             for name, pairs in (("train", train_pairs), ("valid", valid_pairs))}
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
            loss = pair_loss(scores_from_cache(model, feats["train"], idx, boundary),
                             options.loss, options.margin)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(chosen)
        metrics, _ = evaluate_cached(model, feats["valid"], boundary)
        row = {"epoch": epoch, "train_loss": total / len(train_pairs),
               **{f"valid_{k}": v for k, v in metrics.items()}}
        history.append(row)
        epochs.set_postfix(loss=f"{row['train_loss']:.4f}", acc=f"{metrics['accuracy']:.4f}")
        if best is None or metrics["accuracy"] > best["valid_accuracy"]:
            best, best_state = row, copy.deepcopy(trained_state(model))
    assert best is not None and best_state is not None  # options.check(): epochs >= 1
    model.load_state_dict(best_state, strict=False)
    model.config.metrics = {"best_epoch": best["epoch"],
                            "valid_accuracy": best["valid_accuracy"],
                            "valid_ties": best["valid_ties"], "valid_pairs": best["valid_pairs"],
                            "train_csv": Path(train_csv).name, "valid_csv": Path(valid_csv).name,
                            "options": asdict(options)}
    save_model(model.eval(), out)
    (Path(out) / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    return {"history": history, "best": best}
