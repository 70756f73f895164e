"""`--compat superfiltering|cherry` (car_engine.ifd_compat) against plain batch-1 restatements
of the scripts (car_engine.reference.ifd_compat), on real ShareGPT pairs with the default model,
with its own tokenizer (no BOS) and with one that adds BOS."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import pytest
from tokenizers import processors

from car_engine.config import IFD_COMPAT_SELECTION
from car_engine.corpus import RECORD_SCHEMA
from car_engine.errors import UsageError
from car_engine.ifd import IFDScorer
from car_engine.ifd_compat import (
    CHERRY_NO_ROOM,
    CHERRY_TOO_LONG,
    NO_COND_TOKEN,
    NO_DIRECT_TOKEN,
    scored_span,
)
from car_engine.ifd_prompts import EMPTY_ANSWER, OK
from car_engine.reference.ifd_compat import reference_compat_scores
from car_engine.select import ifd_rule, select_ifd

pytestmark = pytest.mark.slow  # real model

# The reference's outcome for each engine status (what the script does with the record).
STATUS_MAP = {OK: {"ok"}, EMPTY_ANSWER: {"empty"}, NO_COND_TOKEN: {"nan", "skipped"},
              NO_DIRECT_TOKEN: {"nan", "zero", "skipped"}, CHERRY_NO_ROOM: {"skipped"},
              CHERRY_TOO_LONG: {"skipped"}}
MODES = [("superfiltering", "none", 64), ("cherry", "alpaca", 96), ("cherry", "wiz", 64)]


def _record(rid: str, instruction: str, output: str, input: str = "") -> dict:
    return {"id": rid, "position": 0, "instruction": instruction, "input": input,
            "output": output, "turns": None}


@pytest.fixture(scope="module")
def records(sharegpt_records) -> pa.Table:
    """Real pairs: the 9 shortest of the first 500 (Cherry skips every pair whose answer is
    cut) and 3 long ones (cut, or no room), then the edge cases."""
    pool = sharegpt_records.to_pylist()
    short = sorted(pool, key=lambda r: len(r["instruction"]) + len(r["output"]))
    real = [r for r in short if r["output"].strip()][:9] + pool[:3]
    edge = [
        _record("empty", real[0]["instruction"], ""),
        _record("blank", real[1]["instruction"], "  \n"),
        _record("long-prompt", " ".join(r["instruction"] for r in real), real[2]["output"]),
        _record("input", "Translate the text below into French.", "Où est la gare ?",
                input="Where is the train station? I need to catch the 9:15 to Lyon."),
    ]
    rows = [{**r, "position": i} for i, r in enumerate(real + edge)]
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


@pytest.fixture(scope="module")
def base() -> IFDScorer:
    return IFDScorer("default", max_length=64, turns="first")


def _scorer(base: IFDScorer, compat: str, template: str, max_length: int, bos: bool
            ) -> IFDScorer:
    """``base``'s model with a compat preset (and a tokenizer that adds BOS, with ``bos``)."""
    scorer = IFDScorer.__new__(IFDScorer)
    scorer.__dict__.update(base.__dict__, compat=compat, template=template,
                           max_length=max_length)
    if bos:
        tok = copy.deepcopy(base.tokenizer)
        token = tok.convert_ids_to_tokens(tok.bos_token_id)
        tok._tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{token} $A", pair=f"{token} $A $B",
            special_tokens=[(token, tok.bos_token_id)])
        assert tok.encode("Hi")[0] == tok.bos_token_id
        scorer.tokenizer = tok
    return scorer


@pytest.mark.parametrize(("compat", "template", "max_length", "bos"),
                         [(*MODES[0], False), (*MODES[0], True), (*MODES[1], False),
                          (*MODES[1], True), (*MODES[2], False)],
                         ids=["superfiltering", "superfiltering-bos", "cherry-alpaca",
                              "cherry-alpaca-bos", "cherry-wiz"])
def test_compat_matches_the_script_restated_at_batch_1(base, records, compat, template,
                                                       max_length, bos, reference_lm):
    scorer = _scorer(base, compat, template, max_length, bos)
    got = scorer.score(records, progress=False)
    want = reference_compat_scores(reference_lm, scorer.tokenizer, records, compat,
                                   max_length=max_length, prompt=template)
    column = IFD_COMPAT_SELECTION[compat][0]
    ok = 0
    for g, w in zip(got.to_pylist(), want.to_pylist()):
        assert w["status"] in STATUS_MAP[g["status"]], (g["id"], g["status"], w["status"])
        if g["status"] == OK:
            ok += 1
            assert g[column] == pytest.approx(w[column], abs=1e-4), g["id"]
            assert g["loss_cond"] == pytest.approx(w["loss_cond"], abs=1e-4), g["id"]
            assert g["loss_direct"] == pytest.approx(w["loss_direct"], abs=1e-4), g["id"]
        else:
            assert g[column] is None, g["id"]  # a status, never the script's 0 or NaN
    assert ok >= 5, f"only {ok} records scored: the check needs real ones"
    rows = {r["id"]: r for r in got.to_pylist()}
    if compat == "superfiltering":
        assert rows["empty"]["status"] == EMPTY_ANSWER
        assert rows["blank"]["status"] != EMPTY_ANSWER  # the script scores a blank answer
        assert rows["long-prompt"]["status"] in (NO_COND_TOKEN, NO_DIRECT_TOKEN)
    else:
        assert rows["empty"]["status"] == NO_DIRECT_TOKEN
        assert rows["long-prompt"]["status"] == CHERRY_NO_ROOM


def test_superfiltering_never_scores_the_direct_first_token_without_bos(base, records):
    scorer = _scorer(base, "superfiltering", "none", 64, bos=False)
    tok = scorer.tokenizer
    for row, pair in zip(records.to_pylist(), scorer.encode(records)):
        if pair.status != OK:
            continue
        prompt = f"{row['instruction']}\n{row['input']}\n" if row["input"] else \
            f"{row['instruction']}\n"
        n_ins = len(tok.encode(prompt, truncation=True, max_length=64))
        direct = tok.encode(row["output"], truncation=True, max_length=64 - n_ins + 1)
        assert pair.direct_ids == direct and pair.direct_scored == len(direct) - 1


def test_cherry_slice_is_python_slicing():
    # losses[j] belongs to token j + 1; the slice [start - 1 : end - 1] keeps list semantics
    for n, start, end in [(10, 3, 10), (10, 3, 6), (10, 0, 10), (5, 7, 9), (10, 3, 14)]:
        tokens = list(range(1, n))
        assert list(scored_span(n, start, end)) == tokens[start - 1:end - 1]


def test_compat_prompt_choices():
    from car_engine.ifd import resolve_preset

    assert resolve_preset("none", "cherry") == "alpaca"
    assert resolve_preset("wiz", "cherry") == "wiz"
    assert resolve_preset("none", "superfiltering") == "none"
    with pytest.raises(UsageError, match="implies --template alpaca or wiz"):
        resolve_preset("vicuna", "cherry")
    with pytest.raises(UsageError, match="implies --template none"):
        resolve_preset("alpaca", "superfiltering")


def test_cherry_selection_keeps_exactly_one():
    assert ifd_rule(None) == ("ifd_ppl", False)
    assert ifd_rule("superfiltering") == ("ifd_ppl", False)
    assert ifd_rule("cherry") == ("ifd_loss", True)
    ifd = np.array([0.5, 1.0, 1.2, np.nan, 0.9])
    _, keeps_one = ifd_rule("cherry")
    assert sorted(select_ifd(ifd, count=5, keep_equal_one=keeps_one).order) == [0, 1, 4]
    _, keeps_one = ifd_rule("superfiltering")
    assert sorted(select_ifd(ifd, count=5, keep_equal_one=keeps_one).order) == [0, 4]
