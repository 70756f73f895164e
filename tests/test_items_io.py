"""Items given back as they came (SPEC §6): selected.jsonl rows read back from the source by
position for every input format, with the engine's fields under ``car_engine``; folders,
globs and save_to_disk folders as one corpus. No model loads: the picks are made by hand."""

from __future__ import annotations

import copy
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from corpus_files import FORMATS, write_items

from car_engine.config import RunConfig
from car_engine.corpus import items_at, load_corpus, source_files
from car_engine.corpus.inputs import input_file
from car_engine.errors import CorpusError, UsageError
from car_engine.pipeline.selected import ENGINE_KEY, selected_items

# Shapes a user's file mixes: extra fields, nesting, an int id, a system message, extra keys
# in a turn, a tool message, an item that already carries a car_engine key (fed back in).
ITEMS = [
    {"id": 7, "instruction": "Name a colour.", "input": "", "output": "Blue.",
     "meta": {"source": "hand", "tags": ["a", "b"]}, "score": 0.5},
    {"conversations": [{"from": "system", "value": "Be brief."},
                       {"from": "human", "value": "Hi?"},
                       {"from": "gpt", "value": "Hello.", "weight": 1},
                       {"from": "human", "value": "And?"},
                       {"from": "gpt", "value": "Bye."}], "lang": "en"},
    {"messages": [{"role": "user", "content": "Weather?"},
                  {"role": "assistant", "content": "Let me look."},
                  {"role": "tool", "content": "sunny"},
                  {"role": "assistant", "content": "Sunny."}]},
    {"instruction": "Add 2 and 2.", "input": "Show the sum.", "output": "4",
     "car_engine": {"id": "old"}},
    {"instruction": "Say yes.", "output": "Yes."},
]


def give_back(source, order=None, **cfg) -> list[dict]:
    """selected.jsonl's rows for the records at ``order`` (default: all, last first)."""
    records = load_corpus(source).records
    order = list(range(records.num_rows))[::-1] if order is None else order
    rows = records.take(pa.array(order, pa.int64()))
    picked = (rows.select(["id", "position"])
              .append_column("iqs", pa.array([float(n) for n in order]))
              .append_column("cluster", pa.array([n % 2 for n in order], pa.int64()))
              .append_column("selected_by", pa.array(["n1"] * len(order)))
              .append_column("why", pa.array(["selected: top n1 by score"] * len(order))))
    return selected_items(str(source), picked, rows.select(["instruction", "input", "output"]),
                          RunConfig(**cfg))


def without_engine(item: dict) -> dict:
    return {k: v for k, v in item.items() if k != ENGINE_KEY}


@pytest.mark.parametrize("fmt,gz", FORMATS)
def test_every_format_round_trips(tmp_path, fmt, gz):
    path = write_items(tmp_path, ITEMS, fmt, gz=gz)
    # Parquet holds one schema for all rows: an item lacking a column reads back with null
    # there, so "as it came" is the row as the file holds it.
    given = (pq.read_table(gzip.open(path) if gz else path).to_pylist()
             if fmt == "parquet" else copy.deepcopy(ITEMS))
    for row in given:
        row.pop(ENGINE_KEY, None)
    got = give_back(path)
    assert [without_engine(r) for r in got] == given[::-1]  # in final order, unchanged
    engine = [r[ENGINE_KEY] for r in got]
    assert [e["position"] for e in engine] == [4, 3, 2, 1, 0]
    assert engine[-1]["id"] == "7" and engine[0]["id"] == "4"
    assert engine[0] == {"id": "4", "position": 4, "scores": {"iqs": 4.0}, "cluster": 0,
                         "selected_by": "n1", "why": "selected: top n1 by score"}


def test_a_few_picks_decode_only_those_items(tmp_path):
    # Line 3 is not JSON at all: reading back positions 0 and 3 never parses it.
    path = tmp_path / "c.jsonl"
    lines = [json.dumps(ITEMS[0]), "", json.dumps(ITEMS[4]), "{not json", json.dumps(ITEMS[3])]
    path.write_text("\n".join(lines) + "\n")
    got = items_at(path, [3, 0])
    assert got == {0: ITEMS[0], 3: ITEMS[3]}  # blank lines are no position
    assert [r[ENGINE_KEY]["position"] for r in give_back(path, [2, 0])] == [3, 0]


def test_a_corpus_changed_under_the_run_is_refused(tmp_path):
    path = write_items(tmp_path, ITEMS, "jsonl")
    records = load_corpus(path).records
    path.write_text("".join(json.dumps(i) + "\n" for i in ITEMS[::-1]))
    picked = records.select(["id", "position"]).append_column(
        "selected_by", pa.array(["n1"] * 5))
    with pytest.raises(CorpusError, match="changed during the run"):
        selected_items(str(path), picked, records.select(["instruction", "input", "output"]),
                       RunConfig())


@pytest.mark.parametrize("kind", ["dicts", "arrow", "pandas", "polars", "dataset"])
def test_in_memory_inputs_round_trip(tmp_path, kind):
    """What `run` keeps of in-memory data: the dicts as given; a table's rows as Arrow has
    them (a null where an item lacks a column)."""
    # A string id: pandas holds a column of ints with nulls as floats (7.0, not an id).
    items = copy.deepcopy([ITEMS[0] | {"id": "7"}, ITEMS[1], ITEMS[4]])
    table = pa.Table.from_struct_array(pa.array(items))
    if kind == "dicts":
        data, want = items, items
    elif kind == "arrow":
        data, want = table, table.to_pylist()
    elif kind == "pandas":
        data = table.to_pandas()
        want = pa.Table.from_pandas(data, preserve_index=False).to_pylist()
    elif kind == "polars":
        polars = pytest.importorskip("polars")
        data = polars.from_arrow(table)
        want = data.to_arrow().to_pylist()
    else:
        datasets = pytest.importorskip("datasets")
        data = datasets.Dataset(table).shuffle(seed=3)  # its order, not the table's
        want = data.with_format("arrow")[:].to_pylist()
    path = input_file(data, tmp_path / "input")
    assert path == input_file(data, tmp_path / "input")
    got = give_back(path)
    assert [without_engine(r) for r in got] == want[::-1]


def test_folder_and_glob_of_shards_are_one_corpus(tmp_path, capsys):
    shards = tmp_path / "data"
    shards.mkdir()
    # Written out of name order, one gzipped, one with a bad line: sorted by name, positions
    # and ids count across the files, and the rejection names the file and its line.
    write_items(shards, ITEMS[3:], "jsonl", gz=True, name="part-1")
    (shards / "part-0.jsonl").write_text(json.dumps(ITEMS[0]) + "\n{broken\n"
                                         + json.dumps(ITEMS[1]) + "\n")
    (shards / "notes.txt").write_text("not a corpus file")
    folder = load_corpus(shards)
    glob = load_corpus(str(shards / "part-*.jsonl*"))
    assert folder.records.equals(glob.records)
    assert folder.records["id"].to_pylist() == ["7", "2", "3", "4"]
    assert folder.records["position"].to_pylist() == [0, 2, 3, 4]
    (bad,) = folder.rejected
    assert (bad.source, bad.location, bad.position) == (str(shards / "part-0.jsonl"),
                                                       "line 2", 1)
    assert len(folder) + len(folder.rejected) == 5
    got = give_back(shards)
    assert [without_engine(r) for r in got] == [{k: v for k, v in i.items() if k != ENGINE_KEY}
                                                for i in (ITEMS[4], ITEMS[3], ITEMS[1],
                                                          ITEMS[0])]
    parquet = tmp_path / "pq"
    parquet.mkdir()
    for n in range(3):
        write_items(parquet, [ITEMS[0] | {"id": f"p{n}-{k}"} for k in range(2)], "parquet",
                    name=f"shard-{n}")
    assert load_corpus(str(parquet / "*.parquet")).records["id"].to_pylist() == [
        f"p{n}-{k}" for n in range(3) for k in range(2)]
    with pytest.raises(CorpusError, match="no corpus file matches"):
        source_files(str(tmp_path / "nothing-*.jsonl"))
    odd = write_items(tmp_path, ITEMS, "jsonl", name="c[1]")  # a name, not a pattern
    assert source_files(odd) == [odd]


def test_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    items = [ITEMS[0] | {"id": str(n), "output": f"Blue {n}."} for n in range(10)]
    dataset = datasets.Dataset.from_list(items).shuffle(seed=1).select(range(7))
    folder = tmp_path / "saved"
    dataset.save_to_disk(str(folder), num_shards=3)
    assert len(source_files(folder)) == 3
    corpus = load_corpus(folder)
    want = datasets.load_from_disk(str(folder)).to_list()
    assert corpus.records["id"].to_pylist() == [r["id"] for r in want]  # its order, not ours
    assert [without_engine(r) for r in give_back(folder)] == want[::-1]
    splits = tmp_path / "dict"
    datasets.DatasetDict({"train": dataset, "test": dataset}).save_to_disk(str(splits))
    with pytest.raises(CorpusError, match="name one split's folder"):
        load_corpus(splits)
    assert len(load_corpus(splits / "train")) == 7


def test_an_alpaca_target_refuses_a_conversation_by_name(tmp_path):
    path = write_items(tmp_path, ITEMS, "jsonl")
    with pytest.raises(UsageError, match=r"item '1' \(position 1\).*4 messages \(2 replies\)"):
        give_back(path, [0, 4, 1], output_format="alpaca")
    got = give_back(path, [0, 3, 4], output_format="alpaca")
    assert [without_engine(r) for r in got] == [
        ITEMS[0], {"instruction": "Add 2 and 2.", "input": "Show the sum.", "output": "4"},
        {"instruction": "Say yes.", "input": "", "output": "Yes."}]
    messages = give_back(path, [1], output_format="messages")[0]
    assert messages["messages"][0] == {"role": "system", "content": "Be brief."}
    assert messages["messages"][2] == {"role": "assistant", "content": "Hello.", "weight": 1}
    assert list(messages) == ["messages", "lang", ENGINE_KEY]
