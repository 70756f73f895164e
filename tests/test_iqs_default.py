"""The shipped default IQS model: accuracy on real validation pairs, and ONNX Runtime parity
(fp32, int8, fp16) against the eager PyTorch reference on real ShareGPT pairs. Exports are
cached (fingerprinted) under the car-engine cache folder, so only a first run pays for them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from car_engine.corpus import pair_texts
from car_engine.iqs import IQSScorer, score_iqs
from car_engine.iqs.pairs import pairwise_accuracy, read_pairs
from car_engine.iqs.score import load_any, spearman
from car_engine.reference.iqs import reference_scores

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_model():
    return load_any("default")


@pytest.fixture(scope="module")
def texts(sharegpt_records) -> list[str]:
    return pair_texts(sharegpt_records.slice(0, 48))


@pytest.fixture(scope="module")
def reference(default_model, texts) -> np.ndarray:
    model, tokenizer = default_model
    return reference_scores(model, tokenizer, texts, batch_size=16)


def test_default_model_ranks_revisions_above_originals(default_model, expert_revised_dir):
    """A slice of the validation split (the full split, 96.06%, is in MODEL.md)."""
    model, tokenizer = default_model
    pairs = read_pairs(expert_revised_dir / "APE_score_valid.csv")
    texts = pairs.texts[:80]  # 40 pairs keep the test quick
    metrics = pairwise_accuracy(reference_scores(model, tokenizer, texts, batch_size=16))
    assert metrics["pairs"] == 40
    assert metrics["accuracy"] >= 0.9, metrics


def test_score_api_keys_by_id_in_input_order(sharegpt_records):
    records = sharegpt_records.slice(0, 10)
    table = score_iqs(records, runtime="torch", progress=False)
    assert table.column_names == ["id", "iqs", "turn_iqs"]  # conversations, scored turn by turn
    first = score_iqs(records, runtime="torch", progress=False, turns="first")
    assert first.column_names == ["id", "iqs"]
    assert table.column("id").to_pylist() == records.column("id").to_pylist()
    assert np.isfinite(np.array(table.column("iqs"))).all()


def test_onnx_fp32_matches_pytorch(texts, reference):
    scorer = IQSScorer.load("default", runtime="onnx", precision="fp32")
    scores = scorer.score_texts(texts, progress=False)
    assert np.abs(scores - reference).max() < 1e-4
    assert "CPUExecutionProvider" in scorer.describe() or "CUDA" in scorer.describe()


def test_onnx_int8_ranks_like_fp32(texts, reference):
    scores = IQSScorer.load("default", precision="int8").score_texts(texts, progress=False)
    assert spearman(scores, reference) >= 0.99


def test_onnx_fp16_passes_checker_and_ranks_like_fp32(texts, reference, record_property):
    scorer = IQSScorer.load("default", precision="fp16")
    onnx.checker.check_model(str(scorer.runner.path))
    provider = scorer.runner.provider  # CPUExecutionProvider here; CUDA on a GPU machine
    record_property("fp16_execution_provider", provider)
    print(f"fp16 graph ran on {provider}")
    scores = scorer.score_texts(texts, progress=False)
    assert spearman(scores, reference) >= 0.999, provider


def test_cli_score_and_eval(tmp_path, expert_revised_dir, capsys):
    import json

    from car_engine.cli import main
    from car_engine.corpus import read_table

    out = tmp_path / "scores.parquet"
    assert main(["iqs", "score", "builtin:sharegpt", "--limit", "6", "--out", str(out),
                 "--runtime", "torch"]) == 0
    table = read_table(out)
    assert table.column_names == ["id", "iqs", "turn_iqs"] and table.num_rows == 6

    import csv

    pairs = read_pairs(expert_revised_dir / "APE_score_valid.csv")
    subset = tmp_path / "pairs.csv"
    with open(subset, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["src", "score"])
        writer.writerows([t, i % 2] for i, t in enumerate(pairs.texts[:12]))
    capsys.readouterr()
    assert main(["iqs", "eval", "--pairs", str(subset), "--runtime", "torch", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["pairs"] == 6 and metrics["correct"] + metrics["ties"] + metrics["wrong"] == 6
    assert main(["iqs", "eval", "--pairs", str(tmp_path / "missing.csv")]) == 3
