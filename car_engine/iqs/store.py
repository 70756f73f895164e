"""IQS model folders: ``iqs_config.json`` + ``iqs.safetensors`` (no code runs on load).

The safetensors file holds the layer mix, the head and only the encoder weights that were
trained; the rest of the encoder comes from the backbone folder named in the config, so a
model trained on a frozen or partly frozen backbone stays a few MB.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from car_engine.errors import ModelError
from car_engine.io import atomic_path, write_text
from car_engine.iqs.model import IQSConfig, IQSModel, encoder_blocks, encoder_max_length
from car_engine.models.registry import DEFAULT, resolve_encoder

CONFIG_FILE = "iqs_config.json"
WEIGHTS_FILE = "iqs.safetensors"


def default_model_dir() -> Path:
    """The shipped default IQS model (all-MiniLM-L6-v2 backbone) inside the package."""
    return Path(__file__).resolve().parents[1] / "assets" / "iqs"


def resolve_model_dir(model: str | os.PathLike) -> Path:
    """``default`` or a folder holding an IQS model, checked to contain both files."""
    folder = default_model_dir() if str(model) == DEFAULT else Path(model)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise ModelError(f"{folder}: not an IQS model folder (missing {name}); "
                             "train one with `car-engine iqs train`")
    return folder


def load_encoder(backbone: str | os.PathLike) -> tuple[Any, Any]:
    """A Hugging Face encoder and its tokenizer from a local folder (``default`` = MiniLM)."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the unused-pooler load report is noise here
    hf_logging.disable_progress_bar()
    path = resolve_encoder(backbone)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        try:
            encoder = AutoModel.from_pretrained(path, add_pooling_layer=False)
        except TypeError:  # encoders without a pooler do not take add_pooling_layer
            encoder = AutoModel.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ModelError(f"{path}: cannot load encoder: {err}") from err
    return encoder.eval(), tokenizer


def new_model(backbone: str | os.PathLike = DEFAULT, **options: Any) -> tuple[IQSModel, Any]:
    """A fresh (untrained head) IQS model on ``backbone``; ``options`` set IQSConfig fields."""
    encoder, tokenizer = load_encoder(backbone)
    # A folder is stored absolute so the saved model loads from any working directory.
    name = DEFAULT if str(backbone) == DEFAULT else str(Path(backbone).resolve())
    config = IQSConfig(backbone=name, **options)
    config.num_layers = encoder.config.num_hidden_layers + 1
    config.hidden_size = encoder.config.hidden_size
    config.max_length = min(config.max_length, encoder_max_length(encoder.config, tokenizer))
    if config.head_input != "mean" and not config.segment_markers:
        config.segment_markers = segment_markers(tokenizer)
    return IQSModel(encoder, config).eval(), tokenizer


def segment_markers(tokenizer: Any) -> list[list[int]]:
    """Token ids of the pair text's `` Input:`` and `` Response:`` markers (SPEC §1), as the
    tokenizer writes them inside a text (no special tokens)."""
    ids = [tokenizer(marker, add_special_tokens=False)["input_ids"]
           for marker in (" Input:", " Response:")]
    if not all(ids):
        raise ModelError("the tokenizer gives no tokens for the Input:/Response: markers")
    return ids


def trained_state(model: IQSModel) -> dict[str, torch.Tensor]:
    """The weights a model folder stores: mix, head and the encoder parts marked trained."""
    config = model.config
    keep_prefixes = ["layer_mix.", "head."]
    if model.composite:
        keep_prefixes += ["penalty_mix.", "penalty.", "stat_penalty."]
    blocks = encoder_blocks(model.encoder)
    block_names = {id(m): n for n, m in model.encoder.named_modules()}
    keep_prefixes += [f"encoder.{block_names[id(blocks[i])]}."
                      for i in config.trained_encoder_layers]
    if config.train_embeddings:
        keep_prefixes.append("encoder.embeddings.")
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()
            if any(k.startswith(p) for p in keep_prefixes)}


def save_model(model: IQSModel, folder: str | os.PathLike) -> Path:
    """Write ``model`` as an IQS model folder (config JSON + safetensors)."""
    folder = Path(folder)
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(trained_state(model), str(tmp))
    write_text(folder / CONFIG_FILE, model.config.to_json() + "\n")
    return folder


def load_model(model: str | os.PathLike = DEFAULT, *, encoder: bool = True
               ) -> tuple[IQSModel, Any]:
    """Load an IQS model folder: the backbone from its own folder, then the stored weights,
    every stored key checked against the model. With ``encoder`` False, only the layer mix and
    head (the encoder an ``nn.Identity``, the tokenizer None): what reads hidden states that
    another forward computed (SPEC §10); a model that trained encoder parts is refused."""
    folder = resolve_model_dir(model)
    config = IQSConfig.from_file(folder / CONFIG_FILE)
    if encoder:
        backbone, tokenizer = load_encoder(config.backbone)
    elif config.trained_encoder_layers or config.train_embeddings:
        raise ModelError(f"{folder}: the model trained encoder parts; load it with its encoder")
    else:
        backbone, tokenizer = torch.nn.Identity(), None
    iqs = IQSModel(backbone, config)
    state = load_file(str(folder / WEIGHTS_FILE))
    expected = set(trained_state(iqs)) if encoder else set(iqs.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ModelError(f"{folder / WEIGHTS_FILE}: weights do not match the config "
                         f"(missing {missing[:10]}, unexpected {unexpected[:10]})")
    iqs.load_state_dict(state, strict=False)
    return iqs.eval(), tokenizer
