"""IQS on a tiny, randomly initialised XLM-R-shaped encoder: COMET checkpoint loading
(strict keys), training end to end, and ONNX export parity. Fast: the encoder is 2 x 32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml
from corpus_files import subset_csv
from packed_models import copy_minilm_tokenizer
from torch import nn

from car_engine.errors import ModelError
from car_engine.iqs import IQSScorer
from car_engine.iqs.checkpoint import load_comet_checkpoint
from car_engine.iqs.model import masked_mean
from car_engine.iqs.pairs import read_pairs
from car_engine.iqs.store import load_model
from car_engine.iqs.train import TrainOptions, train

HIDDEN_SIZES = [48, 24]


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    """A folder with a tiny random XLM-R model and a real (BERT WordPiece) tokenizer."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    folder = tmp_path_factory.mktemp("tiny-xlmr")
    copy_minilm_tokenizer(folder)
    config = XLMRobertaConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=64,
                              max_position_embeddings=130, pad_token_id=0, type_vocab_size=1)
    torch.manual_seed(0)
    XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def _comet_state(encoder_folder: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """What a CaR/COMET run saves: encoder.model.*, layerwise_attention.*, estimator.ff.*"""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    torch.manual_seed(seed)
    encoder = XLMRobertaModel(XLMRobertaConfig.from_pretrained(encoder_folder),
                              add_pooling_layer=False)
    head = nn.Sequential(nn.Linear(32, 48), nn.Tanh(), nn.Dropout(0.1), nn.Linear(48, 24),
                         nn.Tanh(), nn.Dropout(0.1), nn.Linear(24, 1))
    state = {f"encoder.model.{k}": v for k, v in encoder.state_dict().items()}
    state.update({f"estimator.ff.{k}": v for k, v in head.state_dict().items()})
    for i, value in enumerate([0.3, -0.2, 0.5]):  # embeddings + 2 blocks
        state[f"layerwise_attention.scalar_parameters.{i}"] = torch.tensor([value])
    state["layerwise_attention.gamma"] = torch.tensor([1.7])
    return state


def _write_run(root: Path, state: dict, encoder_folder: Path) -> Path:
    """A Lightning-style run folder: version_0/hparams.yaml + version_0/checkpoints/*.ckpt."""
    run = root / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    hparams = {"pretrained_model": str(encoder_folder), "encoder_model": "XLM-RoBERTa",
               "pool": "avg", "layer": "mix", "layer_transformation": "softmax",
               "layer_norm": False, "loss": "mse", "dropout": 0.1,
               "hidden_sizes": HIDDEN_SIZES, "activations": "Tanh", "final_activation": None}
    (run / "hparams.yaml").write_text(yaml.safe_dump(hparams))
    ckpt = run / "checkpoints" / "epoch=3-step=1000.ckpt"
    torch.save({"state_dict": state, "epoch": 3, "global_step": 1000,
                "pytorch-lightning_version": "2.1.0"}, ckpt)
    return ckpt


def _expected_scores(state: dict, ids: torch.Tensor, mask: torch.Tensor,
                     encoder_folder: Path) -> torch.Tensor:
    """The COMET estimator computed independently from the raw state (softmax mix)."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    encoder = XLMRobertaModel(XLMRobertaConfig.from_pretrained(encoder_folder),
                              add_pooling_layer=False).eval()
    encoder.load_state_dict({k[len("encoder.model."):]: v for k, v in state.items()
                             if k.startswith("encoder.model.")})
    hidden = encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    scalars = torch.cat([state[f"layerwise_attention.scalar_parameters.{i}"] for i in range(3)])
    weights = torch.softmax(scalars, 0)
    mixed = state["layerwise_attention.gamma"] * sum(w * h for w, h in zip(weights, hidden))
    x = masked_mean(mixed, mask)
    for i in (0, 3):
        x = torch.tanh(x @ state[f"estimator.ff.{i}.weight"].T + state[f"estimator.ff.{i}.bias"])
    return (x @ state["estimator.ff.6.weight"].T + state["estimator.ff.6.bias"]).squeeze(-1)


def test_comet_checkpoint_loads_and_scores_like_the_reference(tmp_path, tiny_encoder):
    state = _comet_state(tiny_encoder)
    ckpt = _write_run(tmp_path, state, tiny_encoder)
    model, tokenizer = load_comet_checkpoint(ckpt)
    assert model.config.hidden_sizes == HIDDEN_SIZES and model.config.layer_transform == "softmax"
    assert model.config.max_length == 129  # 130 positions minus the padding offset
    batch = tokenizer(["Instruction: add 2 and 2 Input:  Response: 4",
                       "Instruction: name a colour Input:  Response: a deep, calm blue"],
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        got = model(batch["input_ids"], batch["attention_mask"])
        want = _expected_scores(state, batch["input_ids"], batch["attention_mask"], tiny_encoder)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got[0], got[1])


def test_checkpoint_missing_key_is_named(tmp_path, tiny_encoder):
    state = _comet_state(tiny_encoder)
    del state["estimator.ff.3.bias"]
    ckpt = _write_run(tmp_path, state, tiny_encoder)
    with pytest.raises(ModelError, match=r"missing keys \['head\.3\.bias'\]"):
        load_comet_checkpoint(ckpt)


def test_checkpoint_unexpected_key_is_named(tmp_path, tiny_encoder):
    state = _comet_state(tiny_encoder)
    state["estimator.extra.weight"] = torch.zeros(3)
    ckpt = _write_run(tmp_path, state, tiny_encoder)
    with pytest.raises(ModelError, match=r"unexpected keys \['estimator\.extra\.weight'\]"):
        load_comet_checkpoint(ckpt)


def test_checkpoint_with_pickled_code_is_refused(tmp_path, tiny_encoder):
    ckpt = _write_run(tmp_path, _comet_state(tiny_encoder), tiny_encoder)
    torch.save({"state_dict": {}, "callback": Path("x")}, ckpt)  # an arbitrary object
    with pytest.raises(ModelError, match="weights-only"):
        load_comet_checkpoint(ckpt)


def test_checkpoint_hub_name_without_local_encoder_is_a_clear_error(tmp_path, tiny_encoder):
    ckpt = _write_run(tmp_path, _comet_state(tiny_encoder), tiny_encoder)
    hparams = ckpt.parents[1] / "hparams.yaml"
    data = yaml.safe_load(hparams.read_text())
    hparams.write_text(yaml.safe_dump({**data, "pretrained_model": "xlm-roberta-large"}))
    with pytest.raises(ModelError, match="not a local encoder folder"):
        load_comet_checkpoint(ckpt)
    model, _ = load_comet_checkpoint(ckpt, encoder=tiny_encoder)  # explicit folder works
    assert model.config.num_layers == 3


def test_train_keeps_best_epoch_and_reloads(tmp_path, tiny_encoder, expert_revised_dir,
                                            monkeypatch):
    monkeypatch.setenv("CAR_ENGINE_CACHE", str(tmp_path / "cache"))
    train_csv = subset_csv(expert_revised_dir / "APE_score_train.csv", tmp_path / "t.csv", 24)
    valid_csv = subset_csv(expert_revised_dir / "APE_score_valid.csv", tmp_path / "v.csv", 12)
    options = TrainOptions(epochs=3, train_blocks=1, batch_pairs=8, hidden_sizes=[16],
                           max_length=64, loss="mse+margin")
    result = train(train_csv, valid_csv, tmp_path / "model", backbone=str(tiny_encoder),
                   options=options, progress=False)
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]
    best = max(result["history"], key=lambda h: h["valid_accuracy"])
    assert result["best"]["epoch"] == best["epoch"]
    # The saved folder scores the validation pairs exactly as training measured them.
    model, _ = load_model(tmp_path / "model")
    assert model.config.trained_encoder_layers == [1]
    scorer = IQSScorer.load(str(tmp_path / "model"), runtime="torch", batch_size=4)
    from car_engine.iqs.pairs import pairwise_accuracy

    metrics = pairwise_accuracy(scorer.score_texts(read_pairs(valid_csv).texts, progress=False))
    assert metrics["accuracy"] == pytest.approx(best["valid_accuracy"])
    # A second run reuses the cached frozen features and gives the same history.
    again = train(train_csv, valid_csv, tmp_path / "model2", backbone=str(tiny_encoder),
                  options=options, progress=False)
    assert [h["valid_accuracy"] for h in again["history"]] == \
        [h["valid_accuracy"] for h in result["history"]]


def test_onnx_export_of_checkpoint_matches_torch(tmp_path, tiny_encoder, sharegpt_records):
    ckpt = _write_run(tmp_path, _comet_state(tiny_encoder, seed=1), tiny_encoder)
    records = sharegpt_records.slice(0, 12)
    torch_scores = IQSScorer.load(str(ckpt), runtime="torch").score(records, progress=False)
    onnx_scorer = IQSScorer.load(str(ckpt), runtime="onnx", batch_size=5)
    onnx_scores = onnx_scorer.score(records, progress=False)
    assert onnx_scores.column("id").to_pylist() == records.column("id").to_pylist()
    assert onnx_scores.schema.field("iqs").type == pa.float64()
    diff = np.abs(np.array(onnx_scores.column("iqs")) - np.array(torch_scores.column("iqs")))
    assert diff.max() < 1e-4
    exported = list((ckpt.parent / "onnx").glob("*-fp32-*.onnx"))
    assert len(exported) == 1  # cached next to the weights
