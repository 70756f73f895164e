"""Load a CaR/COMET PyTorch-Lightning IQS checkpoint (``.ckpt`` + ``hparams.yaml``).

The checkpoint is read with ``torch.load(weights_only=True)``, so no pickled code runs.
COMET's own loader ignores missing keys; this one maps every key onto :class:`IQSModel`
and refuses to load when any is missing or left over, naming them.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from car_engine.errors import ModelError
from car_engine.iqs.model import IQSConfig, IQSModel, encoder_max_length

# COMET buffers that hold no learned value: the layer-dropout scratch tensors and the
# position-id table older transformers versions saved. They are accounted for, not loaded.
_NON_WEIGHT_KEYS = re.compile(
    r"^(layerwise_attention\.dropout_(mask|fill)|encoder\.model\.embeddings\.position_ids)$")
_SCALAR = re.compile(r"^layerwise_attention\.scalar_parameters\.(\d+)$")


def find_hparams(ckpt: Path) -> Path:
    """``hparams.yaml`` of a Lightning run: two folders up from the checkpoint file
    (``version_0/checkpoints/x.ckpt`` -> ``version_0/hparams.yaml``), else beside it."""
    for folder in (ckpt.parent.parent, ckpt.parent):
        if (folder / "hparams.yaml").is_file():
            return folder / "hparams.yaml"
    raise ModelError(f"{ckpt}: no hparams.yaml two folders up ({ckpt.parent.parent}) or beside it")


def read_hparams(path: Path) -> dict:
    """The run's hyper-parameters, checked for the options this model reproduces."""
    with open(path, encoding="utf-8") as f:
        hparams = yaml.safe_load(f) or {}
    if not isinstance(hparams, dict):
        raise ModelError(f"{path}: not a mapping of hyper-parameters")
    checks = {"layer": "mix", "pool": "avg"}
    for key, wanted in checks.items():
        if str(hparams.get(key, wanted)) != wanted:
            raise ModelError(f"{path}: {key}={hparams[key]!r} is not supported (only {wanted!r})")
    if hparams.get("layer_norm"):
        raise ModelError(f"{path}: layer_norm=True is not supported (CaR trains without it)")
    if hparams.get("final_activation"):
        raise ModelError(f"{path}: final_activation={hparams['final_activation']!r} is not "
                         "supported (the IQS score is unbounded)")
    return hparams


def comet_to_iqs_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename COMET keys to :class:`IQSModel` keys. Returns the renamed state and the keys
    that were not recognised (reported as unexpected by the caller)."""
    out: dict[str, torch.Tensor] = {}
    scalars: dict[int, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if _NON_WEIGHT_KEYS.match(key):
            continue
        if match := _SCALAR.match(key):
            scalars[int(match.group(1))] = value.reshape(-1)
        elif key == "layerwise_attention.gamma":
            out["layer_mix.gamma"] = value.reshape(1)
        elif key.startswith("encoder.model."):
            out["encoder." + key[len("encoder.model."):]] = value
        elif key.startswith("estimator.ff."):
            out["head." + key[len("estimator.ff."):]] = value
        else:
            unknown.append(key)
    if scalars:
        if sorted(scalars) != list(range(len(scalars))):
            raise ModelError(f"layer-mix weights have gaps: indices {sorted(scalars)}")
        out["layer_mix.scalar_parameters"] = torch.cat([scalars[i] for i in sorted(scalars)])
    return out, unknown


def _read_state(ckpt: Path) -> dict[str, torch.Tensor]:
    try:
        blob = torch.load(ckpt, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ModelError(f"{ckpt}: not a loadable weights-only checkpoint ({err})") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ModelError(f"{ckpt}: no 'state_dict' of tensors inside")
    return state


def load_comet_checkpoint(ckpt: str | os.PathLike, *, encoder: str | os.PathLike | None = None,
                          hparams: str | os.PathLike | None = None) -> tuple[IQSModel, Any]:
    """Build an :class:`IQSModel` from a CaR/COMET checkpoint. ``encoder`` is a local folder
    with the encoder's ``config.json`` and tokenizer (default: ``pretrained_model`` from the
    hparams when that is a local folder; hub names are not downloaded)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise ModelError(f"{ckpt}: no such checkpoint")
    hparams_path = Path(hparams) if hparams else find_hparams(ckpt)
    hp = read_hparams(hparams_path)
    folder = Path(encoder or hp.get("pretrained_model", ""))
    if not (folder / "config.json").is_file():
        raise ModelError(f"{hparams_path}: pretrained_model {str(folder)!r} is not a local "
                         "encoder folder; pass the encoder folder (config + tokenizer) explicitly")
    enc_config = AutoConfig.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    state, unknown = comet_to_iqs_keys(_read_state(ckpt))
    with_pooler = any(k.startswith("encoder.pooler.") for k in state)
    try:
        enc = AutoModel.from_config(enc_config, add_pooling_layer=with_pooler)
    except TypeError:
        enc = AutoModel.from_config(enc_config)
    n_blocks = enc_config.num_hidden_layers
    config = IQSConfig(
        backbone=str(folder), num_layers=n_blocks + 1, hidden_size=enc_config.hidden_size,
        hidden_sizes=[int(h) for h in hp.get("hidden_sizes", [2048, 1024])],
        activation=str(hp.get("activations", "Tanh")), dropout=float(hp.get("dropout", 0.1)),
        layer_transform=str(hp.get("layer_transformation", "sparsemax")),
        max_length=encoder_max_length(enc_config, tokenizer),
        trained_encoder_layers=list(range(n_blocks)), train_embeddings=True)
    model = IQSModel(enc, config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(unknown + [k for k in state if k not in expected])
    if missing or unexpected:
        raise ModelError(f"{ckpt}: checkpoint does not match the IQS model: "
                         f"missing keys {missing or 'none'}; "
                         f"unexpected keys {unexpected or 'none'}")
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in state.items()
             if v.shape != expected[k].shape]
    if wrong:
        raise ModelError(f"{ckpt}: tensor shapes do not match the encoder config: {wrong[:10]}")
    model.load_state_dict(state, strict=True)
    return model.eval(), tokenizer
