"""Field names (--fields, Dolly, prompt/completion, question/answer) and --output-format's
conversions, each tested both ways (SPEC §6)."""

from __future__ import annotations

import json

import pytest
from corpus_files import write_items

from car_engine.cli import main
from car_engine.corpus import load_corpus
from car_engine.corpus.convert import ConversionError, convert
from car_engine.errors import UsageError
from car_engine.field_spec import parse_fields

DOLLY = {"instruction": "Who wrote Hamlet?", "context": "A play of 1600.",
         "response": "Shakespeare.", "category": "open_qa"}
PROMPT = {"prompt": "Say hi.", "completion": "Hi."}
QUESTION = {"question": "2+2?", "answer": "4"}
SHAREGPT = {"id": "s1", "conversations": [
    {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi?"},
    {"from": "gpt", "value": "Hello.", "weight": 0}, {"from": "human", "value": "Bye?"},
    {"from": "gpt", "value": "Bye."}], "lang": "en"}
MESSAGES = {"messages": [{"role": "user", "content": "Weather?"},
                         {"role": "assistant", "content": "Let me look."},
                         {"role": "tool", "content": "sunny", "name": "weather"},
                         {"role": "assistant", "content": "Sunny."}], "source": "x"}
ALPACA = {"instruction": "Name a colour.", "input": "", "output": "Blue.", "n": 1}


def test_known_schemas_are_recognised_and_said_once(tmp_path, capsys):
    items = [DOLLY, DOLLY | {"context": ""}, PROMPT, QUESTION, ALPACA, DOLLY | {"id": "d"}]
    corpus = load_corpus(write_items(tmp_path, items, "jsonl"))
    assert corpus.rejected == []
    rows = corpus.records.to_pylist()
    assert [(r["instruction"], r["input"], r["output"]) for r in rows] == [
        ("Who wrote Hamlet?", "A play of 1600.", "Shakespeare."),
        ("Who wrote Hamlet?", "", "Shakespeare."), ("Say hi.", "", "Hi."), ("2+2?", "", "4"),
        ("Name a colour.", "", "Blue."), ("Who wrote Hamlet?", "A play of 1600.",
                                          "Shakespeare.")]
    said = capsys.readouterr().err.splitlines()
    assert said == [
        "car-engine: reading single-turn items as dolly (instruction=instruction, "
        "input=context, output=response)",
        "car-engine: reading single-turn items as prompt/completion (instruction=prompt, "
        "output=completion)",
        "car-engine: reading single-turn items as question/answer (instruction=question, "
        "output=answer)"]


def test_fields_mapping_and_a_missing_key_named(tmp_path):
    items = [{"q": "Why?", "ctx": "Because.", "a": "So."}, {"q": "How?", "a": "Thus."},
             {"q": "Where?", "ctx": "", "answer": "Here."}]
    path = write_items(tmp_path, items, "jsonl")
    corpus = load_corpus(path, fields="instruction=q,input=ctx,output=a")
    assert corpus.records["input"].to_pylist() == ["Because."]
    reasons = [(r.location, r.reason) for r in corpus.rejected]
    assert reasons == [("line 2", "missing field 'ctx' (--fields input=ctx)"),
                       ("line 3", "missing field 'a' (--fields output=a)")]
    assert len(load_corpus(path, fields="instruction=q, output=a")) == 2  # no input named


@pytest.mark.parametrize("spec,named", [
    ("instruction=q", "output"), ("instruction=q,output", "output"),
    ("prompt=q,output=a", "prompt"), ("instruction=q,output=a,output=b", "output"),
    ("", "")])
def test_malformed_fields_is_a_usage_error_naming_the_part(spec, named):
    with pytest.raises(UsageError, match=f"--fields {spec}: .*{named}"):
        parse_fields(spec)


def test_fields_on_the_command_line(tmp_path, capsys):
    path = write_items(tmp_path, [{"q": "Why?", "a": "So."}, {"q": "How?"}], "jsonl")
    rejected = tmp_path / "rejected.jsonl"
    assert main(["validate", str(path), "--fields", "instruction=q,output=a",
                 "--rejected", str(rejected)]) == 0
    (row,) = [json.loads(x) for x in rejected.read_text().splitlines()]
    assert row["location"] == "line 2" and row["reason"] == \
        "missing field 'a' (--fields output=a)"
    assert main(["validate", str(path), "--fields", "instruction=q,answer=a"]) == 2
    assert "'answer=a' must be FIELD=KEY" in capsys.readouterr().err
    out = str(tmp_path / "run")
    assert main(["run", str(path), "--out", out, "--fields", "output=a"]) == 2
    assert "names no key for 'instruction'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(path), "--out", out, "--output-format", "csv"])
    assert exit_.value.code == 2 and "invalid choice: 'csv'" in capsys.readouterr().err


@pytest.mark.parametrize("item", [SHAREGPT, MESSAGES])
def test_conversations_convert_both_ways(item):
    there = convert(item, "messages" if "conversations" in item else "sharegpt")
    back = convert(there, "sharegpt" if "conversations" in item else "messages")
    assert back == item and list(back) == list(item)  # the keys in their places too
    if item is SHAREGPT:
        assert there["messages"][2] == {"role": "assistant", "content": "Hello.", "weight": 0}
        assert there["id"] == "s1" and there["lang"] == "en"
    else:
        assert there["conversations"][2] == {"from": "tool", "value": "sunny",
                                             "name": "weather"}


@pytest.mark.parametrize("item", [ALPACA, ALPACA | {"system": "Be kind."}])
@pytest.mark.parametrize("target", ["sharegpt", "messages"])
def test_single_turn_items_convert_both_ways(item, target):
    there = convert(item, target)
    turns = there["conversations" if target == "sharegpt" else "messages"]
    assert len(turns) == 2 + ("system" in item)
    assert there["n"] == 1
    assert convert(there, "alpaca") == item


def test_what_an_alpaca_target_cannot_hold_is_refused():
    with pytest.raises(ConversionError, match="4 messages"):
        convert(SHAREGPT, "alpaca")
    with pytest.raises(ConversionError, match="'tool' message"):
        convert(MESSAGES, "alpaca")
    one = {"conversations": SHAREGPT["conversations"][:3]}
    with pytest.raises(ConversionError, match="keys besides role and content"):
        convert(one, "alpaca")  # the turn's 'weight' would be lost
    ok = {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Yo."}]}
    assert convert(ok, "alpaca") == {"instruction": "Hi?", "input": "", "output": "Yo."}


def test_other_field_names_convert():
    assert convert(DOLLY, "alpaca") == {"instruction": "Who wrote Hamlet?",
                                        "input": "A play of 1600.", "output": "Shakespeare.",
                                        "category": "open_qa"}
    assert convert(DOLLY, "original") is DOLLY
    # A conversation holds no input of its own: it follows the instruction after a blank line.
    assert convert(DOLLY, "messages")["messages"][0] == {
        "role": "user", "content": "Who wrote Hamlet?\n\nA play of 1600."}
    assert convert(PROMPT, "sharegpt") == {"conversations": [
        {"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."}]}
    item = {"q": "Why?", "a": "So.", "k": 2}
    assert convert(item, "alpaca", "instruction=q,output=a") == {
        "instruction": "Why?", "input": "", "output": "So.", "k": 2}
