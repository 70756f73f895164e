"""Hostile input, unsafe model files, output faults: the CLI answers with one line and a
documented exit code, never a traceback, and accounts for every item."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from car_engine.cli import main
from car_engine.errors import EXIT_CODES

GOOD = {"instruction": "Name a colour.", "input": "", "output": "Blue."}

# Lines a user's JSONL may hold, each with whether it is a good item.
BAD_LINES = st.sampled_from([
    b'{"instruction": "cut',                                   # malformed JSON
    b'{"instruction": 3, "output": "x"}',                      # wrong type
    b'{"instruction": "no output"}',                           # missing field
    b'{"instruction": "x", "output": ""}',                     # empty output
    b'{"instruction": "x", "output": "\xff\xfe bad utf-8"}',   # invalid UTF-8
    b'{"instruction": "nul \x00", "output": "y"}',             # raw NUL byte in a string
    b"[" * 5000 + b"]" * 5000,                                 # deep nesting
    b'"just a string"',                                        # not an object
    b'{"conversations": [{"from": "gpt", "value": "hi"}]}',    # no user turn
    b'{"messages": "not a list"}',
])
GOOD_LINES = st.builds(
    lambda text, extra: json.dumps({**GOOD, "output": text or "x", **extra}).encode(),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"),  # NUL: a bad item
            min_size=1, max_size=40).filter(str.strip),
    st.dictionaries(st.sampled_from(["extra", "meta", "score"]), st.integers(), max_size=2),
)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "car_engine.cli", *args], capture_output=True,
                          text=True, timeout=300)


@given(st.lists(st.tuples(st.booleans(), GOOD_LINES, BAD_LINES), min_size=1, max_size=25))
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_validate_accounts_for_every_line(tmp_path, lines):
    corpus = tmp_path / "corpus.jsonl"
    chosen = [good if keep_good else bad for keep_good, good, bad in lines]
    corpus.write_bytes(b"\n".join(chosen) + b"\n")
    rejected_path = tmp_path / "rejected.jsonl"
    assert main(["validate", str(corpus), "--rejected", str(rejected_path)]) == 0
    rejected = [json.loads(x) for x in rejected_path.read_text().splitlines()]
    bad_numbers = {f"line {i + 1}" for i, (keep_good, _, _) in enumerate(lines) if not keep_good}
    assert {r["location"] for r in rejected} == bad_numbers
    assert all(r["source"] == str(corpus) and r["reason"] for r in rejected)


def test_strict_mode_is_one_line_naming_file_and_line(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps(GOOD) + '\n{"instruction": "x", "output": ""}\n')
    proc = run_cli("validate", str(corpus), "--strict")
    assert proc.returncode == 3
    assert proc.stderr.strip() == (f"car-engine validate: error: {corpus} line 2: empty output")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("content,expect", [
    (b"", "0 items"),
    (gzip.compress(b"\n".join(json.dumps(GOOD).encode() for _ in range(2000)))[:3000],
     "rejected"),
])
def test_empty_and_cut_gzip_files_are_reported_not_raised(tmp_path, content, expect):
    corpus = tmp_path / "corpus.jsonl.gz"
    corpus.write_bytes(content)
    proc = run_cli("validate", str(corpus))
    assert proc.returncode == 0, proc.stderr
    assert expect in proc.stdout


def test_unknown_format_and_missing_file_are_exit_3(tmp_path):
    (tmp_path / "corpus.csv").write_text("a,b\n")
    for path in (tmp_path / "corpus.csv", tmp_path / "missing.jsonl"):
        proc = run_cli("validate", str(path))
        assert proc.returncode == 3 and len(proc.stderr.strip().splitlines()) == 1
        assert str(path) in proc.stderr


def test_run_with_no_valid_record_is_a_clear_error(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"instruction": "x", "output": ""}\n')
    proc = run_cli("run", str(corpus), "--out", str(tmp_path / "run"), "--quiet")
    assert proc.returncode == 3
    assert "no valid records" in proc.stderr and "Traceback" not in proc.stderr


def test_exit_codes_are_documented_in_help():
    proc = run_cli("--help")
    for code in EXIT_CODES:
        assert f"{code} " in proc.stdout


# ----------------------------------------------------------------------- unsafe model files


class Exploit:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_weights_in_a_model_folder_are_refused(tmp_path):
    from car_engine.errors import ModelError
    from car_engine.models.registry import minilm_path, safe_model_folder

    marker = tmp_path / "pwned"
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        (folder / name).write_bytes((minilm_path() / name).read_bytes())
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"weight": Exploit(marker)}, f)
    with pytest.raises(ModelError, match="pickle"):
        safe_model_folder(folder)
    (tmp_path / "c.jsonl").write_text(json.dumps(GOOD) + "\n")
    proc = run_cli("embed", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "e.npy"),
                   "--model", str(folder))
    assert proc.returncode == 5, proc.stderr
    assert "pickle" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_pickled_checkpoint_code_never_runs(tmp_path):
    from car_engine.errors import ModelError
    from car_engine.iqs.checkpoint import load_comet_checkpoint

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "checkpoints" / "model.ckpt"
    ckpt.parent.mkdir()
    with open(ckpt, "wb") as f:
        pickle.dump({"state_dict": Exploit(marker)}, f)
    (tmp_path / "hparams.yaml").write_text("pretrained_model: xlm-roberta-large\n")
    with pytest.raises(ModelError):
        load_comet_checkpoint(ckpt)
    assert not marker.exists()


# ----------------------------------------------------------------------- output faults

_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
from car_engine.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_output_that_cannot_be_written_leaves_no_final_file(tmp_path):
    scores = tmp_path / "scores.jsonl"
    clusters = tmp_path / "clusters.jsonl"
    scores.write_text("".join(json.dumps({"id": f"r{i}", "iqs": i / 7, "instruction": "q" * 50,
                                          "input": "", "output": f"a{i}" * 30}) + "\n"
                              for i in range(2000)))
    clusters.write_text("".join(json.dumps({"id": f"r{i}", "cluster": i % 40}) + "\n"
                                for i in range(2000)))
    out = tmp_path / "out" / "selected.jsonl"
    proc = subprocess.run([sys.executable, "-c", _LIMITED, "select", "--scores", str(scores),
                           "--clusters", str(clusters), "--out", str(out), "--n1", "1500"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not out.exists() and not list(out.parent.glob("*"))  # no final, no temp left

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = run_cli("select", "--scores", str(scores), "--clusters", str(clusters),
                   "--out", str(blocker / "selected.jsonl"))
    assert proc.returncode == 4 and str(blocker) in proc.stderr


# ----------------------------------------------------------------------- very long records

_LONG_RECORD = """
import math, resource, sys
from car_engine.corpus import records_from_items
from car_engine.embed import Embedder
from car_engine.ifd import IFDScorer
from car_engine.iqs import IQSScorer
answer = ("A very long answer, repeated. " * 40_000)[:1_000_000]   # 1 MB
records = records_from_items([{"instruction": "Write at length.", "output": answer}]).records
iqs = IQSScorer.load("default").score(records, progress=False)["iqs"][0].as_py()
ifd = IFDScorer("default", max_length=128).score(records, progress=False).to_pylist()[0]
vector = Embedder("default").embed([answer], progress=False)[0]
assert math.isfinite(iqs), iqs
assert ifd["status"] == "ok" and ifd["truncated"] and ifd["n_tokens"] < 128, ifd
assert abs(float((vector ** 2).sum()) - 1) < 1e-4
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


@pytest.mark.slow
def test_one_megabyte_answer_is_truncated_by_every_scorer():
    proc = subprocess.run([sys.executable, "-c", _LONG_RECORD], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) < 6_000  # MB: truncation keeps the tensors small
