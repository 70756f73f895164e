"""The composite IQS head (issue #21): an expert model's score minus relu-gated penalties,
computed inside ``score_states`` from one encoder forward, trained on corrupted copies, saved,
reloaded and exported to ONNX with the same two inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus_files import subset_csv
from packed_models import copy_minilm_tokenizer

from car_engine.errors import UsageError
from car_engine.iqs import IQSScorer
from car_engine.iqs.composite_data import chunked_features
from car_engine.iqs.composite_train import FAMILIES, CompositeOptions, train_composite
from car_engine.iqs.extra_answers import ExtraAnswers, visible
from car_engine.iqs.features import scores_from_cache
from car_engine.iqs.model import ORDER_POOLS, order_pools, pool_masks, segment_pools
from car_engine.iqs.pairs import pairwise_accuracy, read_pairs
from car_engine.iqs.robustness import KINDS, Corruption
from car_engine.iqs.store import load_model
from car_engine.iqs.train import TrainOptions, train


def test_order_pools_extend_the_segment_pools():
    torch.manual_seed(0)
    states = torch.randn(3, 2, 12, 5)
    mask = torch.tensor([[1] * 12, [1] * 9 + [0] * 3])
    response = torch.zeros(2, 12, dtype=torch.bool)
    response[0, 4:12], response[1, 3:9] = True, True
    pools = order_pools(states, mask, response)
    assert pools.shape == (3, 2, ORDER_POOLS, 5)
    assert torch.equal(pools[:, :, :4], segment_pools(states, mask, response))
    masks = pool_masks(mask, response, ordered=True)
    start, first, second, cls, middle = masks[4:]
    # Row 1: a 6-token response at 3..8: first 6 (all of it, under END_TOKENS), halves 3 + 3,
    # the middle third its tokens 3 and 4 (positions 5, 6); [CLS] is position 0.
    assert start[1].nonzero().flatten().tolist() == [3, 4, 5, 6, 7, 8]
    assert first[1].nonzero().flatten().tolist() == [3, 4, 5]
    assert second[1].nonzero().flatten().tolist() == [6, 7, 8]
    assert middle[1].nonzero().flatten().tolist() == [5, 6]
    assert cls.nonzero().tolist() == [[0, 0], [1, 0]]
    want = states[:, 1, 6:9].mean(dim=1)
    assert torch.allclose(pools[:, 1, 6], want, atol=1e-6)


def _answers_corpus(path: Path) -> Path:
    """Twenty real-looking pairs of another shape than the expert split's."""
    topics = ["rivers", "bread", "chess", "volcanoes", "tides", "bees", "glass", "maps",
              "clocks", "salt"]
    rows = [{"instruction": f"Explain {t} to a child{' in detail' * (i % 2)}.",
             "output": f"{t.capitalize()} are interesting. " * (2 + i % 3)
             + f"People have studied {t} for a long time, and each answer differs {i}."}
            for i, t in enumerate(topics * 2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def composite_folder(tmp_path_factory, expert_revised_dir) -> tuple[Path, Path, dict]:
    """A tiny random BERT, a mean-head expert on it, and a composite trained on top."""
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("composite")
    bert = root / "bert"
    bert.mkdir()
    copy_minilm_tokenizer(bert)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(bert)
    train_csv = subset_csv(expert_revised_dir / "APE_score_train.csv", root / "t.csv", 16)
    valid_csv = subset_csv(expert_revised_dir / "APE_score_valid.csv", root / "v.csv", 8)
    mp = pytest.MonkeyPatch()
    mp.setenv("CAR_ENGINE_CACHE", str(root / "cache"))
    try:
        train(train_csv, valid_csv, root / "expert", backbone=str(bert),
              options=TrainOptions(epochs=1, batch_pairs=8, hidden_sizes=[16], max_length=64),
              progress=False)
        options = CompositeOptions(epochs=2, batch_pairs=8, hidden_sizes=[8], train_length=64,
                                   extra_corpus=str(_answers_corpus(root / "answers.jsonl")),
                                   extra_skip=2, extra_limit=12, extra_valid=6,
                                   token_stats=True)
        result = train_composite(train_csv, valid_csv, root / "composite", root / "expert",
                                 options, progress=False)
    finally:
        mp.undo()
    return root, valid_csv, result


def test_composite_trains_saves_and_scores_in_score_states(composite_folder):
    root, valid_csv, result = composite_folder
    best = result["best"]
    assert set(best["valid_robustness"]) == set(KINDS)
    # The extra answers' held-out slice is reported: its false alarms and its own suite.
    assert 0.0 <= best["extra_real_fired"] <= 1.0
    assert set(best["extra_robustness"]) <= set(KINDS) and best["extra_robustness"]
    model, tokenizer = load_model(root / "composite")
    expert, _ = load_model(root / "expert")
    assert model.config.head_input == "composite"
    assert model.config.penalty_outputs == len(FAMILIES)
    assert model.stat_penalty is not None  # the token statistics train and ship with it
    texts = read_pairs(valid_csv).texts
    batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        got = model(ids, mask)
        # The one-pass interface: every hidden state in, the same scores out.
        assert torch.equal(model.score_states(model.hidden_states(ids, mask), ids, mask), got)
        # The expert path is the expert model's, untouched: with the penalties off (every
        # output below 0) the composite scores exactly as the expert does.
        model.penalty[-1].bias.fill_(-1e3)
        assert torch.allclose(model(ids, mask), expert(ids, mask), atol=1e-6)
    eager = IQSScorer.load(str(root / "composite"), runtime="torch").score_texts(
        texts, progress=False)
    assert pairwise_accuracy(eager)["accuracy"] == pytest.approx(best["valid_accuracy"])


def test_composite_exports_to_onnx_with_two_inputs(composite_folder):
    import onnx

    root, valid_csv, _ = composite_folder
    texts = read_pairs(valid_csv).texts
    eager = IQSScorer.load(str(root / "composite"), runtime="torch").score_texts(
        texts, progress=False)
    fp32 = IQSScorer.load(str(root / "composite"), runtime="onnx", batch_size=3)
    assert np.abs(fp32.score_texts(texts, progress=False) - eager).max() < 1e-4
    int8 = IQSScorer.load(str(root / "composite"), runtime="onnx", precision="int8")
    assert np.isfinite(int8.score_texts(texts, progress=False)).all()
    exported = sorted((root / "composite").rglob("*.onnx"))
    assert exported
    graph = onnx.load(str(exported[0])).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in graph.output] == ["score"]


def test_composite_with_a_trained_top_block_scores_as_it_was_picked(composite_folder,
                                                                   expert_revised_dir):
    """--train-blocks 1: the top block trains on cached lower-layer states, is stored with
    the heads, and the reloaded model (a full eager forward) scores the validation pairs
    as the epoch pick did from the cache (to 1e-4)."""
    from safetensors.torch import load_file

    root, valid_csv, _ = composite_folder
    train_csv = root / "t.csv"
    mp = pytest.MonkeyPatch()
    mp.setenv("CAR_ENGINE_CACHE", str(root / "cache"))
    try:
        options = CompositeOptions(epochs=2, batch_pairs=8, hidden_sizes=[8], train_length=64,
                                   train_blocks=1, encoder_lr=1e-2)
        result = train_composite(train_csv, valid_csv, root / "blocks", root / "expert",
                                 options, progress=False)
    finally:
        mp.undo()
    model, tokenizer = load_model(root / "blocks")
    expert, _ = load_model(root / "expert")
    assert model.config.trained_encoder_layers == [1]
    stored = load_file(str(root / "blocks" / "iqs.safetensors"))
    block = [k for k in stored if k.startswith("encoder.")]
    assert block and all(".layer.1." in k for k in block)
    trained, frozen = model.encoder.state_dict(), expert.encoder.state_dict()
    assert any(not torch.equal(trained[k[len("encoder."):]], frozen[k[len("encoder."):]])
               for k in block)  # the block moved
    texts = read_pairs(valid_csv).texts
    eager = IQSScorer.load(str(root / "blocks"), runtime="torch").score_texts(
        texts, progress=False)
    assert pairwise_accuracy(eager)["accuracy"] == pytest.approx(result["best"]["valid_accuracy"])
    # What training scored from the cache (lower layers cached, the block run on their
    # states) is what a full forward scores.
    mp.setenv("CAR_ENGINE_CACHE", str(root / "cache"))
    try:
        feats = chunked_features(model, tokenizer, texts, "v", 64, 4, boundary=1)
    finally:
        mp.undo()
    with torch.no_grad():
        cached = scores_from_cache(model, feats, np.arange(len(texts)), 1).numpy()
    assert np.abs(cached - eager).max() < 1e-4
    with pytest.raises(UsageError, match="--train-blocks 5"):
        train_composite(train_csv, valid_csv, root / "bad", root / "expert",
                        CompositeOptions(train_blocks=5), progress=False)


def test_extra_answers_name_a_slice_the_corpus_lacks(tmp_path):
    corpus = str(_answers_corpus(tmp_path / "answers.jsonl"))
    answers, held = ExtraAnswers(corpus, 5, 10, 4).pairs()
    assert len(answers.texts) == 20  # each answer twice, a pseudo-pair
    assert len(held.texts) == 8 and held.texts[0] not in answers.texts
    with pytest.raises(UsageError, match="has 20 usable records"):
        ExtraAnswers(corpus, 15, 10, 0).pairs()


def test_visible_drops_a_corruption_the_window_cannot_see(tmp_path):
    from transformers import AutoTokenizer

    copy_minilm_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    good = "Instruction: say it Input:  Response: " + "word " * 200
    seen = Corruption("truncate", 0, good, good[:60])
    unseen = Corruption("truncate", 0, good, good[: len(good) // 2])
    assert visible(tokenizer, [seen, unseen], 32) == [seen]
