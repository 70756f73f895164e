"""The Python API takes what other tools hold: an Arrow table, a pandas or polars DataFrame, a
Hugging Face Dataset, a list of dicts or a path; each becomes the same records."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from car_engine.corpus import RECORD_SCHEMA, as_records, load_corpus
from car_engine.errors import CorpusError

ITEMS = [
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"id": "q2", "instruction": "Add 2 and 3.", "input": "2, 3", "output": "5"},
    {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello!"}]},
]


@pytest.fixture(scope="module")
def expected() -> pa.Table:
    return as_records(ITEMS)


def test_list_of_dicts(expected):
    assert expected.schema == RECORD_SCHEMA
    assert expected["id"].to_pylist() == ["0", "q2", "2"]
    assert expected["output"].to_pylist() == ["Blue.", "5", "Hello!"]


def _items_table() -> pa.Table:
    # A table of raw items, as another tool would hold them (one column per item field).
    rows = [{"id": i.get("id"), "instruction": i.get("instruction"), "input": i.get("input"),
             "output": i.get("output"),
             "conversations": i.get("conversations")} for i in ITEMS]
    return pa.Table.from_pylist(rows)


def test_arrow_table_of_items(expected):
    assert as_records(_items_table()).equals(expected)


def test_records_table_passes_through(expected):
    assert as_records(expected).equals(expected)


def test_pandas_dataframe(expected):
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame(ITEMS[:2])
    assert as_records(frame).equals(expected.slice(0, 2))


def test_polars_dataframe(expected):
    polars = pytest.importorskip("polars")
    frame = polars.DataFrame(ITEMS[:2])
    assert as_records(frame).equals(expected.slice(0, 2))


def test_hugging_face_dataset(expected):
    datasets = pytest.importorskip("datasets")
    # from_list takes its columns from the first item: give every item the same keys
    dataset = datasets.Dataset.from_list([{"id": None, **ITEMS[0]}, ITEMS[1]])
    assert as_records(dataset).equals(expected.slice(0, 2))
    # a selection of a Dataset is what the Dataset now holds, not its backing table
    picked = as_records(dataset.select([1]))
    assert picked["output"].to_pylist() == ["5"]
    assert picked["id"].to_pylist() == ["q2"]


def test_path(tmp_path, expected):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in ITEMS))
    assert as_records(path).equals(expected)
    assert as_records(str(path)).equals(load_corpus(path).records)


def test_bad_item_is_named():
    with pytest.raises(CorpusError, match="item 1: missing field 'output'"):
        as_records([ITEMS[0], {"instruction": "no answer"}])
    with pytest.raises(TypeError, match="a single item is not a corpus"):
        as_records(ITEMS[0])


@pytest.mark.slow
def test_a_scorer_takes_a_dataframe():
    pandas = pytest.importorskip("pandas")
    import car_engine as ce

    frame = pandas.DataFrame(ITEMS[:2])
    scores = ce.score_iqs(frame, progress=False)
    assert isinstance(scores, pa.Table)
    assert scores["id"].to_pylist() == ["0", "q2"]
    assert all(isinstance(v, float) for v in scores["iqs"].to_pylist())
