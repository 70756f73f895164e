"""Corpus readers (every format, gzip, item shape, bad-input kind), ids, batching, the built-in
ShareGPT corpus, and the atomic writers."""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from corpus_files import FORMATS, encode, gzip_cut_short, write_bytes, write_items

from car_engine.corpus import (
    BUILTIN_SHAREGPT,
    RECORD_SCHEMA,
    load_corpus,
    pair_text,
    pair_texts,
    read_corpus,
    read_table,
    records_from_items,
    resolve_source,
    to_record,
)
from car_engine.errors import CorpusError
from car_engine.io import atomic_path, write_jsonl, write_parquet, write_table

GOOD = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
SHAPES = {
    "alpaca": (
        {"instruction": "Translate.", "input": "Bonjour", "output": "Hello"},
        ("Translate.", "Bonjour", "Hello", None),
    ),
    "sharegpt": (
        {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hey."},
                           {"from": "human", "value": "More?"}, {"from": "gpt", "value": "Ok."}]},
        ("Hi?", "", "Hey.", [("user", "Hi?"), ("assistant", "Hey."), ("user", "More?"),
                             ("assistant", "Ok.")]),
    ),
    "chat": (
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Why?"},
                      {"role": "assistant", "content": "Because."}]},
        ("Why?", "", "Because.", [("system", "Be brief."), ("user", "Why?"),
                                  ("assistant", "Because.")]),
    ),
}


def fmt_id(value: tuple[str, bool]) -> str:
    return f"{value[0]}{'.gz' if value[1] else ''}"


def accounted(corpus) -> list[int]:
    """Every position a corpus read: its records' and its rejections'."""
    return sorted(corpus.records["position"].to_pylist() + [r.position for r in corpus.rejected])


# --------------------------------------------------------------------------- formats and shapes


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fmt", FORMATS, ids=fmt_id)
def test_every_format_reads_every_shape(tmp_path, fmt, shape):
    item, (instruction, inp, output, turns) = SHAPES[shape]
    path = write_items(tmp_path, [GOOD, item, dict(item, id="own-7")], fmt[0], gz=fmt[1])
    corpus = load_corpus(path)
    assert corpus.rejected == []
    assert corpus.records.schema == RECORD_SCHEMA
    rows = corpus.records.to_pylist()
    assert [r["id"] for r in rows] == ["0", "1", "own-7"]  # SPEC §0: own id, else position
    assert [r["position"] for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert (row["instruction"], row["input"], row["output"]) == (instruction, inp, output)
        got_turns = None if row["turns"] is None else [
            (t["role"], t["content"]) for t in json.loads(row["turns"])]
        assert got_turns == turns


@pytest.mark.parametrize("fmt", FORMATS, ids=fmt_id)
def test_mixed_shapes_in_one_file(tmp_path, fmt):
    items = [SHAPES["chat"][0], GOOD, SHAPES["sharegpt"][0]]
    corpus = load_corpus(write_items(tmp_path, items, fmt[0], gz=fmt[1]))
    assert corpus.rejected == []
    assert corpus.records["instruction"].to_pylist() == ["Why?", "Name a colour.", "Hi?"]


def test_integer_ids_become_strings(tmp_path):
    path = write_items(tmp_path, [dict(GOOD, id=10), dict(GOOD, id="x"), GOOD], "jsonl")
    assert load_corpus(path).records["id"].to_pylist() == ["10", "x", "2"]


def test_gzip_is_detected_by_content_not_name(tmp_path):
    plain_named_gz = write_items(tmp_path, [GOOD], "jsonl", name="plain")
    renamed = plain_named_gz.rename(tmp_path / "plain.jsonl.gz")
    gz_without_suffix = tmp_path / "packed.jsonl"
    gz_without_suffix.write_bytes(gzip.compress(encode([GOOD, GOOD], "jsonl")))
    assert len(load_corpus(renamed)) == 1
    assert len(load_corpus(gz_without_suffix)) == 2


def test_blank_lines_crlf_and_bom(tmp_path):
    line = json.dumps(GOOD).encode()
    data = b"\xef\xbb\xbf" + line + b"\r\n\r\n   \n" + line
    corpus = load_corpus(write_bytes(tmp_path, data, "jsonl"))
    assert corpus.rejected == []
    assert corpus.records["position"].to_pylist() == [0, 1]  # blank lines are not items
    bom_array = b"\xef\xbb\xbf" + encode([GOOD], "json")
    assert len(load_corpus(write_bytes(tmp_path, bom_array, "json"))) == 1


def test_extra_fields_are_ignored(tmp_path):
    item = dict(GOOD, source="web", score=3.5, tags=["a"], nested={"deep": [1, {"x": None}]})
    corpus = load_corpus(write_items(tmp_path, [item], "jsonl"))
    assert corpus.records.column_names == RECORD_SCHEMA.names
    assert corpus.records["output"].to_pylist() == ["Blue."]


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_empty_file_has_no_items(tmp_path, fmt):
    for data in (b"", b"  \n\n"):
        corpus = load_corpus(write_bytes(tmp_path, data, fmt))
        assert (len(corpus), corpus.rejected) == (0, [])
    assert len(load_corpus(write_bytes(tmp_path, b"[]", "json"))) == 0


# --------------------------------------------------------------------------- bad items

JSONL_BAD = {
    "malformed": (b'{"instruction": "a", "output": ', "malformed JSON"),
    "wrong type": (b'{"instruction": 5, "output": "b"}',
                   "field 'instruction' must be a string, got int"),
    "input wrong type": (b'{"instruction": "a", "input": [], "output": "b"}',
                         "field 'input' must be a string, got list"),
    "missing instruction": (b'{"output": "b"}', "missing field 'instruction'"),
    "missing output": (b'{"instruction": "a"}', "missing field 'output'"),
    "null output": (b'{"instruction": "a", "output": null}', "missing field 'output'"),
    "empty output": (b'{"instruction": "a", "output": " \\n "}', "empty output"),
    "empty instruction": (b'{"instruction": "", "output": "b"}', "empty instruction"),
    "invalid utf-8": (b'{"instruction": "caf\xe9", "output": "b"}', "invalid UTF-8 at byte 20"),
    "escaped lone surrogate": (b'{"instruction": "a", "output": "\\udc80"}',
                               "invalid UTF-8 in 'output'"),
    "not an object": (b"[1, 2]", "item must be a JSON object, got list"),
    "bad id type": (b'{"id": 1.5, "instruction": "a", "output": "b"}',
                    "field 'id' must be a string or integer, got float"),
    "bool id": (b'{"id": true, "instruction": "a", "output": "b"}', "got bool"),
    "conversations not a list": (b'{"conversations": "hi"}', "'conversations' must be a list"),
    "turn not an object": (b'{"conversations": ["hi"]}', "conversations[0] must be an object"),
    "turn missing value": (b'{"conversations": [{"from": "human"}]}',
                           "conversations[0] needs string 'from' and 'value'"),
    "no user-assistant pair": (b'{"messages": [{"role": "assistant", "content": "x"}]}',
                               "'messages' has no user turn followed by an assistant turn"),
    "empty assistant turn": (
        b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}',
        "empty output"),
    "deep nesting": (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    "huge integer": (b'{"instruction": "a", "output": ' + b"9" * 5000 + b"}", "malformed JSON"),
    "nul byte": (b'{"instruction": "a\x00", "output": "b"}', "malformed JSON"),
}


@pytest.mark.parametrize("case", JSONL_BAD)
def test_jsonl_bad_item_is_rejected_with_its_line(tmp_path, case):
    bad, reason = JSONL_BAD[case]
    good = json.dumps(GOOD).encode()
    path = write_bytes(tmp_path, good + b"\n" + bad + b"\n\n" + good + b"\n", "jsonl")
    corpus = load_corpus(path)
    assert corpus.records["id"].to_pylist() == ["0", "2"]
    [rejection] = corpus.rejected
    assert (rejection.source, rejection.location, rejection.position) == (str(path), "line 2", 1)
    assert reason in rejection.reason
    assert rejection.message().startswith(f"{path} line 2: ")
    with pytest.raises(CorpusError) as err:  # strict: fatal, with the very same message
        load_corpus(path, strict=True)
    assert str(err.value) == rejection.message()


JSON_BAD = {
    "wrong type": ({"instruction": ["a"], "output": "b"}, "field 'instruction' must be a string"),
    "missing output": ({"instruction": "a"}, "missing field 'output'"),
    "empty output": ({"instruction": "a", "output": ""}, "empty output"),
    "not an object": ("just text", "item must be a JSON object, got str"),
    "null item": (None, "item must be a JSON object, got NoneType"),
}


@pytest.mark.parametrize("case", JSON_BAD)
def test_json_array_bad_item_is_rejected_with_its_index(tmp_path, case):
    bad, reason = JSON_BAD[case]
    path = write_items(tmp_path, [GOOD, bad, GOOD], "json")
    corpus = load_corpus(path)
    assert corpus.records["position"].to_pylist() == [0, 2]
    [rejection] = corpus.rejected
    assert rejection.location == "item 1" and reason in rejection.reason
    with pytest.raises(CorpusError, match="item 1: "):
        load_corpus(path, strict=True)


def test_json_array_invalid_utf8_rejects_only_that_item(tmp_path):
    data = encode([GOOD, {"instruction": "a", "output": "XX"}, GOOD], "json")
    data = data.replace(b"XX", b"\xff\xfe")
    corpus = load_corpus(write_bytes(tmp_path, data, "json"))
    assert corpus.records["position"].to_pylist() == [0, 2]
    assert [(r.location, r.reason) for r in corpus.rejected] == [
        ("item 1", "invalid UTF-8 in 'output' at character 0")]


def test_json_array_malformed_element_stops_with_a_named_rejection(tmp_path):
    data = b'[{"instruction": "a", "output": "b"}, {"instruction": "a" "output": "b"}, {}]'
    corpus = load_corpus(write_bytes(tmp_path, data, "json"))
    assert len(corpus) == 1
    [rejection] = corpus.rejected
    assert rejection.location == "item 1"
    assert "malformed JSON" in rejection.reason and "the rest of the file" in rejection.reason


@pytest.mark.parametrize("data, reason", [
    (b'{"instruction": "a", "output": "b"}', "must be a JSON array"),
    (b'[{"instruction": "a", "output": "b"} {"instruction": "a", "output": "b"}]',
     "expected ',' or ']' after item 0"),
    (b'[{"instruction": "a", "output": "b"},]', "malformed JSON"),
    (b'[{"instruction": "a", "output": "b"},', "file ends before the array is closed"),
    (b'[{"instruction": "a", "output": "b"}, {"instruc', "file ends before item 1 is complete"),
    (b"[" + b"[" * 100_000, "nested too deeply"),
    (b'[{"instruction": "a\x00", "output": "b"}]', "malformed JSON (Invalid control character"),
])
def test_json_array_structure_errors(tmp_path, data, reason):
    corpus = load_corpus(write_bytes(tmp_path, data, "json"))
    assert len(corpus.rejected) == 1 and reason in corpus.rejected[0].reason
    assert len(corpus) + len(corpus.rejected) == len(accounted(corpus))


def test_parquet_bad_rows_are_rejected_with_their_index(tmp_path):
    table = pa.table({"instruction": ["a", None, "c", "d"], "output": ["b", "b", "", "e"],
                      "id": ["x", "y", "z", "x"]})
    path = tmp_path / "c.parquet"
    pq.write_table(table, path)
    corpus = load_corpus(path)
    assert corpus.records["id"].to_pylist() == ["x"]
    assert [(r.location, r.reason, r.id) for r in corpus.rejected] == [
        ("item 1", "missing field 'instruction'", "y"),
        ("item 2", "empty output", "z"),
        ("item 3", "duplicate id 'x' (first seen at item 0)", "x"),
    ]


def test_parquet_invalid_utf8_rejects_only_that_row(tmp_path):
    # Parquet does not check that strings are UTF-8: relabel raw bytes as a string column.
    raw = pa.array([b"ok", b"bad\xff", b"fine"], pa.binary())
    text = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"instruction": text, "output": ["a", "b", "c"]}), path)
    corpus = load_corpus(path)
    assert corpus.records["instruction"].to_pylist() == ["ok", "fine"]
    assert [(r.location, r.reason) for r in corpus.rejected] == [
        ("item 1", "invalid UTF-8 in a text column at byte 3")]


@pytest.mark.parametrize("gz", [False, True])
def test_unreadable_parquet_is_one_rejection(tmp_path, gz):
    corpus = load_corpus(write_bytes(tmp_path, b"PAR1 this is not parquet", "parquet", gz=gz))
    assert len(corpus) == 0
    [rejection] = corpus.rejected
    assert rejection.location == "item 0" and "not a readable Parquet file" in rejection.reason


def test_duplicate_ids(tmp_path):
    items = [dict(GOOD, id="a"), dict(GOOD, id="a"), dict(GOOD, id=3), GOOD, dict(GOOD, id="2")]
    corpus = load_corpus(write_items(tmp_path, items, "jsonl"))
    # Item 3 has no id of its own, so its id is "3": taken by item 2. Item 4 says "2", which
    # is free: the item at position 2 brought its own id.
    assert corpus.records["id"].to_pylist() == ["a", "3", "2"]
    assert [(r.location, r.reason) for r in corpus.rejected] == [
        ("line 2", "duplicate id 'a' (first seen at line 1)"),
        ("line 4", "duplicate id '3' (first seen at line 3)"),
    ]
    later = load_corpus(write_items(tmp_path, [GOOD, dict(GOOD, id="0")], "json"))
    assert [r.reason for r in later.rejected] == [
        "duplicate id '0' (first seen at item position 0)"]


# --------------------------------------------------------------------------- truncated gzip


def test_gzip_json_array_cut_short_keeps_whole_elements(tmp_path):
    items = [dict(GOOD, output=f"answer {n} " * 20) for n in range(400)]
    data = encode(items, "json")
    path = tmp_path / "cut.json.gz"
    path.write_bytes(gzip_cut_short(data, keep=0.5))
    corpus = load_corpus(path)
    assert 0 < len(corpus) < len(items)
    assert corpus.records["output"].to_pylist() == [i["output"] for i in items[: len(corpus)]]
    [rejection] = corpus.rejected
    assert rejection.location == f"item {len(corpus)}"
    assert "cut short" in rejection.reason
    assert accounted(corpus) == list(range(len(corpus) + 1))


def test_gzip_jsonl_cut_short_keeps_whole_lines(tmp_path):
    items = [dict(GOOD, output=f"answer {n} " * 20) for n in range(400)]
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip_cut_short(encode(items, "jsonl"), keep=0.5))
    corpus = load_corpus(path)
    assert 0 < len(corpus) < len(items)
    assert corpus.records["output"].to_pylist() == [i["output"] for i in items[: len(corpus)]]
    [rejection] = corpus.rejected
    assert rejection.location == f"line {len(corpus) + 1}" and "cut short" in rejection.reason


def test_gzip_parquet_cut_short_is_one_rejection(tmp_path):
    path = tmp_path / "cut.parquet.gz"
    path.write_bytes(gzip_cut_short(encode([GOOD] * 50, "parquet")))
    corpus = load_corpus(path)
    assert len(corpus) == 0 and len(corpus.rejected) == 1


# --------------------------------------------------------------------------- streaming


def test_batches_are_bounded(tmp_path):
    items = [GOOD] * 10 + [{"output": "no instruction"}] * 7 + [GOOD] * 3
    path = write_items(tmp_path, items, "jsonl")
    batches = list(read_corpus(path, batch_size=3))
    assert all(b.records.num_rows <= 3 and len(b.rejected) <= 3 for b in batches)
    assert sum(b.records.num_rows for b in batches) == 13
    assert sum(len(b.rejected) for b in batches) == 7


def test_limit_counts_good_and_bad_items(tmp_path):
    items = [GOOD, {"instruction": "x"}, GOOD, GOOD, GOOD]
    corpus = load_corpus(write_items(tmp_path, items, "json"), limit=3)
    assert (len(corpus), len(corpus.rejected)) == (2, 1)
    assert len(load_corpus(write_items(tmp_path, items, "json"), limit=0)) == 0


def test_bad_arguments_and_sources(tmp_path):
    with pytest.raises(CorpusError, match="no such file"):
        load_corpus(tmp_path / "absent.jsonl")
    with pytest.raises(CorpusError, match="unknown corpus format '.csv'"):
        load_corpus(write_bytes(tmp_path, b"a,b\n", "csv"))
    with pytest.raises(CorpusError, match="unknown builtin corpus"):
        resolve_source("builtin:nope")
    with pytest.raises(ValueError, match="batch_size"):
        next(read_corpus(write_items(tmp_path, [GOOD], "jsonl"), batch_size=0))


@pytest.mark.slow
def test_streaming_memory_is_bounded(tmp_path):
    """~200k lines: Python-side peak and Arrow-side allocations stay a small fraction of the
    file while batches are consumed one by one."""
    path = tmp_path / "big.jsonl"
    line = json.dumps({"instruction": "Summarise the paragraph below in one sentence, please.",
                       "input": "x" * 120, "output": "{}" + " A short answer follows here." * 4})
    with open(path, "w", encoding="utf-8") as out:
        for n in range(200_000):
            out.write(line.replace("{}", str(n)) + "\n")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        records, arrow_peak = 0, 0
        for batch in read_corpus(path, batch_size=2_000):
            records += batch.records.num_rows
            arrow_peak = max(arrow_peak, pa.total_allocated_bytes())
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert records == 200_000
    assert python_peak < size / 10, (python_peak, size)
    assert arrow_peak < size / 10, (arrow_peak, size)


# --------------------------------------------------------------------------- built-in corpus


def test_builtin_sharegpt_streams_its_first_items():
    corpus = load_corpus(BUILTIN_SHAREGPT, limit=200)
    assert accounted(corpus) == list(range(200))
    rows = corpus.records.to_pylist()
    assert len(rows) > 180  # a few real conversations have no user->assistant pair
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(not r["id"].isdigit() for r in rows)  # the dump's own ids, not positions
    for row in rows:
        turns = json.loads(row["turns"])
        pairs = list(zip(turns, turns[1:], strict=False))
        first = next((a, b) for a, b in pairs if (a["role"], b["role"]) == ("user", "assistant"))
        assert (row["instruction"], row["output"]) == (first[0]["content"], first[1]["content"])
        assert row["input"] == ""
    assert all(r.source == BUILTIN_SHAREGPT and r.location.startswith("item ")
               for r in corpus.rejected)


def test_sharegpt_fixture_matches_a_fresh_read(sharegpt_records):
    again = load_corpus(BUILTIN_SHAREGPT, limit=520).records.slice(0, 500)
    assert sharegpt_records.num_rows == 500 and sharegpt_records.equals(again)


# --------------------------------------------------------------------------- in-memory items


def test_records_from_items():
    corpus = records_from_items([GOOD, SHAPES["chat"][0]])
    assert corpus.records["id"].to_pylist() == ["0", "1"]
    with pytest.raises(CorpusError, match=r"<items> item 1: missing field 'output'"):
        records_from_items([GOOD, {"instruction": "a"}])
    lenient = records_from_items([GOOD, {"instruction": "a"}, dict(GOOD, id="0")], strict=False)
    assert [r.reason for r in lenient.rejected] == [
        "missing field 'output'", "duplicate id '0' (first seen at item position 0)"]


def test_to_record_keeps_the_input_field():
    record = to_record({"instruction": "Sum", "input": "1 2", "output": "3", "id": "k"}, 9)
    assert record == {"id": "k", "position": 9, "instruction": "Sum", "input": "1 2",
                      "output": "3", "turns": None}
    with pytest.raises(CorpusError, match="item 4: empty output"):
        to_record({"instruction": "Sum", "output": ""}, 4)


def test_pair_text_always_has_the_input_segment():
    assert pair_text("Do", "", "Done") == "Instruction: Do Input:  Response: Done"
    table = records_from_items([GOOD, {"instruction": "I", "input": "X", "output": "O"}]).records
    assert pair_texts(table) == ["Instruction: Name a colour. Input:  Response: Blue.",
                                 "Instruction: I Input: X Response: O"]


# --------------------------------------------------------------------------- writers


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_write_table_round_trip(tmp_path, suffix):
    table = pa.table({"id": [1, 2], "score": [0.5, -1.25], "text": ["héllo ✓", "b"]})
    out = tmp_path / "deep" / f"scores{suffix}"
    write_table(out, table)
    back = read_table(out)
    assert back["id"].to_pylist() == ["1", "2"]  # ids are strings
    assert back["score"].to_pylist() == [0.5, -1.25]
    assert back["text"].to_pylist() == ["héllo ✓", "b"]
    assert leftovers(out.parent) == [out.name]


def test_written_files_get_the_usual_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        out = tmp_path / "x.jsonl"
        write_jsonl(out, [{"id": 1}])
        assert out.stat().st_mode & 0o777 == 0o644  # mkstemp alone would leave 0600
    finally:
        os.umask(umask)


def test_write_jsonl_returns_count_and_round_trips_records(tmp_path):
    corpus = records_from_items([GOOD, SHAPES["sharegpt"][0]])
    out = tmp_path / "records.jsonl"
    assert write_jsonl(out, corpus.records.to_pylist()) == 2
    assert read_table(out).equals(corpus.records)
    # Read back as a corpus, a record file is Alpaca-shaped: same ids and pair texts.
    again = load_corpus(out).records
    assert again["id"].equals(corpus.records["id"])
    assert pair_texts(again) == pair_texts(corpus.records)


def test_write_table_refuses_unknown_extension(tmp_path):
    with pytest.raises(CorpusError, match="must end in .parquet or .jsonl"):
        write_table(tmp_path / "x.csv", pa.table({"id": [1]}))
    assert leftovers(tmp_path) == []


def failing_rows(count: int, err: BaseException):
    """Rows that run out part-way with ``err``: a disk filling up during a write."""
    for n in range(count):
        yield {"id": n, "text": "x" * 1000}
    raise err


@pytest.mark.parametrize("existing", [False, True])
def test_no_space_leaves_no_file_under_the_final_name(tmp_path, existing):
    out = tmp_path / "out.jsonl"
    if existing:
        out.write_text('{"id": "old"}\n')
    with pytest.raises(OSError) as err:
        write_jsonl(out, failing_rows(500, OSError(errno.ENOSPC, "No space left on device")))
    assert err.value.errno == errno.ENOSPC
    if existing:
        assert out.read_text() == '{"id": "old"}\n'  # the old file is untouched
        assert leftovers(tmp_path) == ["out.jsonl"]
    else:
        assert leftovers(tmp_path) == []


def test_atomic_path_failure_mid_write_removes_the_temp_file(tmp_path):
    out = tmp_path / "t.parquet"
    with pytest.raises(OSError), atomic_path(out) as tmp:
        tmp.write_bytes(b"PAR1 half a file")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert leftovers(tmp_path) == []


def test_unwritable_row_is_a_named_error_and_no_file(tmp_path):
    out = tmp_path / "scores.jsonl"
    with pytest.raises(CorpusError, match=r"row 1: cannot be written as JSON"):
        write_jsonl(out, [{"id": 0, "s": 1.0}, {"id": 1, "s": float("nan")}])
    with pytest.raises(CorpusError, match=r"row 0: cannot be written as JSON"):
        write_jsonl(out, [{"id": "\udc80"}])
    assert leftovers(tmp_path) == []


def test_final_name_taken_by_a_folder(tmp_path):
    (tmp_path / "out.parquet").mkdir()
    with pytest.raises(OSError):
        write_parquet(tmp_path / "out.parquet", pa.table({"id": ["a"]}))
    assert leftovers(tmp_path) == ["out.parquet"]


@pytest.fixture
def unwritable_dir(tmp_path):
    """A folder nobody may create files in: chmod for normal users; as root (where chmod does
    not block) the immutable attribute; skip if neither holds here."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    probe, immutable = folder / "probe", False
    try:
        probe.touch()
    except PermissionError:
        pass
    else:
        probe.unlink()
        folder.chmod(0o755)
        chattr = shutil.which("chattr")
        immutable = chattr is not None and subprocess.run(
            [chattr, "+i", str(folder)], capture_output=True).returncode == 0
        if not immutable:
            pytest.skip("running as root without chattr +i: no way to make a folder unwritable")
    try:
        yield folder
    finally:
        if immutable:
            subprocess.run([shutil.which("chattr"), "-i", str(folder)], check=True)
        folder.chmod(0o755)


@pytest.mark.parametrize("name", ["out.jsonl", "out.parquet"])
def test_no_permission_leaves_no_file(unwritable_dir, name):
    with pytest.raises(PermissionError):
        write_table(unwritable_dir / name, pa.table({"id": ["a"]}))
    assert leftovers(unwritable_dir) == []


# --------------------------------------------------------------------------- read_table


def test_read_table_errors(tmp_path):
    with pytest.raises(CorpusError, match="no 'id' column"):
        read_table(write_items(tmp_path, [{"score": 1}], "jsonl"))
    with pytest.raises(CorpusError, match="line 2: malformed JSON"):
        read_table(write_bytes(tmp_path, b'{"id": 1}\n{"id": \n', "jsonl"))
    with pytest.raises(CorpusError, match="not a readable table"):
        read_table(write_bytes(tmp_path, b"PAR1 garbage", "parquet"))
    with pytest.raises(CorpusError, match=r"line 2 \(id '2'\): .*'s' is 'x'"):
        read_table(write_bytes(tmp_path, b'{"id": 1, "s": 1}\n{"id": 2, "s": "x"}\n', "jsonl"))
    with pytest.raises(CorpusError, match="no such file"):
        read_table(tmp_path / "absent.parquet")


def test_read_table_accepts_gzip_and_json_arrays(tmp_path):
    rows = [{"id": 1, "iqs": 0.25}, {"id": "b", "iqs": 1.5}]
    for fmt in ("parquet", "json", "jsonl"):
        items = rows if fmt != "parquet" else [{"id": "1", "iqs": 0.25}, {"id": "b", "iqs": 1.5}]
        table = read_table(write_items(tmp_path, items, fmt, gz=True))
        assert table["id"].to_pylist() == ["1", "b"] and table["iqs"].to_pylist() == [0.25, 1.5]
