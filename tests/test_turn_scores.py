"""IQS and embeddings per turn (SPEC §5) with the real default encoder and IQS model, on real
ShareGPT conversations: every scored turn is a pair text of its own (no system message), the
conversation's IQS aggregates them, its embedding is their renormalised mean."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from car_engine.config import EmbedParams, IQSParams
from car_engine.corpus import load_corpus, pair_text
from car_engine.corpus.conversations import parse_json
from car_engine.turn_scores import turn_texts
from car_engine.workers import EmbedWorker, IQSWorker


@pytest.fixture(scope="module")
def records() -> pa.Table:
    """Real multi-turn ShareGPT records (one given a system message), and a single-turn one."""
    table = load_corpus("builtin:sharegpt", limit=400).records

    def short(chat: str | None) -> bool:  # a few short turns keep the encoders quick
        turns = parse_json(chat).turns if chat else ()
        return 1 < len(turns) < 5 and all(len(t.user) + len(t.reply) < 600 for t in turns)

    rows = [r for r in table.to_pylist() if short(r["turns"])][:3]
    assert len(rows) == 3
    messages = json.loads(rows[0]["turns"])
    rows[0]["turns"] = json.dumps([{"role": "system", "content": "Be brief."}, *messages])
    single = {**table.slice(0, 1).to_pylist()[0], "id": "single", "turns": None}
    return pa.Table.from_pylist([*rows, single], schema=table.schema)


def test_turn_texts_hold_each_scored_turn_and_no_system_message(records):
    texts, slots = turn_texts(records, "all")
    first = parse_json(records.column("turns")[0].as_py())
    assert first.system == "Be brief."
    want = [pair_text(t.user, "", t.reply) for t in first.turns if t.scored]
    assert [texts[s] for s in slots[0] if s is not None] == want
    assert not any("Be brief." in t for t in texts)
    assert texts[slots[-1][0]] == pair_text(*(records.slice(3, 1).to_pylist()[0][c]
                                              for c in ("instruction", "input", "output")))
    assert turn_texts(records, "first") == (_pairs(records), [[i] for i in range(4)])


def _pairs(records: pa.Table) -> list[str]:
    return [pair_text(r["instruction"], r["input"], r["output"]) for r in records.to_pylist()]


def test_iqs_aggregates_the_turns(records):
    worker = IQSWorker(IQSParams())
    texts, slots = turn_texts(records, "all")
    scores = worker.scorer.score_texts(texts, progress=False)
    for how in ("mean", "min", "first"):
        worker.aggregate = how
        table = worker(records)
        for row, slot in zip(table.to_pylist(), slots):
            turn = [float(scores[s]) for s in slot if s is not None]
            assert row["turn_iqs"] == pytest.approx(turn, abs=1e-6)
            want = {"mean": np.mean(turn), "min": min(turn), "first": turn[0]}[how]
            assert row["iqs"] == pytest.approx(want, abs=1e-6)
    worker.turns = "first"
    first = worker(records)
    assert first.column_names == ["id", "iqs"]
    assert first["iqs"][3].as_py() == pytest.approx(table["iqs"][3].as_py(), abs=1e-6)


def test_embedding_is_the_renormalised_mean_of_the_turns(records):
    worker = EmbedWorker(EmbedParams())
    vectors = worker(records)
    texts, slots = turn_texts(records, "all")
    each = worker.embedder.embed(texts, progress=False)
    for vector, slot in zip(vectors, slots):
        mean = each[[s for s in slot if s is not None]].mean(axis=0)
        np.testing.assert_allclose(vector, mean / np.linalg.norm(mean), atol=1e-5)
    worker.turns = "first"
    first = worker(records)
    np.testing.assert_allclose(first[3], vectors[3], atol=1e-6)  # a single turn: the same
    assert not np.allclose(first[0], vectors[0], atol=1e-3)


def test_the_api_and_the_subcommands_score_turns_as_the_run_does(records, tmp_path):
    import pyarrow.parquet as pq

    from car_engine import embed_records, score_iqs
    from car_engine.cli import main
    from car_engine.embed import read_ids

    for turns in ("all", "first"):
        want_iqs = IQSWorker(IQSParams(turns=turns, turn_aggregate="min"))(records)
        got = score_iqs(records, turns=turns, turn_aggregate="min", progress=False)
        assert got.column_names == want_iqs.column_names
        np.testing.assert_allclose(got["iqs"].to_numpy(), want_iqs["iqs"].to_numpy(), atol=1e-6)
        want_vectors = EmbedWorker(EmbedParams(turns=turns))(records)
        np.testing.assert_allclose(embed_records(records, turns=turns, progress=False),
                                   want_vectors, atol=1e-6)
    # the same through the command line, on the conversations as a messages file
    corpus = tmp_path / "chats.jsonl"
    corpus.write_text("".join(json.dumps({"id": r["id"], "messages": json.loads(r["turns"])})
                              + "\n" for r in records.slice(0, 3).to_pylist()))
    conversations = load_corpus(corpus).records
    for turns in ("all", "first"):
        out = tmp_path / f"iqs-{turns}.parquet"
        assert main(["iqs", "score", str(corpus), "--out", str(out), "--turns", turns]) == 0
        scores = pq.read_table(out)
        want_iqs = IQSWorker(IQSParams(turns=turns))(conversations)
        assert scores.column_names == want_iqs.column_names
        np.testing.assert_allclose(scores["iqs"].to_numpy(), want_iqs["iqs"].to_numpy(),
                                   atol=1e-6)
        npy = tmp_path / f"emb-{turns}.npy"
        assert main(["embed", str(corpus), "--out", str(npy), "--turns", turns]) == 0
        np.testing.assert_allclose(np.load(npy), EmbedWorker(EmbedParams(turns=turns))(
            conversations), atol=1e-6)
        assert read_ids(npy) == conversations["id"].to_pylist()
    assert not np.allclose(np.load(tmp_path / "emb-all.npy"), np.load(tmp_path / "emb-first.npy"))
