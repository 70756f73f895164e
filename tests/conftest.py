"""Shared fixtures: small real data (ShareGPT pairs, the expert-revision CSVs)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest
from corpus_files import RUN_ARGS, write_mixed_corpus

from car_engine.corpus import load_corpus

# $CAR_ENGINE_DATA (as car_engine.iqs.robustness.default_valid_csv reads it) or ../shared/data
SHARED_DATA = Path(os.environ.get("CAR_ENGINE_DATA")
                   or Path(__file__).resolve().parents[1].parent / "shared" / "data")


@pytest.fixture(scope="session")
def reference_lm():
    """The default causal LM as transformers builds it (fp32): what the packed IFD body, which
    reads the weights itself, is held to."""
    from car_engine.models.registry import load_causal_model

    return load_causal_model("default", dtype="fp32")


@pytest.fixture(scope="session")
def sharegpt_records() -> pa.Table:
    """The first 500 real ShareGPT records (built-in corpus)."""
    return load_corpus("builtin:sharegpt", limit=520).records.slice(0, 500)


@pytest.fixture(scope="session")
def expert_revised_dir() -> Path:
    """../shared/data/expert-revised, or a clean skip when it is absent."""
    folder = SHARED_DATA / "expert-revised"
    if not (folder / "APE_score_valid.csv").is_file():
        pytest.skip(f"{folder} is absent: the IQS data lives in ../shared/data beside the repo")
    return folder


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, sharegpt_records) -> Path:
    """A small real JSONL corpus for whole runs: 90 ShareGPT pairs as Alpaca items with two
    bad lines and an exact duplicate mixed in (see corpus_files.write_mixed_corpus)."""
    return write_mixed_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl",
                              sharegpt_records)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, corpus) -> Path:
    """One clean, solo, local `car-engine run` of ``corpus`` with corpus_files.RUN_ARGS: what
    test_pipeline and test_rundir compare their runs with byte for byte (read-only: a test
    that changes a run folder copies it first). One run for both modules, not one each."""
    from car_engine.cli import main

    out = tmp_path_factory.mktemp("runs") / "reference"
    assert main(["run", str(corpus), "--out", str(out), *RUN_ARGS]) == 0
    return out
