"""IFD per turn (SPEC §5) on a tiny random Llama with the default model's tokenizer (SmolLM2,
which has a chat template), held to the per-turn batch-1 reference
(car_engine.reference.ifd_turns) for every template, with truncation in the middle of a turn
and a first turn that does not fit."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree

import pyarrow as pa
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from car_engine.corpus import RECORD_SCHEMA
from car_engine.corpus.conversations import parse
from car_engine.ifd import IFDScorer
from car_engine.ifd_prompts import PROMPT_TOO_LONG
from car_engine.ifd_render import render
from car_engine.ifd_turns import PAST_MAX_LENGTH, TURN_COLUMNS
from car_engine.models.registry import causal_lm_path, load_causal_model
from car_engine.reference.ifd_turns import reference_turns

TEMPLATES = ["none", "alpaca", "vicuna", "chat"]
WORDS = ("the cat sat on a warm mat while rain fell over quiet hills and rivers ran to the sea "
         "école 北京 🚲 naïve").split()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random 2-layer Llama saved with the default model's tokenizer files."""
    tokenizer = AutoTokenizer.from_pretrained(causal_lm_path("default"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _text(seed: int, n: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(n))


def _conversation(seed: int, turns: int, *, system: bool, sharegpt: bool = False) -> list[dict]:
    role, text = ("from", "value") if sharegpt else ("role", "content")
    user, bot = ("human", "gpt") if sharegpt else ("user", "assistant")
    out = [{role: "system", text: _text(seed, 6)}] if system else []
    for t in range(turns):
        out.append({role: user, text: _text(seed + t, 3 + (seed + t) % 5)})
        out.append({role: bot, text: _text(seed + 2 * t, 2 + (seed * t) % 9)})
    return out


def _records(items: list[list[dict]]) -> pa.Table:
    rows = []
    for n, messages in enumerate(items):
        conv = parse(messages)
        first = conv.turns[conv.scored[0]]
        rows.append({"id": f"c{n}", "position": n, "instruction": first.user, "input": "",
                     "output": first.reply, "turns": json.dumps(messages)})
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


def _items() -> list[list[dict]]:
    items = [_conversation(seed, turns, system=system) for seed, turns, system in
             [(0, 1, True), (1, 2, False), (2, 3, True), (3, 8, False), (4, 8, True)]]
    items.append([{"role": "assistant", "content": "welcome back"},  # preamble: history only
                  {"role": "user", "content": "hi"}, {"role": "user", "content": "again"},
                  {"role": "assistant", "content": ""},  # empty reply: history, not scored
                  {"role": "tool", "content": "{}"},  # kept in the item, not scored
                  {"role": "user", "content": "tell me"},
                  {"role": "assistant", "content": "a story about rain"},
                  {"role": "user", "content": "trailing"}])
    return items


@pytest.fixture(scope="module")
def scorers(tiny_model_dir) -> dict[str, IFDScorer]:
    return {}


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("max_length", [512, 40])
def test_every_turn_equals_the_per_turn_batch_1_reference(tiny_model_dir, scorers, template,
                                                          max_length):
    items = _items()
    if max_length < 100:  # a first turn that does not fit (a long first user message)
        items.append([{"role": "user", "content": _text(3, 200)},
                      {"role": "assistant", "content": "ok"}])
    if template not in scorers:
        scorers[template] = IFDScorer(str(tiny_model_dir), template=template, batch_tokens=300)
    scorer = scorers[template]
    scorer.max_length = max_length
    got = scorer.score(_records(items), progress=False).to_pylist()
    cut = 0
    reference = load_causal_model(str(tiny_model_dir))
    for row, messages in zip(got, items):
        want = reference_turns(reference, scorer.tokenizer, parse(messages),
                               template=template, max_length=max_length)
        assert row["turns"] == want["turns"] and row["turns_scored"] == want["turns_scored"]
        assert row["turn_n_tokens"] == want["turn_n_tokens"]
        for key in ("turn_loss_cond", "turn_loss_direct"):
            for g, w in zip(row[key], want[key], strict=True):
                assert (g is None) == (w is None)
                if w is not None:
                    assert abs(g - w) < 1e-4, (row["id"], key)
        if want["loss_cond"] is None:
            assert row["status"] == PROMPT_TOO_LONG and row["loss_cond"] is None
        else:
            assert abs(row["loss_cond"] - want["loss_cond"]) < 1e-4
            assert abs(row["loss_direct"] - want["loss_direct"]) < 1e-4
            assert row["n_tokens"] == sum(n for n in want["turn_n_tokens"] if n)
        cut += row["truncated"]
        if row["turns_scored"] < len([s for s in row["turn_status"] if s != "empty answer"]):
            assert row["truncated"] and PAST_MAX_LENGTH in row["turn_status"]
    if max_length < 100:
        assert cut >= 3  # some cut mid-turn, one whose first turn does not fit
        assert got[-1]["status"] == PROMPT_TOO_LONG


def test_scores_do_not_depend_on_batch_neighbours(tiny_model_dir):
    items = _items()
    scorer = IFDScorer(str(tiny_model_dir), max_length=512, batch_tokens=4096)
    together = scorer.score(_records(items), progress=False).to_pylist()
    for n in (0, 3, 5):
        alone = scorer.score(_records([items[n]]), progress=False).to_pylist()[0]
        for key in ("turn_loss_cond", "turn_loss_direct"):
            for a, b in zip(alone[key], together[n][key]):
                assert (a is None) == (b is None)
                if a is not None:
                    assert abs(a - b) < 1e-5


def test_single_turn_records_score_the_same_under_both_turn_modes(tiny_model_dir,
                                                                 sharegpt_records):
    records = sharegpt_records.slice(0, 12).drop_columns(["turns"]).append_column(
        "turns", pa.nulls(12, pa.string()))
    first = IFDScorer(str(tiny_model_dir), max_length=64, turns="first")
    every = IFDScorer(str(tiny_model_dir), max_length=64, turns="all")
    a = first.score(records, progress=False)
    b = every.score(records, progress=False)
    assert b.drop_columns(TURN_COLUMNS).equals(a)
    assert b["turns"].to_pylist() == [1] * 12


def test_turns_first_scores_the_first_pair_as_before(tiny_model_dir):
    records = _records(_items())
    first = IFDScorer(str(tiny_model_dir), max_length=512, turns="first")
    table = first.score(records, progress=False)
    assert "turns" not in table.column_names  # today's table, exactly
    pairs = records.drop_columns(["turns"]).append_column(
        "turns", pa.nulls(records.num_rows, pa.string()))
    assert first.score(pairs, progress=False).equals(table)


def test_none_renders_as_the_spec_writes_it():
    conv = parse([{"role": "system", "content": "S"}, {"role": "user", "content": "u1"},
                  {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
                  {"role": "assistant", "content": "a2"}])
    assert render("none", conv) == [("S\n", None), ("u1\n", None), ("a1", 0), ("\n", None),
                                    ("u2\n", None), ("a2", 1)]


def test_single_turn_renders_as_its_section_2_prompt(tiny_model_dir):
    from car_engine.ifd_prompts import prompt_text

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    conv = parse([{"role": "user", "content": "q?"}, {"role": "assistant", "content": "a."}])
    for template in [*TEMPLATES, "wiz"]:
        pieces = render(template, conv, tokenizer)
        assert pieces == [(prompt_text(template, "q?", "", tokenizer), None), ("a.", 0)]


def test_conversation_rules_name_each_turn_left_out():
    conv = parse([{"role": "assistant", "content": "hello"}, {"role": "user", "content": "a"},
                  {"role": "user", "content": "b"}, {"role": "assistant", "content": " "},
                  {"role": "function", "content": "{}"}, {"role": "user", "content": "c"},
                  {"role": "assistant", "content": "d"}, {"role": "assistant", "content": "e"},
                  {"role": "user", "content": "f"}])
    assert conv.preamble == "hello" and conv.system is None
    assert [(t.user, t.reply, t.scored) for t in conv.turns] == [("a\nb", " ", False),
                                                                ("c", "d\ne", True)]
    assert conv.notes == ("message 5: role 'function' is kept but not scored",
                          "turn 1: empty reply, not scored",
                          "turn 3: a trailing user message with no reply is not scored")


def test_an_item_with_no_scored_turn_is_rejected_naming_it(tmp_path):
    from car_engine.corpus import load_corpus

    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"conversations": [{"from": "human", "value": "q"},
                                                  {"from": "gpt", "value": ""}]}) + "\n"
                    + json.dumps({"conversations": _conversation(1, 2, system=True,
                                                                 sharegpt=True)}) + "\n")
    corpus = load_corpus(path)
    assert corpus.records.num_rows == 1
    assert "line 1" in corpus.rejected[0].message()
    assert "no scored turn" in corpus.rejected[0].reason  # every reply is empty
    turns = json.loads(corpus.records.column("turns")[0].as_py())
    assert turns[0] == {"role": "system", "content": _text(1, 6)}  # the system message is kept


def test_the_report_shows_turns_and_a_selected_conversations_per_turn_scores(tmp_path,
                                                                             tiny_model_dir):
    import math
    import re

    import pyarrow.parquet as pq

    from car_engine.cli import main

    out = tmp_path / "run"
    assert main(["run", "builtin:sharegpt", "--limit", "12", "--out", str(out), "--method", "ifd",
                 "--ifd-model", str(tiny_model_dir), "--max-length", "128", "--ifd-frac", "0.5",
                 "--quiet", "--no-score-cache"]) == 0
    html = (out / "report.html").read_text()
    assert "src='turns.svg'" in html
    panels = ElementTree.parse(out / "turns.svg").getroot().findall(".//*[@class='chart']")
    assert len(panels) >= 2  # the turn counts, and the per-turn IFD of --method ifd
    assert all(p.findall(".//*[@class='bars']/*") for p in panels)
    scores = {r["id"]: r for r in pq.read_table(out / "scores.parquet").to_pylist()}
    from car_engine.corpus import load_corpus
    from car_engine.corpus.conversations import parse_json

    chats = load_corpus("builtin:sharegpt", limit=12).records.column("turns").to_pylist()
    counts = [len(parse_json(c).scored) for c in chats]  # scored turns, before max_length
    assert re.search(rf"{len(scores)} conversations of {len(scores)} records; scored turns "
                     rf"per conversation: median \d+, p90 \d+, max {max(counts)}\.", html)
    # the example is a selected conversation, and its table holds that record's per-turn IFD
    shown = re.search(r"Selected conversation (\S+): per-turn scores", html).group(1)
    row = scores[shown]
    assert row["selected"]
    table = html[html.index(f"Selected conversation {shown}"):].split("</table>")[0]
    cells = re.findall(r"<tr><td>(\d+)</td><td>.*?</td><td>([\d.]*)</td>", table, re.S)
    want = [f"{math.exp(c - d):.4f}" if c is not None else ""
            for c, d in zip(row["turn_loss_cond"], row["turn_loss_direct"])]
    assert [v for _, v in cells] == want and len(cells) == len(want) >= 2
