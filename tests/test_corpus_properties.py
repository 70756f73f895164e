"""Property-based hardening of the corpus readers and writers (hypothesis).

Generated corpora mix good items of every shape with bad ones of every kind (malformed JSON,
wrong types, missing and extra fields, empty fields, invalid UTF-8, NUL bytes, deep nesting,
duplicate ids), in every format, gzipped or not, cut short or corrupted. Whatever comes in:
no exception in the default mode, every good item is a record, every bad one a Rejection
naming the file and its line/item, and records + rejections == items read.
"""

from __future__ import annotations

import errno
import gzip
import json
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from corpus_files import encode, write_bytes, write_items
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from car_engine import corpus as corpus_module
from car_engine.corpus import json_array, load_corpus, read_corpus
from car_engine.errors import CorpusError
from car_engine.io import write_jsonl

PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
RESERVED = {"id", "instruction", "input", "output", "conversations", "messages"}
LOCATION = re.compile(r"(line|item) \d+")


@contextmanager
def folder():
    """A fresh folder per example (pytest's tmp_path is shared across hypothesis examples)."""
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


# --------------------------------------------------------------------------- strategies

json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)
not_string = st.one_of(st.booleans(), st.integers(), st.floats(allow_nan=False),
                       st.lists(json_scalar, max_size=2),
                       st.dictionaries(st.text(max_size=4), json_scalar, max_size=2))
# Any text a person could write, control characters included but not NUL, which the readers
# reject (raw or escaped) as a bad item; "empty" means blank.
text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=24)
filled = text.filter(str.strip)
blank = st.sampled_from(["", " ", "\n\t ", "\u3000", "\x1c"])
extras = st.dictionaries(st.text(max_size=8).filter(lambda k: k not in RESERVED), json_value,
                         max_size=2)


@dataclass
class Entry:
    """One generated item: what is written, and what the reader must make of it."""

    value: Any  # the JSON value (None with a raw line)
    expected: tuple[str, str, str] | None  # (instruction, input, output) when good
    reason: str | None  # a substring of the rejection's reason when bad
    own_id: Any = None  # the id the item brings itself, when good
    raw: bytes | None = None  # a JSONL line written as it is (line-level faults)

    @property
    def good(self) -> bool:
        return self.expected is not None


@st.composite
def good_items(draw) -> Entry:
    """A valid item of a random shape, with random extra fields."""
    instruction, output = draw(filled), draw(filled)
    shape = draw(st.sampled_from(["alpaca", "sharegpt", "chat"]))
    inp = ""
    if shape == "alpaca":
        item = {"instruction": instruction, "output": output}
        choice = draw(st.sampled_from(["absent", "null", "text"]))
        if choice != "absent":
            inp = draw(text) if choice == "text" else ""
            item["input"] = None if choice == "null" else inp
    elif shape == "sharegpt":
        later = draw(st.lists(st.fixed_dictionaries(
            {"from": st.sampled_from(["human", "gpt", "system"]), "value": text}),
            max_size=2))
        item = {"conversations": [{"from": "human", "value": instruction},
                                  {"from": "gpt", "value": output}, *later]}
        for turn in later:  # SPEC §5: replies right after it join the first reply with "\n"
            if turn["from"] == "human":  # (a later system message is not scored)
                break
            if turn["from"] == "gpt":
                output += "\n" + turn["value"]
    else:
        system = [{"role": "system", "content": draw(text)}] if draw(
            st.booleans()) else []
        item = {"messages": [*system, {"role": "user", "content": instruction},
                             {"role": "assistant", "content": output}]}
    item.update(draw(extras))
    return Entry(item, (instruction, inp, output), None)


@st.composite
def bad_items(draw) -> Entry:
    """A JSON value that parses but cannot be a record, with the reason it must get."""
    base = {"instruction": draw(filled), "output": draw(filled)}
    kind = draw(st.sampled_from(["not object", "missing", "wrong type", "blank", "bad id",
                                 "bad turns", "no pair", "invalid utf-8"]))
    if kind == "not object":
        value = draw(st.one_of(json_scalar, st.lists(json_value, max_size=3)))
        return Entry(value, None, "item must be a JSON object")
    if kind == "missing":
        key = draw(st.sampled_from(["instruction", "output"]))
        return Entry({k: v for k, v in base.items() if k != key}, None, f"missing field '{key}'")
    if kind == "wrong type":
        key = draw(st.sampled_from(["instruction", "input", "output"]))
        return Entry({**base, key: draw(not_string)}, None, f"field '{key}' must be a string")
    if kind == "blank":
        key = draw(st.sampled_from(["instruction", "output"]))
        return Entry({**base, key: draw(blank)}, None, f"empty {key}")
    if kind == "bad id":
        bad_id = draw(st.one_of(st.booleans(), st.floats(allow_nan=False),
                                st.lists(st.integers(), max_size=2)))
        return Entry({**base, "id": bad_id}, None, "field 'id' must be a string or integer")
    if kind == "bad turns":
        key = draw(st.sampled_from(["conversations", "messages"]))
        turns = draw(st.one_of(not_string.filter(lambda v: not isinstance(v, list)),
                               st.lists(json_scalar.filter(lambda v: v is not None),
                                        min_size=1, max_size=2)))
        return Entry({key: turns}, None, f"{key}")
    if kind == "no pair":
        turns = [{"role": "assistant", "content": base["output"]},
                 {"role": "user", "content": base["instruction"]}]
        return Entry({"messages": turns}, None, "no user turn followed by an assistant turn")
    # A lone surrogate is written as the bytes of no valid UTF-8 (see encode_value).
    key = draw(st.sampled_from(["instruction", "output"]))
    return Entry({**base, key: base[key] + "\udc80"}, None, "UTF-8")


@st.composite
def line_faults(draw) -> Entry:
    """A JSONL line that is not JSON at all: cut, with a stray byte, or nested too deeply."""
    line = encode_value({"instruction": draw(filled), "output": draw(filled)}, ascii_only=False)
    kind = draw(st.sampled_from(["cut", "invalid byte", "nul byte", "deep"]))
    if kind == "deep":
        depth = draw(st.integers(5_000, 50_000))
        return Entry(None, None, "malformed JSON", raw=b"[" * depth + b"]" * depth)
    if kind == "invalid byte":  # 0xff is in no UTF-8 sequence, wherever it lands
        at = draw(st.integers(0, len(line)))
        return Entry(None, None, "invalid UTF-8", raw=line[:at] + b"\xff" + line[at:])
    text = line.decode("utf-8")  # cut or insert between characters, so the rest stays UTF-8
    at = draw(st.integers(1, len(text) - 1))
    head, tail = text[:at].encode("utf-8"), text[at:].encode("utf-8")
    raw = head if kind == "cut" else head + b"\x00" + tail
    return Entry(None, None, "malformed JSON", raw=raw)


@st.composite
def corpora(draw, *, raw_lines: bool, top_level_numbers: bool = True) -> list[Entry]:
    """A list of entries; good ones sometimes bring their own (unique) id, and some bad ones
    repeat an earlier record's id."""
    kinds = ["good", "good", "good", "bad", "duplicate"] + (["line"] if raw_lines else [])
    entries: list[Entry] = []
    for position in range(draw(st.integers(0, 20))):
        kind = draw(st.sampled_from(kinds))
        taken = [p for p, e in enumerate(entries) if e.good]
        if kind == "good":
            entry = draw(good_items())
            own = draw(st.sampled_from([None, f"own-{position}", 10_000 + position]))
            if own is not None:
                entry.value["id"], entry.own_id = own, own
        elif kind == "duplicate" and taken:
            earlier = draw(st.sampled_from(taken))
            own = entries[earlier].own_id
            earlier_id = str(earlier) if own is None else own
            entry = draw(good_items())
            entry = Entry({**entry.value, "id": earlier_id}, None, "duplicate id")
        elif kind == "line":
            entry = draw(line_faults())
        else:
            entry = draw(bad_items())
        if not top_level_numbers and isinstance(entry.value, (int, float)):
            entry = Entry(str(entry.value), None, "item must be a JSON object")
        entries.append(entry)
    return entries


def encode_value(value: Any, *, ascii_only: bool) -> bytes:
    # surrogatepass turns a lone surrogate into bytes that are not valid UTF-8.
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def expected_id(entries: list[Entry], position: int) -> str:
    own = entries[position].own_id
    return str(position) if own is None else str(own)


# --------------------------------------------------------------------------- the invariant


def check_accounting(path: Path, corpus, items: int | None = None) -> None:
    """Every item read is a record or a rejection naming the file and its line/item, once."""
    positions = corpus.records["position"].to_pylist() + [r.position for r in corpus.rejected]
    assert sorted(positions) == list(range(len(positions)))
    if items is not None:
        assert len(positions) == items
    ids = corpus.records["id"].to_pylist()
    assert len(set(ids)) == len(ids)
    for rejection in corpus.rejected:
        assert rejection.source == str(path)
        assert LOCATION.fullmatch(rejection.location), rejection.location
        assert rejection.message().startswith(f"{path} {rejection.location}: ")
        json.dumps(rejection.to_dict(), ensure_ascii=False).encode("utf-8")  # reportable


def check_against(entries: list[Entry], corpus, locations: list[str]) -> None:
    """Records and rejections are exactly what the entries say they must be."""
    records = corpus.records.to_pylist()
    good = [p for p, e in enumerate(entries) if e.good]
    assert [r["position"] for r in records] == good
    for record in records:
        entry = entries[record["position"]]
        assert (record["instruction"], record["input"], record["output"]) == entry.expected
        assert record["id"] == expected_id(entries, record["position"])
    bad = [p for p, e in enumerate(entries) if not e.good]
    assert [r.position for r in corpus.rejected] == bad
    for rejection in corpus.rejected:
        assert rejection.location == locations[rejection.position]
        assert entries[rejection.position].reason in rejection.reason, rejection.reason


def check_strict(path: Path, corpus) -> None:
    """strict mode fails on the first rejection, with its very message; else reads the same."""
    if corpus.rejected:
        with pytest.raises(CorpusError) as err:
            load_corpus(path, strict=True)
        assert str(err.value) == corpus.rejected[0].message()
    else:
        assert load_corpus(path, strict=True).records.equals(corpus.records)


def check_batches(path: Path, corpus, batch_size: int) -> None:
    batches = list(read_corpus(path, batch_size=batch_size))
    assert all(b.records.num_rows <= batch_size and len(b.rejected) <= batch_size
               for b in batches)
    assert sum((b.rejected for b in batches), []) == corpus.rejected
    tables = [b.records for b in batches]
    if tables:
        assert pa.concat_tables(tables).equals(corpus.records)


# --------------------------------------------------------------------------- readers


@PROPERTY
@given(entries=corpora(raw_lines=True), blank_after=st.lists(st.booleans(), max_size=20),
       gz=st.booleans(), ascii_only=st.booleans(), batch_size=st.integers(1, 6))
def test_jsonl_accounts_for_every_line(entries, blank_after, gz, ascii_only, batch_size):
    lines, locations = [], []
    for n, entry in enumerate(entries):
        lines.append(entry.raw if entry.raw is not None else
                     encode_value(entry.value, ascii_only=ascii_only))
        locations.append(f"line {len(lines)}")
        if n < len(blank_after) and blank_after[n]:
            lines.append(b"   ")  # blank lines are not items, but they do count as lines
    with folder() as tmp:
        path = write_bytes(tmp, b"\n".join(lines), "jsonl", gz=gz)
        corpus = load_corpus(path)
        check_accounting(path, corpus, len(entries))
        check_against(entries, corpus, locations)
        check_strict(path, corpus)
        check_batches(path, corpus, batch_size)


def json_array_bytes(entries: list[Entry], ascii_only: bool, separator: bytes) -> tuple[bytes,
                                                                                     list[int]]:
    """The array's bytes, and the offset where each element ends."""
    data, ends = bytearray(b"[" + separator), []
    for n, entry in enumerate(entries):
        if n:
            data += b"," + separator
        data += encode_value(entry.value, ascii_only=ascii_only)
        ends.append(len(data))
    data += separator + b"]"
    return bytes(data), ends


@PROPERTY
@given(entries=corpora(raw_lines=False), gz=st.booleans(), ascii_only=st.booleans(),
       separator=st.sampled_from([b"", b" ", b"\n  ", b"\r\n\t"]), chunk=st.integers(4, 96),
       batch_size=st.integers(1, 6))
def test_json_array_accounts_for_every_item(entries, gz, ascii_only, separator, chunk,
                                            batch_size):
    # Tiny read chunks put every kind of token (numbers, escapes, multi-byte characters)
    # across a chunk boundary somewhere.
    data, _ = json_array_bytes(entries, ascii_only, separator)
    with folder() as tmp, mock.patch.object(json_array, "_JSON_CHUNK", chunk):
        path = write_bytes(tmp, data, "json", gz=gz)
        corpus = load_corpus(path)
        check_accounting(path, corpus, len(entries))
        check_against(entries, corpus, [f"item {p}" for p in range(len(entries))])
        check_strict(path, corpus)
        check_batches(path, corpus, batch_size)


@PROPERTY
@given(entries=corpora(raw_lines=False, top_level_numbers=False), data=st.data(),
       chunk=st.integers(4, 96))
def test_json_array_cut_short_keeps_whole_items_and_one_rejection(entries, data, chunk):
    raw, ends = json_array_bytes(entries, ascii_only=data.draw(st.booleans()), separator=b"\n")
    cut = data.draw(st.integers(1, len(raw) - 1))
    whole = sum(end <= cut for end in ends)
    with folder() as tmp, mock.patch.object(json_array, "_JSON_CHUNK", chunk):
        path = write_bytes(tmp, raw[:cut], "json")
        corpus = load_corpus(path)
        check_accounting(path, corpus, whole + 1)
        check_against(entries[:whole], _without_last_rejection(corpus),
                      [f"item {p}" for p in range(whole)])
        last = corpus.rejected[-1]
        assert last.position == whole and "file ends" in last.reason, last.reason


def _without_last_rejection(corpus):
    return corpus_module.Corpus(corpus.records, corpus.rejected[:-1])


@PROPERTY
@given(fmt=st.sampled_from(["json", "jsonl"]), data=st.data())
def test_gzip_cut_short_is_a_prefix_and_one_rejection(fmt, data):
    entries = data.draw(corpora(raw_lines=fmt == "jsonl", top_level_numbers=False))
    if fmt == "json":
        raw, _ = json_array_bytes(entries, ascii_only=False, separator=b"\n")
        locations = [f"item {p}" for p in range(len(entries) + 1)]
    else:
        raw = b"\n".join(e.raw if e.raw is not None else encode_value(e.value, ascii_only=False)
                         for e in entries) + b"\n"
        locations = [f"line {p + 1}" for p in range(len(entries) + 1)]
    packed = gzip.compress(raw)
    cut = data.draw(st.integers(2, len(packed) - 1))  # 2: still recognisably gzip
    with folder() as tmp:
        path = tmp / f"cut.{fmt}.gz"
        path.write_bytes(packed[:cut])
        corpus = load_corpus(path)
        check_accounting(path, corpus)
        read = len(corpus) + len(corpus.rejected)
        assert read <= len(entries) + 1
        if fmt == "json" and read == len(entries) and corpus.rejected == [
                r for r in corpus.rejected if "cut short" not in r.reason]:
            # Cut inside the gzip trailer: the array closed, every item was read.
            check_against(entries, corpus, locations)
            return
        # Everything before the cut is read as it is; the cut itself is one rejection at the end.
        last = corpus.rejected[-1]
        assert last.position == read - 1 and "cut short" in last.reason, last.reason
        check_against(entries[: read - 1], _without_last_rejection(corpus), locations)


@PROPERTY
@given(rows=st.lists(st.tuples(st.one_of(st.none(), blank, filled), st.one_of(st.none(), filled),
                               st.one_of(st.none(), blank, filled)), max_size=20),
       instruction_as_int=st.booleans(), gz=st.booleans(), batch_size=st.integers(1, 6))
def test_parquet_accounts_for_every_row(rows, instruction_as_int, gz, batch_size):
    instructions = [None if i is None else len(i) for i, _, _ in rows] if instruction_as_int \
        else [i for i, _, _ in rows]
    table = pa.table({"instruction": instructions, "input": [x for _, x, _ in rows],
                      "output": [o for _, _, o in rows], "extra": list(range(len(rows)))})
    entries = []
    for (instruction, inp, output), value in zip(rows, instructions, strict=True):
        if value is None:
            entries.append(Entry(None, None, "missing field 'instruction'"))
        elif instruction_as_int:
            entries.append(Entry(None, None, "field 'instruction' must be a string, got int"))
        elif output is None:
            entries.append(Entry(None, None, "missing field 'output'"))
        elif not instruction.strip():
            entries.append(Entry(None, None, "empty instruction"))
        elif not output.strip():
            entries.append(Entry(None, None, "empty output"))
        else:
            entries.append(Entry(None, (instruction, inp or "", output), None))
    with folder() as tmp:
        plain = tmp / "rows.parquet"
        pq.write_table(table, plain)
        path = write_bytes(tmp, plain.read_bytes(), "parquet", gz=True) if gz else plain
        corpus = load_corpus(path)
        check_accounting(path, corpus, len(rows))
        check_against(entries, corpus, [f"item {p}" for p in range(len(rows))])
        check_batches(path, corpus, batch_size)


@PROPERTY
@given(raw=st.binary(max_size=600), fmt=st.sampled_from(["json", "jsonl", "parquet"]),
       gz=st.booleans())
def test_arbitrary_bytes_never_raise(raw, fmt, gz):
    with folder() as tmp:
        path = write_bytes(tmp, raw, fmt, gz=gz)
        check_accounting(path, load_corpus(path))


@PROPERTY
@given(entries=corpora(raw_lines=False), fmt=st.sampled_from(["json", "jsonl", "parquet"]),
       gz=st.booleans(), data=st.data())
def test_damaged_files_never_raise(entries, fmt, gz, data):
    """Flip, drop or insert bytes anywhere in a real file (compressed or not)."""
    if fmt == "parquet":
        # Extra fields of random types would not make one Parquet schema: keep the pairs.
        pairs = [dict(zip(("instruction", "input", "output"), e.expected, strict=True))
                 for e in entries if e.good]
        raw = encode(pairs or [{"instruction": "a", "output": "b"}], "parquet")
    else:
        raw = json_array_bytes(entries, False, b"\n")[0] if fmt == "json" else b"\n".join(
            encode_value(e.value, ascii_only=False) for e in entries)
    raw = bytearray(gzip.compress(raw) if gz else raw)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        action = data.draw(st.sampled_from(["flip", "drop", "insert"]))
        if action == "insert" or not raw:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        elif action == "drop":
            del raw[at: at + data.draw(st.integers(1, 64))]
        else:
            raw[at] ^= data.draw(st.integers(1, 255))
    with folder() as tmp:
        path = tmp / f"damaged.{fmt}{'.gz' if gz else ''}"
        path.write_bytes(bytes(raw))
        check_accounting(path, load_corpus(path))


def test_a_flipped_byte_anywhere_in_a_parquet_file_never_raises():
    """Every byte of a small Parquet file flipped in turn (found by the property above: a
    flip inside a column name made pyarrow raise UnicodeDecodeError, which escaped)."""
    raw = encode([{"instruction": "a", "input": "", "output": "b"},
                  {"instruction": "bb", "input": "x", "output": "cc"}], "parquet")
    with folder() as tmp:
        path = tmp / "flipped.parquet"
        for at in range(len(raw)):
            damaged = bytearray(raw)
            damaged[at] ^= 0x80
            path.write_bytes(bytes(damaged))
            check_accounting(path, load_corpus(path))


# --------------------------------------------------------------------------- huge fields

HUGE = 10 * 1024 * 1024


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet"])
def test_ten_megabyte_fields(tmp_path, fmt):
    huge = "ü" + "x" * HUGE + "ü"
    items = [{"instruction": "a", "output": "b"}, {"instruction": "Echo.", "output": huge},
             {"instruction": "a", "output": " " * HUGE}, {"instruction": "c", "output": "d"}]
    path = write_items(tmp_path, items, fmt)
    corpus = load_corpus(path)
    check_accounting(path, corpus, 4)
    assert corpus.records["position"].to_pylist() == [0, 1, 3]
    assert corpus.records["output"][1].as_py() == huge
    assert [r.reason for r in corpus.rejected] == ["empty output"]


def test_ten_megabyte_malformed_line(tmp_path):
    good = b'{"instruction": "a", "output": "b"}'
    bad = b'{"instruction": "a", "output": "' + b"x" * HUGE  # never closed
    path = write_bytes(tmp_path, b"\n".join([good, bad, good]), "jsonl")
    corpus = load_corpus(path)
    check_accounting(path, corpus, 3)
    assert [(r.location, len(r.reason) < 200) for r in corpus.rejected] == [("line 2", True)]


# --------------------------------------------------------------------------- writers


def rows_then(rows: list[dict], fail_at: int | None):
    """The rows, but a disk that fills up after ``fail_at`` of them."""
    for n, row in enumerate(rows):
        if n == fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        yield row


@PROPERTY
@given(rows=st.lists(st.dictionaries(st.text(max_size=6), json_value, max_size=4), max_size=30),
       data=st.data(), existing=st.booleans())
def test_write_jsonl_is_all_or_nothing(rows, data, existing):
    fail_at = data.draw(st.one_of(st.none(), st.integers(0, max(len(rows) - 1, 0))))
    if fail_at is not None and not rows:
        fail_at = None
    with folder() as tmp:
        out = tmp / "out.jsonl"
        if existing:
            out.write_bytes(b'{"old": true}\n')
        if fail_at is None:
            assert write_jsonl(out, rows_then(rows, None)) == len(rows)
            written = out.read_bytes().split(b"\n")
            assert written.pop() == b""  # every row ends its line
            assert [json.loads(line) for line in written] == rows
            # No line breaks other than "\n" either (U+2028 and kin split naive readers).
            assert all(len(line.decode("utf-8").splitlines()) == 1 for line in written)
        else:
            with pytest.raises(OSError) as err:
                write_jsonl(out, rows_then(rows, fail_at))
            assert err.value.errno == errno.ENOSPC
            if existing:
                assert out.read_bytes() == b'{"old": true}\n'
            else:
                assert not out.exists()
        assert sorted(p.name for p in tmp.iterdir()) == (["out.jsonl"] if out.exists() else [])
