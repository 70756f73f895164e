"""The IFD quality guard (issue #22): noise is dropped before the IFD ranking."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from car_engine.cli import main
from car_engine.config import EmbedParams, IFDParams, IQSParams, RunConfig
from car_engine.quality_guard import (
    IQS_FLOOR,
    NOISE_KINDS,
    RELEVANCE_FLOOR,
    REPETITION_CEILING,
    Floors,
    below_floor,
    calibrate,
    floors_for,
    guard_on,
    plant_noise,
)
from car_engine.select import WHY_FLOOR, WHY_IFD, select_car_ifd, select_ifd

# 40 records (4 planted: random words at 1x and 2-3x, a loop, another instruction's answer),
# 8 picks
TEST_PAIRS, TEST_FRAC = 36, 0.2


NO_BOUNDS = Floors(iqs=None, direct_ceiling=None, relevance=None, repetition=None)


def test_below_floor_checks_every_bound_and_never_a_missing_value():
    floors = Floors(iqs=0.0, direct_ceiling=6.0, relevance=None, repetition=None)
    iqs = np.array([0.5, -0.5, 0.5, 0.5, np.nan, 0.5])
    loss = np.array([3.0, 3.0, 0.5, 7.0, 3.0, np.nan])
    assert below_floor(floors, iqs, loss).tolist() == [False, True, False, True, False, False]
    assert below_floor(NO_BOUNDS, iqs, loss).sum() == 0
    assert below_floor(floors, iqs).tolist() == [False, True, False, False, False, False]
    with pytest.raises(ValueError):
        below_floor(floors)
    relevance = np.array([0.5, 0.5, 0.5, 0.5, 0.05, np.nan])
    assert below_floor(replace(NO_BOUNDS, relevance=0.1), relevance=relevance).tolist() == [
        False, False, False, False, True, False]
    repetition = np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.95])
    assert below_floor(replace(NO_BOUNDS, repetition=0.5), repetition=repetition).tolist() == [
        False] * 5 + [True]
    assert below_floor(NO_BOUNDS, repetition=repetition).sum() == 0
    every = Floors(iqs=0.0, direct_ceiling=6.0, relevance=0.1, repetition=0.5)
    assert below_floor(every, iqs, loss, relevance, repetition).tolist() == [
        False, True, False, True, True, True]


def test_calibrate_keeps_the_share_of_good_values_it_is_asked_to():
    good = np.linspace(0, 1, 101)
    bad = np.array([-1.0, -0.5, 0.5, np.nan])
    floor = calibrate(good, bad, kept=0.99)
    assert floor["bound"] == pytest.approx(0.01) and (good >= floor["bound"]).mean() >= 0.99
    assert floor["bad_stopped"] == pytest.approx(2 / 3)  # the NaN is no value
    ceiling = calibrate(good, np.array([2.0, 0.5]), upper=True, kept=0.99)
    assert ceiling["bound"] == pytest.approx(0.99) and ceiling["bad_stopped"] == 0.5


def test_select_ifd_drops_guarded_rows_first_and_says_why():
    ifd = np.array([0.99, 0.98, 0.5, 0.4, 1.2, np.nan])
    guard = np.array([True, False, False, False, True, True])
    plain = select_ifd(ifd, count=2)
    assert plain.order.tolist() == [0, 1]
    guarded = select_ifd(ifd, count=2, guard=guard)
    assert guarded.order.tolist() == [1, 2]
    assert guarded.why[0] == WHY_FLOOR and guarded.why[1] == WHY_IFD
    # a misaligned or unscored row keeps its own reason; only candidates count as floored
    assert guarded.why[4] != WHY_FLOOR and guarded.why[5] != WHY_FLOOR
    assert guarded.counts["below_quality_floor"] == 1
    assert "below_quality_floor" not in plain.counts
    with pytest.raises(ValueError):
        select_ifd(ifd, count=2, guard=guard[:3])


def test_car_ifd_drops_guarded_rows_before_car():
    iqs = np.array([3.0, 2.0, 1.0, 0.0])
    ifd = np.array([0.5, 0.5, 0.5, 1.5])
    labels = np.array([0, 0, 1, 1])
    guard = np.array([True, False, False, False])
    sel = select_car_ifd(iqs, ifd, labels, n1=1, n2=1, guard=guard)
    assert sel.order.tolist() == [1, 2]
    assert sel.why[0] == WHY_FLOOR and sel.counts["below_quality_floor"] == 1
    assert sel.counts["dropped_by_ifd"] == 1


def test_guard_is_on_for_ifd_methods_unless_compat_or_turned_off():
    assert guard_on(RunConfig(method="ifd")) and guard_on(RunConfig(method="car+ifd"))
    assert not guard_on(RunConfig(method="car"))
    assert not guard_on(RunConfig(method="ifd", quality_guard=False))
    for preset in ("superfiltering", "cherry"):
        assert not guard_on(RunConfig(method="ifd", ifd=IFDParams(compat=preset)))


def test_bounds_apply_only_to_the_models_they_were_calibrated_on():
    assert floors_for(RunConfig(method="ifd")) == Floors()
    other_lm = floors_for(RunConfig(method="ifd", ifd=IFDParams(model="some/folder")))
    assert other_lm == replace(Floors(), direct_ceiling=None)
    other_iqs = floors_for(RunConfig(method="ifd", iqs=IQSParams(model="x")))
    assert other_iqs.iqs is None and other_iqs.direct_ceiling is not None
    other_embedder = floors_for(RunConfig(method="ifd", embed=EmbedParams(model="y")))
    assert other_embedder.relevance is None and other_embedder.iqs == IQS_FLOOR
    assert Floors().relevance == RELEVANCE_FLOOR


def test_guard_flags_reach_the_config_and_the_floors():
    from car_engine.cli import build_parser
    from car_engine.commands.run import config_from
    from car_engine.quality_guard import needs_relevance

    parser = build_parser()
    args = ["run", "x.jsonl", "--out", "o", "--method", "ifd"]
    on = config_from(parser.parse_args(args))
    off = config_from(parser.parse_args([*args, "--no-quality-guard"]))
    no_relevance = config_from(parser.parse_args([*args, "--no-relevance-floor"]))
    assert on.quality_guard and not off.quality_guard
    assert needs_relevance(on) and not needs_relevance(off)
    assert no_relevance.quality_guard and not needs_relevance(no_relevance)
    assert floors_for(no_relevance).relevance is None
    assert floors_for(no_relevance).iqs == floors_for(on).iqs == IQS_FLOOR


def _records(n: int) -> pa.Table:
    outputs = [f"Answer {i} is here. It has two sentences about topic {i}." for i in range(n)]
    return pa.table({"id": [f"r{i}" for i in range(n)],
                     "instruction": [f"Question {i}?" for i in range(n)],
                     "input": [""] * n, "output": outputs})


def test_plant_noise_adds_the_robustness_corruptions_under_their_own_instruction():
    records = _records(36)
    items, planted = plant_noise(records, 0.1, seed=3)
    assert len(items) == 36 + len(planted) and len(planted) == 4
    assert abs(len(planted) / len(items) - 0.1) < 0.01
    assert items[:36] == records.to_pylist()  # the clean items come first, unchanged
    by_id = {i["id"]: i for i in items}
    assert {p.split("~")[1] for p in planted} == set(NOISE_KINDS)
    for noise_id in planted:
        source, kind = noise_id.split("~")
        noise, clean = by_id[noise_id], by_id[source]
        assert noise["instruction"] == clean["instruction"]
        assert noise["output"] != clean["output"] and noise["output"].strip()
        if kind == "loop":
            assert noise["output"].count("Answer") >= 2
    assert plant_noise(records, 0.1, seed=3) == (items, planted)  # deterministic


@pytest.fixture(scope="module")
def guarded_run(tmp_path_factory) -> dict:
    """Real ShareGPT pairs plus 10% planted noise through `run --method ifd` (guarded, the
    default): its summary, its scores and the planted ids."""
    from benchmarks.bench_guard import pairs_items

    tmp_path = tmp_path_factory.mktemp("guard")
    clean = pairs_items(TEST_PAIRS)
    items, planted = plant_noise(pa.Table.from_pylist(clean), 0.1)
    corpus = tmp_path / "planted.jsonl"
    corpus.write_text("".join(json.dumps(i) + "\n" for i in items))
    out = tmp_path / "run"
    assert main(["run", str(corpus), "--out", str(out), "--method", "ifd", "--ifd-frac",
                 str(TEST_FRAC), "--max-length", "64", "--quiet", "--no-report",
                 "--no-score-cache"]) == 0
    return {"summary": json.loads((out / "summary.json").read_text()), "planted": planted,
            "rows": pq.read_table(out / "scores.parquet").to_pylist()}


def _column(rows: list[dict], key: str) -> np.ndarray:
    """A score column of scores.parquet's rows as floats (a null is NaN)."""
    return np.array([np.nan if r[key] is None else r[key] for r in rows], dtype=float)


def _ifd(rows: list[dict]) -> np.ndarray:
    return _column(rows, "ifd_ppl")


def _clean_kept(rows: list[dict], floored: np.ndarray) -> tuple[set[int], set[int]]:
    """The IFD selections of the clean rows alone, unguarded and guarded by ``floored``
    (select_ifd, the rule the run uses, over the run's own scores)."""
    ifd = _ifd(rows)
    idx = np.arange(len(rows))
    plain = set(idx[select_ifd(ifd, fraction=TEST_FRAC).order])
    guarded = set(idx[select_ifd(ifd, fraction=TEST_FRAC, guard=floored).order])
    return plain, guarded


def _clean(run: dict) -> list[dict]:
    planted = set(run["planted"])
    return [r for r in run["rows"] if r["id"] not in planted]


def _floored(rows: list[dict], floors: Floors) -> np.ndarray:
    return below_floor(floors, *(_column(rows, key) for key in
                                 ("iqs", "loss_direct", "relevance", "repetition")))


@pytest.mark.slow  # the default IQS model and SmolLM2 on a few dozen real pairs
def test_guarded_ifd_run_picks_no_planted_noise(guarded_run):
    """#22's first target at test size (benchmarks/bench_guard.py measures it at scale): no
    planted item in the guarded selection, though the paper's rule picks some."""
    summary, rows, planted = guarded_run["summary"], guarded_run["rows"], guarded_run["planted"]
    assert summary["quality_guard"]["on"] and summary["quality_guard"]["iqs_floor"] == IQS_FLOOR
    assert summary["quality_guard"]["relevance_floor"] == RELEVANCE_FLOOR
    assert summary["quality_guard"]["repetition_ceiling"] == REPETITION_CEILING
    assert {p.split("~")[1] for p in planted} == set(NOISE_KINDS)  # off-topic too
    assert all(r["relevance"] is not None and r["repetition"] is not None for r in rows)
    loops = [r for r in rows if r["id"].endswith("~loop")]
    assert loops and all(r["repetition"] > REPETITION_CEILING for r in loops)
    floored = np.array([r["why"] == WHY_FLOOR for r in rows])
    assert summary["counts"]["below_quality_floor"] == floored.sum() > 0
    # the bounds summary.json reports, applied to the scores it wrote, drop those rows (and
    # maybe others the IFD < 1 rule dropped first)
    assert (_floored(rows, floors_for(RunConfig(method="ifd")))[floored]).all()
    selected = {r["id"] for r in rows if r["selected"]}
    assert not selected & set(planted)  # guarded: no planted item (target <= 1%)
    noise = np.array([r["id"] in set(planted) for r in rows])
    picked = select_ifd(_ifd(rows), fraction=TEST_FRAC, base=len(rows)).order
    assert noise[picked].sum() >= 1  # unguarded, the paper's rule picks planted noise


@pytest.mark.slow
def test_guard_without_its_relevance_floor_keeps_the_clean_selection(guarded_run):
    """--no-relevance-floor: every clean pair, continuation parts included, keeps its picks."""
    rows = _clean(guarded_run)
    floors = floors_for(RunConfig(method="ifd", relevance_floor=False))
    assert floors.relevance is None
    plain, guarded = _clean_kept(rows, _floored(rows, floors))
    assert len(plain & guarded) >= 0.95 * len(plain), (plain, guarded)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="#22 open: on real ShareGPT parts the relevance floor "
                   "drops most of the unguarded top picks, context-less follow-ups ('continue', "
                   "'explain more') whose answers are unrelated to their prompt, as planted "
                   "off-topic answers are (benchmarks/RESULTS.md, IFD quality guard)")
def test_guard_keeps_the_clean_selection_of_every_sharegpt_part(guarded_run):
    rows = _clean(guarded_run)
    plain, guarded = _clean_kept(rows, _floored(rows, floors_for(RunConfig(method="ifd"))))
    assert len(plain & guarded) >= 0.95 * len(plain), (plain, guarded)
