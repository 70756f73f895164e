"""IFD scorer on real ShareGPT pairs with the real default model (SmolLM2-135M-Instruct),
held to the plain batch-1 Hugging Face two-forward reference on the same token boundaries."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from car_engine import cli
from car_engine.corpus import RECORD_SCHEMA
from car_engine.errors import CorpusError, ModelError, UsageError
from car_engine.ifd import IFDScorer, score_ifd
from car_engine.ifd_pairs import IFD_COLUMNS
from car_engine.ifd_prompts import EMPTY_ANSWER, OK, PROMPT_TOO_LONG, prompt_text
from car_engine.ifd_turns import TURN_COLUMNS
from car_engine.reference.ifd import reference_scores

pytestmark = pytest.mark.slow  # real model: a few seconds per test

MAX_LENGTH = 64
SCORES = ["loss_cond", "loss_direct", "ppl_cond", "ppl_direct", "ifd_ppl", "ifd_loss"]
# Short real pairs from the first 500 ShareGPT records; 393 is non-ASCII, 1 has a long answer.
SHORT = [8, 55, 393, 1]


def _record(rid: str, instruction: str, output: str, input: str = "") -> dict:
    return {"id": rid, "position": 0, "instruction": instruction, "input": input,
            "output": output, "turns": None}


@pytest.fixture(scope="module")
def records(sharegpt_records) -> pa.Table:
    """Real short pairs plus the edge cases, each built from real text."""
    real = sharegpt_records.take(SHORT).to_pylist()
    long_prompt = " ".join(r["instruction"] for r in sharegpt_records.slice(0, 20).to_pylist())
    edge = [
        _record("empty-answer", real[0]["instruction"], ""),
        _record("blank-answer", real[1]["instruction"], "  \n"),
        _record("prompt-too-long", long_prompt, real[2]["output"]),
        _record("with-input", "Translate the text below into French.", "Où est la gare ?",
                input="Where is the train station? I need to catch the 9:15 to Lyon."),
        _record("non-ascii", "用一句话介绍北京。", "北京是中国的首都，历史悠久 🏯。"),
    ]
    rows = [{**r, "position": i} for i, r in enumerate(real + edge)]
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


@pytest.fixture(scope="module")
def scorer() -> IFDScorer:
    return IFDScorer("default", max_length=MAX_LENGTH, turns="first")


@pytest.fixture(scope="module")
def scored(scorer, records) -> pa.Table:
    return scorer.score(records, progress=False)


def _by_id(table: pa.Table) -> dict[str, dict]:
    return {row["id"]: row for row in table.to_pylist()}


def assert_scores_close(got: pa.Table, want: pa.Table, atol: float) -> None:
    assert got["id"].to_pylist() == want["id"].to_pylist()
    assert got["status"].to_pylist() == want["status"].to_pylist()
    for g, w in zip(got.to_pylist(), want.to_pylist()):
        for col in SCORES:
            if w[col] is None:
                assert g[col] is None, (g["id"], col)
            else:
                assert g[col] == pytest.approx(w[col], abs=atol, rel=atol), (g["id"], col)


@pytest.mark.parametrize("packed", [True, False])
def test_fp32_matches_batch1_hf_reference(scorer, records, scored, packed, reference_lm):
    # packed: the CPU default (car_engine.models.llama); not packed: the padded transformers
    # forward that GPUs and other architectures run
    assert scorer.packed is not None and scorer.model is None  # read without transformers
    if not packed:
        scored = IFDScorer("default", max_length=MAX_LENGTH, pack=False, turns="first").score(
            records, progress=False)
    want = reference_scores(reference_lm, records, scorer.encode(records))
    assert scored.column_names == IFD_COLUMNS
    assert_scores_close(scored, want, 1e-4)
    assert scored["n_tokens"].to_pylist() == want["n_tokens"].to_pylist()
    assert scored["truncated"].to_pylist() == want["truncated"].to_pylist()


def test_statuses_and_edge_cases(scored):
    rows = _by_id(scored)
    assert rows["empty-answer"]["status"] == EMPTY_ANSWER
    assert rows["blank-answer"]["status"] == EMPTY_ANSWER
    assert rows["prompt-too-long"]["status"] == PROMPT_TOO_LONG
    for rid in ("empty-answer", "blank-answer", "prompt-too-long"):
        assert all(rows[rid][c] is None for c in SCORES), rid  # null, never 0 or NaN
        assert rows[rid]["n_tokens"] == 0
    for rid in ("with-input", "non-ascii", "kXfdkAu_0"):  # kXfdkAu_0: real, non-ASCII
        assert rows[rid]["status"] == OK
    ok = [r for r in rows.values() if r["status"] == OK]
    assert len(ok) == len(SHORT) + 2
    for r in ok:
        assert all(math.isfinite(r[c]) for c in SCORES), r["id"]
        assert r["ifd_ppl"] == pytest.approx(r["ppl_cond"] / r["ppl_direct"])
        assert r["ifd_loss"] == pytest.approx(r["loss_cond"] / r["loss_direct"])
        assert r["ppl_cond"] == pytest.approx(math.exp(r["loss_cond"]))
    truncated = [r for r in ok if r["truncated"]]
    assert truncated, "the long real answer must be cut at max_length"


def test_token_boundary_is_exact_and_truncation_cuts_the_tail(scorer, records):
    tok = scorer.tokenizer
    bos = tok.bos_token_id
    for row, pair in zip(records.to_pylist(), scorer.encode(records)):
        if pair.status != OK:
            continue
        prompt = tok(prompt_text("none", row["instruction"], row["input"]),
                     add_special_tokens=False)["input_ids"]
        answer = tok(row["output"], add_special_tokens=False)["input_ids"]
        keep = answer[: MAX_LENGTH - 1 - len(prompt)]
        assert pair.cond_ids == [bos, *prompt, *keep]
        assert pair.direct_ids == [bos, *keep]
        assert pair.n_answer == len(keep) and pair.truncated == (len(keep) < len(answer))
        assert len(pair.cond_ids) <= MAX_LENGTH


def test_prompt_templates():
    assert prompt_text("none", "Do X.", "") == "Do X.\n"
    assert prompt_text("none", "Do X.", "with Y") == "Do X.\nwith Y\n"
    assert prompt_text("alpaca", "Do X.", "").endswith("### Instruction:\nDo X.\n\n### Response:")
    assert "### Input:\nwith Y\n\n### Response:" in prompt_text("alpaca", "Do X.", "with Y")
    assert prompt_text("vicuna", "Do X.", "").endswith("USER: Do X. ASSISTANT:")
    with pytest.raises(UsageError, match="unknown template"):
        prompt_text("mystery", "Do X.", "")


def test_chat_template_does_not_double_bos(scorer, records):
    scorer_chat = IFDScorer("default", template="chat", max_length=MAX_LENGTH, turns="first")
    pair = scorer_chat.encode(records.slice(0, 1))[0]
    bos = scorer.tokenizer.bos_token_id
    assert pair.cond_ids[0] == bos and pair.cond_ids[1] != bos


def test_compat_presets_follow_the_scripts(records):
    # The token ids each script builds (tests/test_ifd_compat.py holds the scores to them).
    subset = records.slice(0, 1)
    superfiltering = IFDScorer("default", compat="superfiltering", max_length=48)
    assert (superfiltering.template, superfiltering.compat) == ("none", "superfiltering")
    cherry = IFDScorer("default", compat="cherry", max_length=96)  # alpaca prompt: ~60 tokens
    tok = cherry.tokenizer
    row = subset.to_pylist()[0]
    pair = superfiltering.encode(subset)[0]
    assert pair.cond_ids == tok.encode(row["instruction"] + "\n" + row["output"],
                                       truncation=True, max_length=48)
    pair = cherry.encode(subset)[0]
    header = tok.encode("### Response:")
    assert pair.direct_ids[:len(header)] == header
    assert tok.decode(pair.cond_ids[:len(pair.cond_ids) - pair.n_answer]).endswith(
        "### Response:")
    with pytest.raises(UsageError, match="implies --template alpaca or wiz"):
        IFDScorer("default", compat="cherry", template="vicuna")


def test_scores_do_not_depend_on_batch_composition(scorer, records, scored):
    one_at_a_time = IFDScorer.__new__(IFDScorer)
    one_at_a_time.__dict__.update(scorer.__dict__, batch_tokens=1)  # same model, batch of 1
    alone = one_at_a_time.score(records.slice(0, 3), progress=False)
    assert_scores_close(alone, scored.slice(0, 3), 1e-5)
    mixed = scorer.score(records.take([7, 2, 0]), progress=False)
    assert_scores_close(mixed, scored.take([7, 2, 0]), 1e-5)


def test_bf16_stays_close_to_fp32(records, scored):
    bf16 = IFDScorer("default", dtype="bf16", max_length=MAX_LENGTH, turns="first").score(records,
                                                                          progress=False)
    assert bf16["status"].to_pylist() == scored["status"].to_pylist()
    for g, w in zip(bf16.to_pylist(), scored.to_pylist()):
        if w["status"] == OK:
            assert g["loss_cond"] == pytest.approx(w["loss_cond"], abs=0.1)
            assert g["loss_direct"] == pytest.approx(w["loss_direct"], abs=0.1)


def test_score_ifd_from_a_corpus_path_and_the_cli(tmp_path, records):
    corpus = tmp_path / "pairs.jsonl"
    rows = records.slice(0, 3).to_pylist()
    corpus.write_text("".join(json.dumps({"id": r["id"], "instruction": r["instruction"],
                                          "output": r["output"]}) + "\n" for r in rows))
    table = score_ifd(str(corpus), max_length=32, progress=False)
    assert table["id"].to_pylist() == [r["id"] for r in rows]
    out = tmp_path / "scores.parquet"
    code = cli.main(["ifd", str(corpus), "--out", str(out), "--max-length", "32",
                     "--limit", "2", "--no-progress"])
    assert code == 0
    written = pq.read_table(out)
    assert written.column_names == IFD_COLUMNS + TURN_COLUMNS  # --turns all, the default
    assert written["id"].to_pylist() == [r["id"] for r in rows[:2]]
    assert written["loss_cond"].to_pylist() == pytest.approx(table["loss_cond"].to_pylist()[:2],
                                                             abs=1e-5)
    padded = tmp_path / "padded.jsonl"  # --no-pack: the transformers forward, same scores
    assert cli.main(["ifd", str(corpus), "--out", str(padded), "--max-length", "32",
                     "--no-pack", "--no-progress"]) == 0
    rows_padded = [json.loads(line) for line in padded.read_text().splitlines()]
    assert [r["loss_cond"] for r in rows_padded] == pytest.approx(
        table["loss_cond"].to_pylist(), abs=1e-5)
    assert cli.main(["ifd", str(corpus), "--out", str(tmp_path / "x.csv")]) == 2
    assert cli.main(["ifd", str(corpus), "--out", str(out), "--model", str(tmp_path)]) == 5


def test_bad_records_and_arguments_give_clear_errors(scorer, records):
    bad = records.slice(0, 2).to_pylist()
    bad[1]["output"] = None
    with pytest.raises(CorpusError, match=f"record '{bad[1]['id']}': 'output' is null"):
        scorer.score(pa.Table.from_pylist(bad, schema=RECORD_SCHEMA), progress=False)
    with pytest.raises(CorpusError, match="no 'output' column"):
        scorer.score(records.drop_columns(["output"]), progress=False)
    with pytest.raises(UsageError, match="dtype"):
        IFDScorer("default", dtype="int8")
    with pytest.raises(ModelError, match="not a local Hugging Face model folder"):
        IFDScorer("/nonexistent/model")
