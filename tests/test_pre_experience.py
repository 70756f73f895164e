"""Cherry LLM's pre-experience subset: the sampling rule against a literal restatement of
data_by_cluster.py on fixed labels, the instruction-only pass against the batch-1 HF way, and
the two commands that draw the subset (`select --pre-experience`, `run --method
pre-experience`)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from car_engine.cli import main
from car_engine.ifd import IFDScorer
from car_engine.pre_experience import instruction_ids, instruction_pass
from car_engine.reference.pre_experience import reference_instruction_pass
from car_engine.reference.select_pre import sample_middle
from car_engine.select_pre import WHY_PRE, select_pre_experience


@pytest.mark.parametrize("seed", range(6))
def test_sampling_matches_data_by_cluster_on_fixed_labels(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 12))
    n = int(rng.integers(40, 400))
    labels = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])  # every label present
    rng.shuffle(labels)
    ppl = np.exp(rng.normal(2, 1, n))
    if seed % 2:  # ties: perplexities on a coarse grid, so percentiles land on equal values
        ppl = np.round(ppl)
    for per_cluster, low, high in [(10, 25, 75), (3, 1, 99), (7, 0, 100), (50, 40, 60)]:
        got = select_pre_experience(ppl, labels, per_cluster=per_cluster, low=low, high=high)
        want = sample_middle(labels, ppl, per_cluster, low, high)
        assert got.order.tolist() == want
        assert set(got.why[got.order]) <= {WHY_PRE}


def test_sampling_edge_cases():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    ppl = np.array([5.0, 1.0, 3.0, 9.0, 2.0, np.nan, 4.0, 6.0, 8.0, 7.0])
    for n in (1, 2, 3, 4):
        got = select_pre_experience(ppl, labels, per_cluster=n, low=25, high=75)
        assert got.order.tolist() == sample_middle(labels, ppl, n)
    # a negative label is no cluster: never drawn (the script has no such rows)
    got = select_pre_experience(ppl, np.where(labels == 1, -1, 0), per_cluster=2, low=25,
                                high=75)
    assert set(got.order.tolist()) <= {0, 1, 2}


@pytest.mark.slow
@pytest.mark.parametrize("compat", [None, "cherry"])
def test_instruction_pass_matches_the_batch1_forward(sharegpt_records, compat, reference_lm):
    records = sharegpt_records.slice(0, 6)
    scorer = IFDScorer("default", compat=compat, max_length=64)
    got = instruction_pass(scorer, records, progress=False)
    ids = instruction_ids(scorer, records)
    if compat is None:
        assert all(seq[0] == scorer.tokenizer.bos_token_id for seq in ids)
    else:  # the script's call: the Alpaca prompt, SmolLM2's tokenizer adds no BOS
        assert ids[0] == scorer.tokenizer.encode(
            "Below is an instruction that describes a task. Write a response that "
            "appropriately completes the request.\n\n### Instruction:\n"
            + records["instruction"][0].as_py() + "\n\n### Response:",
            truncation=True, max_length=64)
    ppl, vectors = reference_instruction_pass(reference_lm, ids)
    np.testing.assert_allclose(got.ppl, ppl, rtol=1e-4)
    np.testing.assert_allclose(got.vectors, vectors, atol=1e-4, rtol=1e-4)
    assert got.n_tokens.tolist() == [len(s) for s in ids]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, sharegpt_records):
    path = tmp_path_factory.mktemp("pre") / "pairs.jsonl"
    rows = sharegpt_records.slice(0, 24).to_pylist()
    path.write_text("".join(json.dumps({"id": r["id"], "instruction": r["instruction"],
                                        "output": r["output"]}) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_select_and_run_draw_the_subset(tmp_path, small_corpus):
    common = ["--max-length", "64", "--pre-k", "3", "--pre-per-cluster", "2", "--quiet"]
    out = tmp_path / "pre.jsonl"
    assert main(["select", "--pre-experience", "--corpus", str(small_corpus), "--out",
                 str(out), *common]) == 0
    picked = [json.loads(line) for line in out.read_text().splitlines()]
    assert 3 <= len(picked) <= 6
    clusters = [r["cluster"] for r in picked]
    assert clusters == sorted(clusters)  # cluster after cluster, as data_by_cluster.py writes
    assert all(r["selected_by"] == "pre-experience" and r["instruction_ppl"] > 0
               for r in picked)

    run_dir = tmp_path / "run"
    assert main(["run", str(small_corpus), "--method", "pre-experience", "--out", str(run_dir),
                 *common]) == 0
    assert "instruction_ppl" in (run_dir / "report.html").read_text()
    scores = pq.read_table(run_dir / "scores.parquet")
    assert {"instruction_ppl", "cluster", "why"} <= set(scores.column_names)
    selected = [json.loads(line) for line in (run_dir / "selected.jsonl").read_text()
                .splitlines()]
    # same pass, same seed
    assert [r["car_engine"]["id"] for r in selected] == [r["id"] for r in picked]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["counts"]["selected"] == len(selected)


def test_bad_pre_experience_flags_are_usage_errors(tmp_path, small_corpus):
    out = str(tmp_path / "x.jsonl")
    assert main(["select", "--pre-experience", "--out", out]) == 2  # no --corpus
    assert main(["select", "--pre-experience", "--corpus", str(small_corpus), "--out", out,
                 "--pre-percentiles", "75,25"]) == 2
    assert main(["select", "--pre-experience", "--corpus", str(small_corpus), "--out", out,
                 "--pre-percentiles", "x"]) == 2
    assert main(["select", "--pre-experience", "--corpus", str(small_corpus), "--out", out,
                 "--pre-k", "100"]) == 2  # more clusters than records, before any model
    assert main(["select", "--out", out]) == 2  # neither --scores nor --pre-experience
