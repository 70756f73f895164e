"""Issue #20: the CLI's answers to hostile input and bad flags. Every scorer subcommand treats
a corpus with no valid record alike; every bad flag is a one-line usage error before any model
loads; an unreadable file is exit 3 wherever a corpus is read; an output that cannot be
written names its final path, never a temp file."""

from __future__ import annotations

import errno
import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from car_engine import config
from car_engine.cli import main
from car_engine.config import ClusterParams, EmbedParams, IFDParams, IQSParams, RunConfig
from car_engine.corpus import load_corpus
from car_engine.errors import UsageError, exit_code_for

GOOD = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
BAD = {"instruction": "x", "output": ""}
SCORERS = {  # subcommand -> its arguments after the corpus
    "iqs": ["score"], "ifd": [], "embed": [],
}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "car_engine.cli", *args], capture_output=True,
                          text=True, timeout=600)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the CLI run in this process."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def scorer_args(command: str, corpus: Path, out_dir: Path) -> list[str]:
    out = out_dir / ("e.npy" if command == "embed" else "s.jsonl")
    return [command, *SCORERS[command], str(corpus), "--out", str(out)]


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def jsonl(path: Path, items: list) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


@pytest.fixture
def no_models(monkeypatch):
    """Loading any model fails the test: the checks must all come before that."""
    import car_engine.embed
    import car_engine.ifd
    import car_engine.iqs
    import car_engine.pipeline

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded (or the pipeline started)")

    monkeypatch.setattr(car_engine.iqs.IQSScorer, "load", loaded)
    monkeypatch.setattr(car_engine.ifd, "IFDScorer", loaded)
    monkeypatch.setattr(car_engine.embed, "embed_records", loaded)
    monkeypatch.setattr(car_engine.pipeline, "run", loaded)


# ----------------------------------------------------------------- 4. scorers on no records


@pytest.mark.parametrize("command", SCORERS)
@pytest.mark.parametrize("case", ["empty file", "--limit 0", "every item rejected"])
def test_scorers_on_no_record_are_exit_3_before_any_model(tmp_path, capsys, no_models,
                                                           command, case):
    corpus = tmp_path / "corpus.jsonl"
    jsonl(corpus, {"empty file": [], "--limit 0": [GOOD], "every item rejected": [BAD, BAD]}[case])
    args = scorer_args(command, corpus, tmp_path) + (["--limit", "0"] if case == "--limit 0"
                                                      else [])
    code, _, err = cli(capsys, *args)
    assert code == 3, err
    line = one_line_error(err)
    assert "no valid record" in line and str(corpus) in line
    assert not list(tmp_path.glob("s.*")) and not list(tmp_path.glob("e.*"))


def test_iqs_score_of_no_text_is_empty_not_index_error():
    from car_engine.iqs import IQSScorer

    class Tokenizer:  # as a Hugging Face one: IndexError on an empty batch
        pad_token_id = 0

        def __call__(self, texts, **kwargs):
            return {"input_ids": [[1] * len(texts[0])] * len(texts)}

    scorer = IQSScorer(lambda ids, mask: ids.sum(axis=1), Tokenizer(), max_length=8)
    assert scorer.score_texts([], progress=False).shape == (0,)


def test_iqs_score_checks_out_before_loading_anything(tmp_path, capsys, no_models):
    corpus = jsonl(tmp_path / "c.jsonl", [GOOD])
    code, _, err = cli(capsys, "iqs", "score", str(corpus), "--out", str(tmp_path / "s.csv"))
    assert code == 2
    assert "--out" in one_line_error(err) and "s.csv" in err


@pytest.mark.slow
def test_iqs_score_says_how_many_items_were_rejected(tmp_path):
    corpus = jsonl(tmp_path / "c.jsonl", [GOOD, BAD, dict(GOOD, output="Red."), BAD])
    proc = run_cli("iqs", "score", str(corpus), "--out", str(tmp_path / "s.jsonl"))
    assert proc.returncode == 0, proc.stderr
    assert "2 records scored" in proc.stdout and "2 rejected" in proc.stdout


# ----------------------------------------------------------------- 8. flags, exit codes


@pytest.mark.parametrize("command", ["validate", "iqs", "ifd", "embed", "run"])
def test_negative_limit_is_a_usage_error_everywhere(tmp_path, capsys, no_models, command):
    corpus = jsonl(tmp_path / "c.jsonl", [GOOD])
    if command == "validate":
        args = ["validate", str(corpus)]
    elif command == "run":
        args = ["run", str(corpus), "--out", str(tmp_path / "run")]
    else:
        args = scorer_args(command, corpus, tmp_path)
    code, _, err = cli(capsys, *args, "--limit", "-1")
    assert code == 2, err
    assert "--limit" in one_line_error(err)


@pytest.mark.parametrize("flags, flag", [
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**31)], "--seed"),  # FAISS takes a C int
    (["--k", "0"], "--k"),
    (["--pca-var", "0"], "--pca-var"),
    (["--pca-dim", "0"], "--pca-dim"),
    (["--iqs-batch-size", "0"], "--iqs-batch-size"),
    (["--embed-batch-size", "0"], "--embed-batch-size"),
    (["--iqs-precision", "bf16"], "--iqs-precision"),  # onnx has no bf16
    (["--method", "ifd", "--max-length", "1"], "--max-length"),
    (["--method", "ifd", "--batch-tokens", "0"], "--batch-tokens"),
    (["--method", "ifd", "--compat", "cherry", "--template", "vicuna"], "--compat"),
])
def test_run_flags_are_checked_before_any_model(tmp_path, capsys, no_models, flags, flag):
    corpus = jsonl(tmp_path / "c.jsonl", [GOOD])
    code, _, err = cli(capsys, "run", str(corpus), "--out", str(tmp_path / "run"), *flags)
    assert code == 2, err
    assert flag in one_line_error(err)


@pytest.mark.parametrize("flags, flag", [
    (["--seed", "-1"], "--seed"), (["--k", "0"], "--k"), (["--n-init", "0"], "--n-init"),
])
def test_cluster_flags_are_checked_before_reading(tmp_path, capsys, flags, flag):
    code, _, err = cli(capsys, "cluster", str(tmp_path / "absent.npy"), "--out",
                       str(tmp_path / "c.parquet"), *flags)
    assert code == 2, err
    assert flag in one_line_error(err)


def test_cluster_out_extension_is_checked_before_clustering(tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "e.npy", np.random.default_rng(0).random((8, 4), dtype=np.float32))
    code, _, err = cli(capsys, "cluster", str(tmp_path / "e.npy"), "--out",
                       str(tmp_path / "c.csv"))
    assert code == 2 and "--out" in one_line_error(err)


def test_check_k_is_there_for_the_pipeline():
    config.check_k(None, 3)
    config.check_k(3, 3)
    with pytest.raises(UsageError, match=r"--k 4 .*3 records"):
        config.check_k(4, 3)


def test_stage_params_refuse_what_their_stage_would():
    for params, flag in [
        (IQSParams(runtime="torch", precision="int8"), "--iqs-precision"),
        (IQSParams(runtime="tensorrt"), "--iqs-runtime"),
        (IFDParams(template="chatml"), "--template"),
        (IFDParams(dtype="fp16"), "--ifd-dtype"),
        (EmbedParams(dtype="int8"), "--embed-dtype"),
        (ClusterParams(pca_var=1.5), "--pca-var"),
    ]:
        with pytest.raises(UsageError, match=flag):
            params.check()
    for params in (IQSParams(), IQSParams(runtime="torch", precision="bf16"), IFDParams(),
                   IFDParams(compat="cherry"), EmbedParams(), ClusterParams(), RunConfig()):
        params.check()  # the defaults, and what the stages take, pass
    # A stage the method does not run is not checked: its flags change nothing.
    RunConfig(method="ifd", seed=-1).check()


def test_config_compat_templates_match_the_ifd_presets():
    from car_engine.ifd import resolve_preset

    assert config.IFD_COMPAT_TEMPLATES == {name: resolve_preset("none", name)
                                           for name in config.IFD_COMPAT}


@pytest.mark.parametrize("command", ["validate", "iqs", "ifd", "embed", "cluster"])
def test_a_directory_as_input_says_so(tmp_path, capsys, no_models, command):
    folder = tmp_path / "corpus"
    folder.mkdir()
    if command == "validate":
        args = ["validate", str(folder)]
    elif command == "cluster":
        args = ["cluster", str(folder), "--out", str(tmp_path / "c.parquet")]
    else:
        args = scorer_args(command, folder, tmp_path)
    code, _, err = cli(capsys, *args)
    assert code == 3, err
    line = one_line_error(err)
    assert "is a directory" in line and str(folder) in line


@pytest.mark.parametrize("below", [False, True])
def test_run_out_at_a_file_is_one_line_naming_the_flag(tmp_path, capsys, no_models, below):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    out = blocker / "run" if below else blocker
    code, _, err = cli(capsys, "run", str(jsonl(tmp_path / "c.jsonl", [GOOD])), "--out", str(out))
    assert code == 4, err
    line = one_line_error(err)
    assert "--out" in line and str(out) in line and "is a file" in line


def test_output_below_a_file_names_the_file_in_the_way(tmp_path):
    from car_engine.io import write_jsonl

    blocker = tmp_path / "afile"
    blocker.write_text("")
    with pytest.raises(NotADirectoryError) as err:
        write_jsonl(blocker / "sub" / "x.jsonl", [GOOD])
    code, message = exit_code_for(err.value)
    assert code == 4 and f"{blocker} is a file" in message


@pytest.mark.parametrize("fault", ["mkstemp", "replace"])
def test_unwritable_output_names_the_final_path_not_the_temp_file(tmp_path, monkeypatch, fault):
    import car_engine.io as io

    out = tmp_path / "x.jsonl"
    real_replace = io.os.replace

    def denied(tmp_name, *also):  # what the OS says: the temp file's name
        raise PermissionError(errno.EACCES, "Permission denied", tmp_name, *also)

    if fault == "mkstemp":
        monkeypatch.setattr(io.tempfile, "mkstemp",
                            lambda **kw: denied(str(tmp_path / ".x.jsonl.abcd1234.tmp")))
    else:
        monkeypatch.setattr(io.os, "replace", lambda src, dst: denied(src, dst)
                            if Path(dst) == out else real_replace(src, dst))
    with pytest.raises(PermissionError) as err:
        io.write_jsonl(out, [GOOD])
    code, message = exit_code_for(err.value)
    assert (code, message) == (4, f"Permission denied ({out})")
    assert not out.exists() and not list(tmp_path.glob(".x.jsonl.*"))


def test_unwritable_folder_names_the_output(tmp_path, capsys):
    chattr = shutil.which("chattr")
    folder = tmp_path / "locked"
    folder.mkdir()
    if chattr is None or subprocess.run([chattr, "+i", str(folder)]).returncode != 0:
        pytest.skip("needs chattr +i to make a folder unwritable")
    try:
        out = folder / "rejected.jsonl"
        code, _, err = cli(capsys, "validate", str(jsonl(tmp_path / "c.jsonl", [BAD])),
                           "--rejected", str(out))
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)
    assert code == 4
    line = one_line_error(err)
    assert line.endswith(f"({out})") and ".tmp" not in line


def test_cluster_on_a_jsonl_file_says_it_is_not_npy(tmp_path, capsys):
    corpus = jsonl(tmp_path / "c.jsonl", [GOOD])
    code, _, err = cli(capsys, "cluster", str(corpus), "--out", str(tmp_path / "c.parquet"))
    assert code == 3
    line = one_line_error(err)
    assert "not a .npy file" in line and str(corpus) in line and "pickle" not in line


# ----------------------------------------------------------------- 9. escaped NUL


@pytest.mark.parametrize("item, field", [
    ({"instruction": "a\u0000b", "output": "y"}, "instruction"),
    ({"instruction": "x", "input": "\u0000", "output": "y"}, "input"),
    ({"id": "r\u00001", "instruction": "x", "output": "y"}, "id"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a\u0000"}]},
     "conversations[1].value"),
])
def test_escaped_nul_is_rejected_naming_the_field(tmp_path, item, field):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(item) + "\n")
    assert "\\u0000" in path.read_text()
    corpus = load_corpus(path)
    assert corpus.records["id"].to_pylist() == ["0"]
    [rejection] = corpus.rejected
    assert rejection.location == "line 2"
    assert f"NUL character in '{field}'" in rejection.reason


def test_nul_in_a_parquet_string_is_rejected_too(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"instruction": ["a", "b\x00"], "output": ["c", "d"]}), path)
    corpus = load_corpus(path)
    assert len(corpus) == 1
    assert [r.reason for r in corpus.rejected] == ["NUL character in 'instruction' at character 1"]


# ----------------------------------------------------------------- 10. validate accounting


UNREADABLE = {
    "not parquet": ("bad.parquet", b"x\n"),
    "json object": ("obj.json", json.dumps(GOOD).encode()),
    "gzip cut before any item": ("cut.jsonl.gz", gzip.compress(json.dumps(GOOD).encode())[:4]),
    "gzip json cut before any item": ("cut.json.gz", gzip.compress(b"[]")[:4]),
}


@pytest.mark.parametrize("case", UNREADABLE)
def test_validate_fails_on_a_file_that_cannot_be_read_at_all(tmp_path, capsys, case):
    name, data = UNREADABLE[case]
    path = tmp_path / name
    path.write_bytes(data)
    code, out, err = cli(capsys, "validate", str(path))
    assert code == 3, out
    assert str(path) in one_line_error(err)


@pytest.mark.parametrize("command", SCORERS)
def test_scorers_fail_on_a_file_that_cannot_be_read_at_all(tmp_path, capsys, no_models, command):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"x\n")
    code, _, err = cli(capsys, *scorer_args(command, path, tmp_path))
    assert code == 3
    line = one_line_error(err)
    assert "not a readable Parquet file" in line and str(path) in line


def test_a_corpus_without_read_permission_is_exit_3(tmp_path, capsys, monkeypatch):
    from car_engine.corpus import formats

    corpus = jsonl(tmp_path / "c.jsonl", [GOOD])

    def denied(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(formats, "open", denied, raising=False)  # root reads anything
    code, _, err = cli(capsys, "validate", str(corpus))
    assert code == 3
    assert f"{corpus}: cannot be read: Permission denied" in one_line_error(err)


def test_the_library_still_reads_an_unreadable_file_as_one_rejection(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"x\n")
    corpus = load_corpus(path)
    assert len(corpus) == 0 and len(corpus.rejected) == 1
    with pytest.raises(Exception, match="not a readable Parquet file"):
        load_corpus(path, fail_unreadable=True)


def test_bad_items_in_a_readable_file_are_still_counted_not_fatal(tmp_path, capsys):
    corpus = jsonl(tmp_path / "c.jsonl", [GOOD, BAD])
    code, out, _ = cli(capsys, "validate", str(corpus))
    assert code == 0 and "2 items, 1 records, 1 rejected" in out


def test_trailing_comma_is_malformed_but_invents_no_item(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(f"[{json.dumps(GOOD)}, {json.dumps(dict(GOOD, output='Red.'))},]")
    rejected = tmp_path / "rejected.jsonl"
    code, out, _ = cli(capsys, "validate", str(path), "--rejected", str(rejected))
    assert code == 0
    assert f"{path}: 2 items, 2 records, 0 rejected" in out
    assert "trailing comma" in out and "item 2" not in out
    [row] = [json.loads(x) for x in rejected.read_text().splitlines()]
    assert row["item"] is False and row["location"] == "item 1"
    assert "malformed JSON" in row["reason"]
    corpus = load_corpus(path)
    assert corpus.records["output"].to_pylist() == ["Blue.", "Red."]


# ----------------------------------------------------------------- cosmetic: --quiet


@pytest.mark.slow
def test_quiet_run_prints_no_hugging_face_progress_bars(tmp_path):
    corpus = jsonl(tmp_path / "c.jsonl", [dict(GOOD, output=f"Colour {n}.") for n in range(4)])
    proc = run_cli("run", str(corpus), "--out", str(tmp_path / "run"), "--quiet", "--no-report",
                   "--n1", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Loading weights" not in proc.stderr and "it/s" not in proc.stderr, proc.stderr
