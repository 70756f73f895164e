"""The restructure changed no output: `car-engine run` on fixed slices of builtin:sharegpt gives
the selected.jsonl and scores.parquet recorded from the code before it (tests/data/golden)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from car_engine.cli import main

GOLDEN = Path(__file__).parent / "data" / "golden"
# The golden outputs were recorded with the IQS model shipped before issue #21; it is kept
# in tests/data/iqs_v1 so this test still pins the pipeline (not the model) exactly.
OLD_IQS = ["--iqs-model", str(Path(__file__).parent / "data" / "iqs_v1")]
# Recorded before conversations were scored turn by turn: --turns first is that behaviour.
COMMON = ["--quiet", "--no-report", "--turns", "first", *OLD_IQS]
CAR = ["--limit", "160", "--shard-size", "60", "--n1", "12", "--n2", "1"]
SMALL = ["--limit", "30", "--shard-size", "12"]

pytestmark = pytest.mark.slow  # the default models, three methods


def assert_same_outputs(run_dir: Path, name: str) -> None:
    want = GOLDEN / name
    assert (run_dir / "selected.jsonl").read_bytes() == (want / "selected.jsonl").read_bytes()
    got = pq.read_table(run_dir / "scores.parquet")
    expected = pq.read_table(want / "scores.parquet")
    assert got.schema == expected.schema
    assert got.equals(expected)


def test_car_is_unchanged(tmp_path):
    out = tmp_path / "car"
    assert main(["run", "builtin:sharegpt", *CAR, *COMMON, "--out", str(out)]) == 0
    assert_same_outputs(out, "car")


def test_car_ifd_and_ifd_are_unchanged(tmp_path):
    both = tmp_path / "carifd"
    assert main(["run", "builtin:sharegpt", *SMALL, "--n1", "4", "--n2", "1",
                 "--method", "car+ifd", *COMMON, "--out", str(both)]) == 0
    assert_same_outputs(both, "carifd")
    # The ifd run reuses the same read and IFD stages (same fingerprints): only selection runs.
    ifd = tmp_path / "ifd"
    shutil.copytree(both, ifd)
    assert main(["run", "builtin:sharegpt", *SMALL, "--ifd-frac", "0.2", "--method", "ifd",
                 *COMMON, "--out", str(ifd)]) == 0
    assert_same_outputs(ifd, "ifd")


def test_keep_equal_one_labels_what_it_drops(tmp_path):
    """car+ifd --keep-equal-one drops only IFD > 1 and says so (it used to say ">= 1")."""
    from car_engine.select import WHY_MISALIGNED, WHY_MISALIGNED_STRICT

    out = tmp_path / "strict"
    args = ["run", "builtin:sharegpt", *SMALL, "--n1", "4", "--n2", "1", "--method", "car+ifd",
            *COMMON, "--out", str(out)]
    assert main(args) == 0
    assert main([*args, "--keep-equal-one"]) == 0  # selection only: the stages are reused
    scores = pq.read_table(out / "scores.parquet").to_pylist()
    dropped = [r for r in scores if r["ifd_ppl"] is not None and r["ifd_ppl"] > 1]
    assert dropped, "the slice must hold a record with IFD > 1"
    assert {r["why"] for r in dropped} == {WHY_MISALIGNED_STRICT}
    assert WHY_MISALIGNED not in {r["why"] for r in scores}
