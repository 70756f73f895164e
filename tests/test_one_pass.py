"""One encoder pass (SPEC §10) with the real default models on real ShareGPT records: the IQS
score and the embedding equal the two passes' (IQS at the model's 512 tokens, so texts longer
than the embedding's 256 get their second forward), for CaR's mean head and for the segments
head, pairs and conversations alike; a run takes it by default and says when it cannot."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from car_engine.config import EMBED_MAX_SEQ_LENGTH, EmbedParams, IQSParams, RunConfig
from car_engine.corpus import load_corpus, pair_texts
from car_engine.errors import ModelError
from car_engine.iqs.score import IQSScorer, TorchRunner, load_any
from car_engine.iqs.store import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_model,
    new_model,
    resolve_model_dir,
    save_model,
)
from car_engine.iqs.token_stats import stat_token_ids
from car_engine.one_pass import OnePassEncoder, encode_records, two_pass_reason
from car_engine.pipeline import run

pytestmark = pytest.mark.slow  # the real encoder


@pytest.fixture(scope="module")
def records() -> pa.Table:
    """24 real records: pairs (some longer than 256 tokens, so cut there) and conversations."""
    table = load_corpus("builtin:sharegpt", limit=60).records
    texts = pair_texts(table)
    long_rows = [i for i, t in enumerate(texts) if len(t) > 2500][:3]
    rows = sorted({*range(12), *long_rows})
    assert long_rows and table.take(rows).column("turns").null_count < len(rows)
    return table.take(rows)


@pytest.fixture(scope="module")
def encoder() -> OnePassEncoder:
    return OnePassEncoder(dtype="fp32")  # the exact path: equal to two passes to 1e-5


def eager_scorer(model_dir: str) -> IQSScorer:
    """The eager IQS scorer (the reference) at the model's own length."""
    model, tokenizer = load_any(model_dir)
    assert model.config.max_length > EMBED_MAX_SEQ_LENGTH  # the long texts' second forward
    return IQSScorer(TorchRunner(model, "cpu", "fp32"), tokenizer, model.config.max_length)


def test_records_get_the_iqs_table_and_the_vectors_of_two_passes(records, encoder):
    table, vectors = encoder.encode(records, turns="all", progress=False)
    assert any(len(t or []) > 1 for t in table.column("turn_iqs").to_pylist())  # turns
    want = eager_scorer("default").score(records, progress=False, turns="all")
    assert table.column("id").to_pylist() == want.column("id").to_pylist()
    np.testing.assert_allclose(table.column("iqs").to_numpy(), want.column("iqs").to_numpy(),
                               atol=1e-5, rtol=0)
    for got, ref in zip(table.column("turn_iqs").to_pylist(),
                        want.column("turn_iqs").to_pylist(), strict=True):
        assert (got is None) == (ref is None)
        if got is not None:
            np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    from car_engine.embed import embed_records

    np.testing.assert_allclose(vectors, embed_records(records, progress=False, dtype="fp32"),
                               atol=1e-6)


def test_the_segments_head_reads_the_same_states(records, tmp_path):
    torch.manual_seed(3)
    model, _ = new_model("default", head_input="segments")
    for p in model.head.parameters():
        torch.nn.init.normal_(p, std=0.2)  # a head with outputs that tell texts apart
    folder = save_model(model, tmp_path / "segments")
    texts = pair_texts(records)
    scores, _ = OnePassEncoder(str(folder), dtype="fp32").encode_texts(texts, progress=False)
    reference = eager_scorer(str(folder)).score_texts(texts, progress=False)
    assert np.std(reference) > 1e-3
    np.testing.assert_allclose(scores, reference, atol=1e-5, rtol=0)


def test_a_composite_head_with_token_statistics_reads_the_same_states(records, tmp_path):
    """A composite head (expert score minus penalties) that reads token statistics scores in
    the one pass as its eager forward does: the penalties and statistics read the shared
    states and the same token ids (long texts through the second forward at 512)."""
    torch.manual_seed(4)
    tokenizer = load_model("default")[1]
    model, _ = new_model("default", head_input="composite", penalty_outputs=4,
                         token_stat_ids=stat_token_ids(tokenizer))
    assert model.stat_penalty is not None
    for p in [*model.head.parameters(), *model.penalty.parameters(),
              *model.stat_penalty.parameters()]:
        torch.nn.init.normal_(p, std=0.2)  # outputs that tell texts apart, penalties firing
    folder = save_model(model, tmp_path / "composite")
    texts = pair_texts(records)
    scores, _ = OnePassEncoder(str(folder), dtype="fp32").encode_texts(texts, progress=False)
    reference = eager_scorer(str(folder)).score_texts(texts, progress=False)
    assert np.std(reference) > 1e-3
    # random std-0.2 weights give scores of magnitude ~5: fp32 rounding is relative there
    np.testing.assert_allclose(scores, reference, atol=1e-5, rtol=1e-5)


def test_bf16_keeps_the_ranking_and_reads_long_texts_at_512(records, encoder):
    # bf16 (the default on CPUs with native bf16): a long text's IQS comes from a second bf16
    # forward at 512, not from the ONNX fp32 scorer (which has no bf16)
    bf16 = OnePassEncoder(dtype="bf16")
    texts = pair_texts(records)
    scores, vectors = bf16.encode_texts(texts, progress=False)
    exact, exact_vectors = encoder.encode_texts(texts, progress=False)
    assert bf16._long_scorer is None
    np.testing.assert_allclose(scores, exact, atol=0.03, rtol=0)
    assert np.corrcoef(scores, exact)[0, 1] > 0.999
    assert (np.sum(vectors * exact_vectors, axis=1) > 0.999).all()


def test_two_passes_when_the_models_or_settings_differ(tmp_path):
    assert two_pass_reason(IQSParams(), EmbedParams()) is None
    assert two_pass_reason(IQSParams(precision="fp32"), EmbedParams(dtype="fp32")) is None
    assert "int8" in two_pass_reason(IQSParams(precision="int8"), EmbedParams())
    assert "devices" in two_pass_reason(IQSParams(device="cpu"), EmbedParams(device="cuda"))
    assert "checkpoint" in two_pass_reason(IQSParams(model="x/model.ckpt"), EmbedParams())
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    config = json.loads((resolve_model_dir("default") / CONFIG_FILE).read_text())
    (tuned / CONFIG_FILE).write_text(json.dumps({**config, "trained_encoder_layers": [5]}))
    (tuned / WEIGHTS_FILE).symlink_to(resolve_model_dir("default") / WEIGHTS_FILE)
    assert "fine-tuned" in two_pass_reason(IQSParams(model=str(tuned)), EmbedParams())
    other = tmp_path / "other-encoder"
    load_model("default")[0].encoder.save_pretrained(other)
    reason = two_pass_reason(IQSParams(), EmbedParams(model=str(other)))
    assert reason is not None and "not the embedding model" in reason
    with pytest.raises(ModelError, match="no single encoder pass"):
        OnePassEncoder("default", model=str(other))


def test_a_run_takes_one_pass_by_default_and_two_on_request(tmp_path):
    cfg = {"n1": 3, "n2": 1, "shard_size": 6, "limit": 12, "exact": True}  # fp32: tight checks
    one = run("builtin:sharegpt", tmp_path / "one", RunConfig(**cfg), progress=False,
              report=False)
    two = run("builtin:sharegpt", tmp_path / "two", RunConfig(**cfg, one_pass=False),
              progress=False, report=False)
    records = load_corpus("builtin:sharegpt", limit=12).records
    stages = {d.name for d in (tmp_path / "one" / "stages").iterdir()}
    assert {"encode", "iqs", "embed"} <= stages
    assert not (tmp_path / "two" / "stages" / "encode").exists()
    table, vectors = encode_records(records, progress=False, dtype="fp32")
    scores = pq.read_table(one.scores_path)
    # one batch of 12 here, shards of 6 in the run: other GEMM shapes, float rounding apart
    np.testing.assert_allclose(scores.column("iqs").to_numpy(), table.column("iqs").to_numpy(),
                               atol=1e-6, rtol=0)
    summary = json.loads((one.run_dir / "summary.json").read_text())
    assert summary["runtimes"]["iqs"][0].startswith("one pass")
    # the embedding is the same forward either way: the clusters agree exactly
    one_vectors = np.load(tmp_path / "one" / "stages" / "cluster" / "embeddings.npy")
    two_vectors = np.load(tmp_path / "two" / "stages" / "cluster" / "embeddings.npy")
    np.testing.assert_allclose(one_vectors, vectors, atol=1e-6)
    np.testing.assert_array_equal(one_vectors, two_vectors)
    assert pq.read_table(two.scores_path).column("cluster").equals(scores.column("cluster"))
