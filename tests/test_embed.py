"""Embeddings: equal to sentence-transformers' own encode, in input order whatever the batching."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from car_engine import embed as embed_module
from car_engine.cli import main
from car_engine.corpus import pair_texts
from car_engine.embed import Embedder, embed_records, ids_path, read_ids
from car_engine.errors import ModelError, UsageError
from car_engine.models.registry import minilm_path
from car_engine.reference.embed import reference_embed, reference_encoder


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(batch_size=8, dtype="fp32")


@pytest.fixture(scope="module")
def short_embedder() -> Embedder:
    """The same model cut to 48 tokens: cheap, and still mixed lengths (the order tests)."""
    return Embedder(batch_size=8, max_seq_length=48, dtype="fp32")


@pytest.fixture(scope="module")
def instructions(sharegpt_records: pa.Table) -> list[str]:
    """30 real instructions: short and long, so batches mix lengths."""
    return sharegpt_records.column("instruction").to_pylist()[:30]


@pytest.mark.slow
def test_matches_sentence_transformers_encode(embedder, sharegpt_records):
    texts = pair_texts(sharegpt_records.slice(0, 12)) + ["short one", "  padded text \n"]
    expected = reference_embed(texts, reference_encoder(minilm_path()))
    got = embedder.embed(texts, progress=False)
    assert got.dtype == np.float32 and got.shape == (len(texts), 384)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_input_order_whatever_the_batching(short_embedder, instructions, monkeypatch):
    embedder = short_embedder
    baseline = embedder.embed(instructions, progress=False)
    permutation = np.random.default_rng(0).permutation(len(instructions))
    shuffled = [instructions[i] for i in permutation]
    monkeypatch.setattr(embed_module, "CHUNK_TEXTS", 7)  # several length-sorted chunks
    for batch_size in (1, 5, 64):
        monkeypatch.setattr(embedder, "batch_size", batch_size)
        np.testing.assert_allclose(embedder.embed(shuffled, progress=False),
                                   baseline[permutation], atol=1e-5)


def test_bf16_keeps_cosine_with_fp32(embedder, sharegpt_records):
    texts = pair_texts(sharegpt_records.slice(100, 8))
    fp32 = embedder.embed(texts, progress=False)
    bf16 = Embedder(dtype="bf16").embed(texts, progress=False)
    assert bf16.dtype == np.float32
    assert (fp32 * bf16).sum(axis=1).min() >= 0.999


def test_compiled_bf16_keeps_cosine_and_compiles_once(embedder, sharegpt_records):
    import torch._dynamo

    texts = pair_texts(sharegpt_records.slice(100, 7))
    fp32 = embedder.embed(texts, progress=False)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = Embedder(dtype="bf16", batch_size=3, compile=True)  # batches of 3, 3 and 1
    vectors = compiled.embed(texts, progress=False)
    assert (fp32 * vectors).sum(axis=1).min() >= 0.999
    compiled.embed(["a short one", "and another, a little longer"], progress=False)
    # one graph for every batch and sequence length: a recompile would cost ~15 s each time
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_embed_records_writes_npy_and_ids(sharegpt_records, tmp_path, embedder):
    records = sharegpt_records.slice(200, 6)
    out = tmp_path / "emb.npy"
    # turns first: each record's pair text (the default, all, pools a conversation's turns:
    # test_turn_scores)
    vectors = embed_records(records, out, batch_size=4, progress=False, turns="first")
    assert isinstance(vectors, np.memmap) and vectors.shape == (6, 384)
    assert read_ids(out) == records.column("id").to_pylist()
    np.testing.assert_allclose(np.load(out), embedder.embed(pair_texts(records), progress=False),
                               atol=1e-5)
    in_memory = embed_records(records.slice(0, 2), progress=False, max_seq_length=32)
    assert in_memory.shape == (2, 384) and not isinstance(in_memory, np.memmap)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.ids.parquet", "emb.npy"]


def test_empty_input(embedder, sharegpt_records, tmp_path):
    assert embedder.embed([], progress=False).shape == (0, 384)
    out = tmp_path / "empty.npy"
    assert embed_records(sharegpt_records.slice(0, 0), out, progress=False).shape == (0, 384)
    assert np.load(out).shape == (0, 384) and read_ids(out) == []


def test_bad_inputs_name_the_problem(embedder, tmp_path, sharegpt_records):
    with pytest.raises(ValueError, match="text 1: expected a string"):
        embedder.embed(["fine", None], progress=False)
    with pytest.raises(UsageError, match="dtype"):
        Embedder(dtype="int4")
    with pytest.raises(UsageError, match="fp16 is for GPUs"):
        Embedder(dtype="fp16", device="cpu")
    with pytest.raises(UsageError, match="batch size"):
        Embedder(batch_size=0)
    with pytest.raises(ModelError, match="not a model folder"):
        Embedder(str(tmp_path / "missing"))
    with pytest.raises(UsageError, match=".npy"):
        embed_records(sharegpt_records.slice(0, 2), tmp_path / "emb.txt", progress=False)


def test_cli_embed(tmp_path, capsys):
    out = tmp_path / "e.npy"
    assert main(["embed", "builtin:sharegpt", "--limit", "4", "--out", str(out),
                 "--dtype", "bf16"]) == 0
    assert np.load(out).shape == (4, 384)
    assert len(read_ids(out)) == 4 and ids_path(out).is_file()
    assert "wrote 4 x 384 vectors" in capsys.readouterr().out
    assert main(["embed", "builtin:sharegpt", "--out", str(out), "--model",
                 str(tmp_path / "nope")]) == 5


def test_the_light_tokenizer_gives_transformers_ids(sharegpt_records):
    # The packed path tokenizes with tokenizer.json through the tokenizers library alone.
    from transformers import AutoTokenizer

    from car_engine.batching import tokenize
    from car_engine.corpus import pair_texts
    from car_engine.embed import transformer_folder
    from car_engine.tokenizer import JsonTokenizer, load_tokenizer

    folder = transformer_folder("default")
    light, full = load_tokenizer(folder), AutoTokenizer.from_pretrained(str(folder))
    assert isinstance(light, JsonTokenizer) and light.pad_token_id == full.pad_token_id
    texts = pair_texts(sharegpt_records) + ["", " ", "Café naïve RÉSUMÉ", "中文字符 测试",
                                            "a\u200bb\tc\n\nd", "emoji 😀", "x" * 3000]
    for length in (8, 256, 512):
        assert tokenize(light, texts, length) == tokenize(full, texts, length)
    assert light(texts[:3])["input_ids"] == full(texts[:3])["input_ids"]  # untruncated
    assert Embedder(dtype="fp32").tokenizer.__class__ is JsonTokenizer
    assert Embedder(pack=False, dtype="fp32").tokenizer.__class__ is not JsonTokenizer
