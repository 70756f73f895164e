"""The IQS robustness suite (issue #21): corrupted copies of good answers, the prompt/response
segment head, training with negatives, and the shipped model on a fast subset of the suite."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus_files import subset_csv
from packed_models import copy_minilm_tokenizer

from car_engine.iqs import IQSScorer
from car_engine.iqs.model import response_mask
from car_engine.iqs.pairs import read_pairs
from car_engine.iqs.robustness import KINDS, corrupt, run_suite, sentences, split_pair_text
from car_engine.iqs.store import load_model, segment_markers
from car_engine.iqs.train import TrainOptions, train
from car_engine.models.registry import minilm_path

SUBSET = 24  # validation pairs in the fast subset (the bench row runs all 254)


@pytest.fixture(scope="module")
def valid_pairs(expert_revised_dir):
    return read_pairs(expert_revised_dir / "APE_score_valid.csv")


def test_corruptions_are_deterministic_and_of_their_kind(valid_pairs):
    got = corrupt(valid_pairs, seed=7, limit=40)
    assert got == corrupt(valid_pairs, seed=7, limit=40)
    assert got != corrupt(valid_pairs, seed=8, limit=40)
    counts = Counter(c.kind for c in got)
    assert set(counts) == set(KINDS) and all(n >= 20 for n in counts.values())
    for c in got:
        prompt, answer = split_pair_text(c.good)
        bad_prompt, bad_answer = split_pair_text(c.bad)
        words, bad_words = answer.split(), bad_answer.split()
        assert c.good == valid_pairs.texts[2 * c.pair + 1] and c.bad != c.good
        if c.kind != "swap-instruction":
            assert bad_prompt == prompt
        if c.kind == "random-same":
            assert len(bad_words) == len(words)
        elif c.kind == "random-long":
            assert 2 * len(words) - 1 <= len(bad_words) <= 3 * len(words) + 1
        elif c.kind == "loop":
            first = sentences(answer)[0]
            assert len(bad_words) >= 3 * len(words) and bad_answer.startswith(first + " " + first)
        elif c.kind == "off-topic":
            others = {split_pair_text(t)[1] for t in valid_pairs.texts[1::2]}
            assert bad_answer in others and bad_answer != answer
        elif c.kind == "truncate":
            assert words[:len(bad_words)] == bad_words
            assert 0.2 * len(words) - 1 <= len(bad_words) <= 0.5 * len(words)
        elif c.kind == "shuffle":
            assert sorted(bad_words) == sorted(words) and len(sentences(answer)) >= 2
        else:  # swap-instruction: the same answer under another pair's prompt
            assert bad_answer == answer and bad_prompt != prompt


def test_response_mask_marks_the_answer_tokens():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    markers = segment_markers(tokenizer)
    texts = ["Instruction: say what a response: is Input:  Response: a reply",
             "Instruction: add Input: 2 and 2 Response: 4 (Response: four)",
             "Instruction: name a colour Response: blue",  # the CSV form: no Input segment
             "Instruction: a long prompt cut before its answer"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    got = response_mask(batch["input_ids"], batch["attention_mask"], markers)
    for text, row, mask in zip(texts, got, batch["attention_mask"]):
        prompt, answer = split_pair_text(text)
        n_prompt = len(tokenizer(prompt.rstrip())["input_ids"]) - 1  # without [SEP]
        want = torch.zeros_like(row)
        if answer:
            want[n_prompt:int(mask.sum())] = True  # the answer's tokens and [SEP]
        assert torch.equal(row, want), text


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny random BERT with the real MiniLM tokenizer."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    copy_minilm_tokenizer(folder)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def test_segment_head_trains_with_negatives_and_exports(tmp_path, tiny_bert, expert_revised_dir,
                                                         monkeypatch, capsys):
    monkeypatch.setenv("CAR_ENGINE_CACHE", str(tmp_path / "cache"))
    train_csv = subset_csv(expert_revised_dir / "APE_score_train.csv", tmp_path / "t.csv", 20)
    valid_csv = subset_csv(expert_revised_dir / "APE_score_valid.csv", tmp_path / "v.csv", 10)
    options = TrainOptions(epochs=2, train_blocks=1, batch_pairs=8, hidden_sizes=[16],
                           max_length=64, loss="mse+margin", head_input="segments",
                           negatives=2)
    result = train(train_csv, valid_csv, tmp_path / "model", backbone=str(tiny_bert),
                   options=options, progress=False)
    best = result["best"]
    assert set(best["valid_robustness"]) == set(KINDS)
    assert best["criterion"] == min(best["valid_accuracy"], *best["valid_robustness"].values())
    model, _ = load_model(tmp_path / "model")
    assert model.config.head_input == "segments" and model.head[0].in_features == 5 * 32
    # The saved folder scores as training measured, on eager torch and on ONNX alike.
    texts = read_pairs(valid_csv).texts
    eager = IQSScorer.load(str(tmp_path / "model"), runtime="torch").score_texts(
        texts, progress=False)
    from car_engine.iqs.pairs import pairwise_accuracy

    assert pairwise_accuracy(eager)["accuracy"] == pytest.approx(best["valid_accuracy"])
    onnx = IQSScorer.load(str(tmp_path / "model"), runtime="onnx", batch_size=3).score_texts(
        texts, progress=False)
    assert np.abs(onnx - eager).max() < 1e-4
    # `iqs eval --robustness` on the trained folder prints the suite's table as JSON too.
    import json

    from car_engine.cli import main

    capsys.readouterr()
    assert main(["iqs", "eval", "--robustness", "--pairs", str(valid_csv), "--iqs-model",
                 str(tmp_path / "model"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["accuracy"] == pytest.approx(pairwise_accuracy(onnx)["accuracy"])
    assert set(got["robustness"]) == {*KINDS, "length"}
    assert all(0 <= got["robustness"][k]["share"] <= 1 for k in KINDS)


TARGET = 0.97  # issue #21: the good answer wins in >= 97% of the pairs of every kind


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="issue #21 open: the shipped IQS model is fooled by "
                   "random words, loops and off-topic answers (MODEL.md); a robust model that "
                   "ships turns this into a pass")
def test_shipped_model_wins_the_fast_subset(valid_pairs):
    """The default model on the first SUBSET validation pairs (the bench row runs them all)."""
    scorer = IQSScorer.load("default")
    table = run_suite(lambda t: scorer.score_texts(t, progress=False), valid_pairs,
                      limit=SUBSET)
    shares = {k: v["share"] for k, v in table.items() if k != "length"}
    assert set(shares) == set(KINDS)
    assert min(shares.values()) >= TARGET, shares
