"""`car-engine run` on inputs that used to give wrong or stale results, or blow up memory (#20):
conversations that open alike, a corpus edited in place, a rerun that fails, one huge record."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from car_engine import native
from car_engine.cli import main
from car_engine.config import RunConfig
from car_engine.corpus import pair_texts, records_from_items
from car_engine.dedup import content_hashes
from car_engine.pipeline.stages import read_stage

OPENING = [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi! How can I help?"}]
FOLLOW_UPS = [("What is 2+2?", "4."), ("Name a colour.", "Blue."), ("Capital of France?", "Paris.")]
ALPACA = {"instruction": "Write a haiku about rain.", "input": "", "output": "Soft rain."}
FINAL = ("selected.jsonl", "scores.parquet", "rejected.jsonl", "summary.json")
OUTPUTS = (*FINAL, "report.html", "iqs_hist.svg", "cluster_sizes.svg", "cluster_map.svg")


def conversation(question: str, answer: str) -> dict:
    return {"conversations": [*OPENING, {"from": "human", "value": question},
                              {"from": "gpt", "value": answer}]}


def write_jsonl(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """The issue's repro: three conversations opening alike, one Alpaca item, --n1 10."""
    folder = tmp_path_factory.mktemp("conv")
    corpus = write_jsonl(folder / "conv.jsonl", [*(conversation(*f) for f in FOLLOW_UPS), ALPACA])
    args = ["run", str(corpus), "--out", str(folder / "r"), "--n1", "10", "--quiet",
            "--no-report"]
    assert main(args) == 0
    return corpus, folder / "r", args


# ---------------------------------------------------------------- 1: conversations are content

def test_conversations_that_open_alike_are_not_duplicates():
    corpus = records_from_items([*(conversation(*f) for f in FOLLOW_UPS), ALPACA])
    hashes = content_hashes(corpus.records)
    assert len(set(hashes.tolist())) == 4
    # The same conversation again, differing only in case and whitespace, still is one.
    again = conversation("what  is 2+2?", "4.")
    twice = content_hashes(records_from_items([conversation(*FOLLOW_UPS[0]), again]).records)
    assert twice[0] == twice[1]
    # A turn's text cannot pass for a turn boundary, and roles count.
    moved = content_hashes(records_from_items([
        {"conversations": [*OPENING, {"from": "human", "value": "a b"},
                           {"from": "gpt", "value": "c"}]},
        {"conversations": [*OPENING, {"from": "human", "value": "a"},
                           {"from": "gpt", "value": "b c"}]},
        {"conversations": [*OPENING, {"from": "gpt", "value": "a"},
                           {"from": "human", "value": "b c"}]}]).records)
    assert len(set(moved.tolist())) == 3


def test_single_exchange_hash_is_unchanged(sharegpt_records):
    """A record of one exchange (Alpaca, or a two-turn conversation) hashes its pair text,
    exactly as before; a longer conversation hashes differently from its first exchange."""
    single = records_from_items([
        ALPACA, {"instruction": "Sum", "input": "2 and 2", "output": "4"},
        {"conversations": OPENING}, {"messages": [{"role": "user", "content": "Hello"},
                                                  {"role": "assistant", "content": "Hi!"}]}])
    want = native.hash_texts(pair_texts(single.records))
    assert content_hashes(single.records).tolist() == want.tolist()
    turns = [len(json.loads(t)) if t else 0 for t in sharegpt_records["turns"].to_pylist()]
    got = content_hashes(sharegpt_records)
    old = native.hash_texts(pair_texts(sharegpt_records))
    for n, h, o in zip(turns, got.tolist(), old.tolist()):
        assert (h == o) == (n <= 2)
    assert content_hashes(sharegpt_records.drop_columns(["turns"])).tolist() == old.tolist()


@pytest.mark.slow
def test_run_keeps_distinct_conversations(conv_run):
    corpus, out, _ = conv_run
    counts = json.loads((out / "summary.json").read_text())["counts"]
    assert counts["duplicates_collapsed"] == 0 and counts["selected"] == 4
    selected = [json.loads(x) for x in (out / "selected.jsonl").read_text().splitlines()]
    asked = {r["conversations"][2]["value"] for r in selected if "conversations" in r}
    assert asked == {q for q, _ in FOLLOW_UPS}
    items = [json.loads(x) for x in corpus.read_text().splitlines()]
    for row in selected:  # given back as they came (SPEC §6)
        assert {k: v for k, v in row.items() if k != "car_engine"} == \
            items[row["car_engine"]["position"]]


@pytest.mark.slow
def test_output_format_reruns_only_the_outputs(conv_run, tmp_path, capsys):
    """--output-format alpaca on picked conversations is exit 2 naming the first one; the
    stages stay, so another format only writes the outputs again (SPEC §6)."""
    _, out, args = conv_run
    copy = tmp_path / "r"
    shutil.copytree(out, copy)
    args = [*args[:2], "--out", str(copy), *args[4:]]
    first = json.loads((out / "selected.jsonl").read_text().splitlines()[0])
    conv = next(json.loads(x) for x in (out / "selected.jsonl").read_text().splitlines()
                if "conversations" in json.loads(x))
    capsys.readouterr()
    assert main([*args, "--output-format", "alpaca"]) == 2
    err = capsys.readouterr().err
    assert f"item '{conv['car_engine']['id']}'" in err and "cannot be converted" in err
    assert not (copy / "selected.jsonl").exists()  # nothing written for the failed format
    assert main([*args, "--output-format", "messages"]) == 0
    rows = [json.loads(x) for x in (copy / "selected.jsonl").read_text().splitlines()]
    assert rows[0]["car_engine"] == first["car_engine"]
    assert all("messages" in r and "conversations" not in r for r in rows)
    manifest = json.loads((copy / "stages" / "iqs" / "manifest.json").read_text())
    assert manifest == json.loads((out / "stages" / "iqs" / "manifest.json").read_text())


# ---------------------------------------------------------------- 2a: the corpus is its bytes

def shard_outputs(stage) -> list[str]:
    return [o for s in stage.info["shards"]
            for o in pq.read_table(stage.file(s), columns=["output"])["output"].to_pylist()]


def test_corpus_edited_in_place_is_read_again(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"instruction": "Name a colour.",
                                                 "output": "Blue."}, ALPACA])
    cfg = RunConfig()
    assert shard_outputs(read_stage(str(corpus), tmp_path / "r", cfg, False)) == [
        "Blue.", "Soft rain."]
    before = corpus.stat()
    # Edited in place, size and mtime kept (what cp -p, touch -r or a coarse clock leave).
    corpus.write_text(corpus.read_text().replace("Blue.", "Red!."))
    os.utime(corpus, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = corpus.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    stage = read_stage(str(corpus), tmp_path / "r", cfg, False)
    assert shard_outputs(stage) == ["Red!.", "Soft rain."]
    # Only touched, same bytes: the shards are reused, not read again.
    shard = stage.file(stage.info["shards"][0])
    written = shard.stat().st_mtime_ns
    os.utime(corpus)
    assert read_stage(str(corpus), tmp_path / "r", cfg, False).complete
    assert shard.stat().st_mtime_ns == written


# ---------------------------------------------------------------- 2b: a failed rerun is clean

def failed_rerun(conv_run, tmp_path, capsys, corpus: Path | None, *extra: str) -> tuple[Path, str]:
    source, reference, args = conv_run
    out = tmp_path / "r"
    shutil.copytree(reference, out)
    capsys.readouterr()
    code = main(["run", str(corpus or source), "--out", str(out), *args[4:], *extra])
    assert code != 0
    return out, capsys.readouterr().err


@pytest.mark.slow
def test_rerun_without_valid_records_leaves_no_stale_outputs(conv_run, tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "x", "output": ""}])
    out, err = failed_rerun(conv_run, tmp_path, capsys, bad)
    assert "no valid records" in err and "removed selected.jsonl" in err
    assert not [name for name in OUTPUTS if (out / name).exists()]


@pytest.mark.slow
def test_rerun_failing_late_leaves_no_stale_outputs(conv_run, tmp_path, capsys):
    out, err = failed_rerun(conv_run, tmp_path, capsys, None, "--k", "50")  # 4 records
    assert "removed selected.jsonl" in err
    assert not [name for name in OUTPUTS if (out / name).exists()]


@pytest.mark.slow
def test_rerun_of_a_missing_corpus_leaves_no_stale_outputs(conv_run, tmp_path, capsys):
    out, _ = failed_rerun(conv_run, tmp_path, capsys, tmp_path / "gone.jsonl")
    assert not [name for name in OUTPUTS if (out / name).exists()]


@pytest.mark.slow
def test_identical_rerun_keeps_its_outputs_byte_for_byte(conv_run, tmp_path, capsys):
    _, reference, args = conv_run
    out = tmp_path / "again"
    shutil.copytree(reference, out)
    capsys.readouterr()
    assert main([*args[:3], str(out), *args[4:]]) == 0
    assert "removed" not in capsys.readouterr().err
    for name in FINAL:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


# ---------------------------------------------------------------- 11: one huge record

def iqs_tokenizer():
    from car_engine.iqs.score import _tokenizer_of

    return _tokenizer_of("default")[0]


def lm_tokenizer():
    from transformers import AutoTokenizer

    from car_engine.models.registry import causal_lm_path

    return AutoTokenizer.from_pretrained(causal_lm_path("default"))


@pytest.mark.parametrize("load", [iqs_tokenizer, lm_tokenizer])
def test_tokens_are_those_of_the_whole_text(load, sharegpt_records):
    """Normal records tokenize exactly as before; a long text's kept tokens are the whole
    text's first ones; and the cut is a boundary: a prefix's tokens start the whole text's."""
    from car_engine.batching import prefix, tokenize

    tok = load()
    plain = {"truncation": True, "padding": False, "return_attention_mask": False,
             "return_token_type_ids": False}
    texts = pair_texts(sharegpt_records.slice(0, 200))
    for length in (64, 512):
        assert tokenize(tok, texts, length) == tok(texts, max_length=length, **plain)["input_ids"]
    long = [" ".join(texts[i:i + 40]) for i in range(0, 200, 40)]  # 50-170 kB each
    assert min(len(t) for t in long) > 512 * 64
    assert tokenize(tok, long, 512) == tok(long, max_length=512, **plain)["input_ids"]
    rng = random.Random(0)
    for text in texts[:60]:
        whole = tok(text, add_special_tokens=False)["input_ids"]
        for cut in rng.sample(range(1, len(text) + 1), min(4, len(text))):
            head = tok(prefix(text, cut), add_special_tokens=False)["input_ids"]
            assert whole[:len(head)] == head


def test_ifd_pairs_of_long_texts_are_as_from_the_whole_text(sharegpt_records):
    from car_engine.ifd_pairs import encode_pairs
    from car_engine.ifd_prompts import OK, PROMPT_TOO_LONG

    tok = lm_tokenizer()
    texts = sharegpt_records["output"].to_pylist()
    long = " ".join(texts[:60])
    records = pa.Table.from_pylist([
        {"id": "long-answer", "instruction": "Say a lot.", "input": "", "output": long},
        {"id": "long-prompt", "instruction": long, "input": "", "output": "Fine."}])
    answer, prompt = encode_pairs(tok, records, template="none", max_length=256)
    whole = tok(long, add_special_tokens=False)["input_ids"]
    head = tok("Say a lot.\n", add_special_tokens=False)["input_ids"]
    keep = whole[:256 - 1 - len(head)]
    assert answer.status == OK and answer.truncated and answer.n_answer == len(keep)
    assert answer.cond_ids == [tok.bos_token_id, *head, *keep]
    assert answer.direct_ids == [tok.bos_token_id, *keep]
    assert prompt.status == PROMPT_TOO_LONG and prompt.n_answer == 0 and prompt.truncated


MEMORY = """
import resource, sys
import pyarrow as pa
from transformers import AutoTokenizer
from car_engine.embed import Embedder
from car_engine.ifd_pairs import encode_pairs
from car_engine.iqs.score import IQSScorer
from car_engine.models.registry import causal_lm_path

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def inputs(answer):
    texts = [*small, "Instruction: Write a lot. Input:  Response: " + answer]
    records = pa.table({"id": ["0", "1"], "instruction": ["Write a lot.", "Hi"],
                        "input": ["", ""], "output": [answer, "Hello."]})
    return texts, records

def score(texts, records):
    iqs.score_texts(texts, progress=False)
    embedder.embed(texts, progress=False)
    encode_pairs(lm, records, template="none", max_length=512)

iqs, embedder = IQSScorer.load("default"), Embedder("default")
lm = AutoTokenizer.from_pretrained(causal_lm_path("default"))
small = ["Instruction: Name a colour. Input:  Response: Blue."] * 4
score(*inputs("Blue."))
sentence = "Lorem ipsum dolor sit amet, consectetur adipiscing elit."
for mb in (10, 100):
    texts, records = inputs(" ".join([sentence] * (mb * 2**20 // 57)))
    base = peak_mb()  # the models, a small batch scored, and the big inputs themselves
    score(texts, records)
    grown = peak_mb() - base
    print(f"{mb} MB answer: peak RSS +{grown:.0f} MB", flush=True)
    if grown > float(sys.argv[1]):
        sys.exit(1)
"""


@pytest.mark.slow
def test_one_huge_record_costs_what_a_normal_one_does():
    """IQS, the embedder and IFD's tokenization of a 10 MB and a 100 MB answer peak at little
    more than a small batch (IFD copies the answer out of Arrow once); tokenizing the whole
    text took 2 GB at 10 MB."""
    done = subprocess.run([sys.executable, "-c", MEMORY, "400"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TOKENIZERS_PARALLELISM":
                                                       "false"})
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert "100 MB answer" in done.stdout

