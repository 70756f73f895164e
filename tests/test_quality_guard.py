"""The IFD quality guard (issue #22): noise is dropped before the IFD ranking."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from car_engine.cli import main
from car_engine.config import IFDParams, IQSParams, RunConfig
from car_engine.quality_guard import (
    IQS_FLOOR,
    NOISE_KINDS,
    Floors,
    below_floor,
    calibrate,
    floors_for,
    guard_on,
    plant_noise,
)
from car_engine.select import WHY_FLOOR, WHY_IFD, select_car_ifd, select_ifd

# 30 records (3 planted: random words at 1x and 2-3x, a loop; off-topic, the guard's known
# gap, is the bench's), 6 picks
TEST_PAIRS, TEST_FRAC = 27, 0.2


def test_below_floor_checks_every_bound_and_never_a_missing_value():
    floors = Floors(iqs=0.0, direct_floor=1.0, direct_ceiling=6.0)
    iqs = np.array([0.5, -0.5, 0.5, 0.5, np.nan, 0.5])
    loss = np.array([3.0, 3.0, 0.5, 7.0, 3.0, np.nan])
    assert below_floor(floors, iqs, loss).tolist() == [False, True, True, True, False, False]
    assert below_floor(Floors(None, None, None), iqs, loss).sum() == 0
    assert below_floor(floors, iqs).tolist() == [False, True, False, False, False, False]
    with pytest.raises(ValueError):
        below_floor(floors)


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
    assert other_lm == Floors(IQS_FLOOR, None, None)
    other_iqs = floors_for(RunConfig(method="ifd", iqs=IQSParams(model="x")))
    assert other_iqs.iqs is None and other_iqs.direct_ceiling is not None


def test_no_quality_guard_flag_reaches_the_config():
    from car_engine.cli import build_parser
    from car_engine.commands.run import config_from

    parser = build_parser()
    on = config_from(parser.parse_args(["run", "x.jsonl", "--out", "o", "--method", "ifd"]))
    off = config_from(parser.parse_args(["run", "x.jsonl", "--out", "o", "--method", "ifd",
                                         "--no-quality-guard"]))
    assert on.quality_guard and not off.quality_guard


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


@pytest.mark.slow  # the default IQS model and SmolLM2 on a few dozen real pairs
def test_guarded_ifd_run_picks_no_planted_noise_and_keeps_the_clean_selection(tmp_path):
    """Both targets of #22 at test size (benchmarks/bench_guard.py measures them at 444
    records): real ShareGPT pairs plus 10% planted noise through `run --method ifd` (guarded,
    the default); the unguarded and the clean-only selections are the same rule (select_ifd)
    over that run's own scores."""
    from benchmarks.bench_guard import pairs_items

    clean = pairs_items(TEST_PAIRS)
    items, planted = plant_noise(pa.Table.from_pylist(clean), 0.1)
    corpus = tmp_path / "planted.jsonl"
    corpus.write_text("".join(json.dumps(i) + "\n" for i in items))
    out = tmp_path / "run"
    assert main(["run", str(corpus), "--out", str(out), "--method", "ifd", "--ifd-frac",
                 str(TEST_FRAC), "--max-length", "64", "--quiet", "--no-report",
                 "--no-score-cache"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["quality_guard"]["on"] and summary["quality_guard"]["iqs_floor"] == IQS_FLOOR
    rows = pq.read_table(out / "scores.parquet").to_pylist()
    selected = {r["id"] for r in rows if r["selected"]}
    floored = np.array([r["why"] == WHY_FLOOR for r in rows])
    assert summary["counts"]["below_quality_floor"] == floored.sum() > 0
    assert not selected & set(planted)  # guarded: no planted item (target <= 1%)
    ifd = np.array([np.nan if r["ifd_ppl"] is None else r["ifd_ppl"] for r in rows])
    noise = np.array([r["id"] in set(planted) for r in rows])
    picked = select_ifd(ifd, fraction=TEST_FRAC, base=len(rows)).order
    unguarded_planted = int(noise[picked].sum())
    # the clean corpus alone, guarded and not: the guarded one keeps >= 95% of the other
    clean_rows = np.flatnonzero(~noise)
    plain = set(clean_rows[select_ifd(ifd[~noise], fraction=TEST_FRAC).order])
    guarded = set(clean_rows[select_ifd(ifd[~noise], fraction=TEST_FRAC,
                                        guard=floored[~noise]).order])
    assert unguarded_planted >= 1  # measured: 2 of the 6 unguarded picks are planted
    assert len(plain & guarded) >= 0.95 * len(plain), (plain, guarded, unguarded_planted)
