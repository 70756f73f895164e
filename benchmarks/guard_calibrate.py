"""Calibrate the IFD quality guard's bounds once (issue #22), on the IQS robustness suite.

    python -m benchmarks.guard_calibrate [--limit N] [--max-length 256] [--out scores.parquet]
                                         [--no-ifd] [--iqs-model default|FOLDER]

The validation split's expert-revised answers are the good texts; their corrupted copies
(car_engine/iqs/robustness.py, the suite's seed) the bad ones. Scores every text with the
shipped IQS model, the default embedder (each answer's relevance to its instruction,
car_engine/relevance.py) and the IFD scorer (its direct pass gives the answer-alone loss), then
prints each bound that GOOD_KEPT of the good answers pass and the share of each corruption it
stops. The printed bounds are what car_engine/quality_guard.py ships. ``--no-ifd`` leaves the
costly IFD pass out (the IQS and relevance floors only).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pyarrow as pa

from car_engine.io import write_parquet
from car_engine.iqs.pairs import read_pairs
from car_engine.iqs.robustness import KINDS, corrupt, default_valid_csv, split_pair_text
from car_engine.quality_guard import LOOPS_STOPPED, NOISE_KINDS, calibrate


def _records(texts: list[str]) -> pa.Table:
    """Records (id, instruction, input, output) parsed back from pair texts."""
    rows: dict[str, list[str]] = {"id": [], "instruction": [], "input": [], "output": []}
    for i, text in enumerate(texts):
        prompt, answer = split_pair_text(text)
        body = prompt.removeprefix("Instruction: ").removesuffix(" Response: ")
        instruction, _, inp = body.partition(" Input: ")
        for key, value in (("id", str(i)), ("instruction", instruction), ("input", inp),
                           ("output", answer)):
            rows[key].append(value)
    return pa.table(rows)


def scores(limit: int | None, max_length: int, ifd_pass: bool = True,
           iqs_model: str = "default") -> pa.Table:
    """kind ('good' or a corruption), IQS (of ``iqs_model``), relevance and the IFD columns of
    every suite text (the IFD columns NaN without ``ifd_pass``)."""
    from car_engine.embed import Embedder
    from car_engine.ifd import IFDScorer
    from car_engine.iqs import IQSScorer
    from car_engine.relevance import RELEVANCE_COLUMN, records_relevance
    from car_engine.repetition import answers_repetition

    pairs = read_pairs(default_valid_csv())
    corruptions = corrupt(pairs, limit=limit)
    good = sorted({c.pair for c in corruptions})
    texts = [pairs.texts[2 * k + 1] for k in good] + [c.bad for c in corruptions]
    kinds = ["good"] * len(good) + [c.kind for c in corruptions]
    iqs = IQSScorer.load(iqs_model).score_texts(texts)
    embedder = Embedder()
    records = _records(texts)
    relevance = records_relevance(records, lambda t: embedder.embed(t, progress=False))
    table = pa.table({"kind": kinds, "iqs": iqs,
                      "relevance": relevance.column(RELEVANCE_COLUMN),
                      "repetition": answers_repetition(records.column("output").to_pylist()),
                      "loss_direct": np.full(len(texts), np.nan),
                      "ifd_ppl": np.full(len(texts), np.nan)})
    # the floors that need no IFD, before it runs
    print(json.dumps(report(table, ("iqs_floor", "relevance_floor", "repetition_ceiling"))),
          flush=True)
    if not ifd_pass:
        return table
    # IFD only for the kinds the direct-pass bounds are for (it is the costly part)
    want = [i for i, k in enumerate(kinds) if k == "good" or k in NOISE_KINDS]
    ifd = IFDScorer(max_length=max_length).score(_records([texts[i] for i in want]))
    loss = np.full(len(texts), np.nan)
    loss[want] = np.asarray(ifd.column("loss_direct").to_pylist(), dtype=np.float64)
    ifd_ppl = np.full(len(texts), np.nan)
    ifd_ppl[want] = np.asarray(ifd.column("ifd_ppl").to_pylist(), dtype=np.float64)
    return table.set_column(table.schema.get_field_index("loss_direct"), "loss_direct",
                            pa.array(loss)).set_column(
        table.schema.get_field_index("ifd_ppl"), "ifd_ppl", pa.array(ifd_ppl))


# (name, column, a ceiling?, the kind it is calibrated to stop: None = GOOD_KEPT of the good
# answers pass; a kind = LOOPS_STOPPED of that kind stops, see quality_guard.REPETITION_CEILING)
BOUNDS = (("iqs_floor", "iqs", False, None), ("relevance_floor", "relevance", False, None),
          ("repetition_ceiling", "repetition", True, "loop"),
          ("direct_loss_ceiling", "loss_direct", True, None))


def _stopped(values: np.ndarray, bound: float, upper: bool) -> float:
    """The share of the (finite) values a bound stops."""
    values = values[np.isfinite(values)]
    return float(((values > bound) if upper else (values < bound)).mean()) if values.size else 0.0


ALL_BOUNDS = tuple(name for name, *_ in BOUNDS)


def report(table: pa.Table, names: tuple[str, ...] = ALL_BOUNDS) -> dict:
    """Each bound (of ``names``) and the share of every corruption kind it stops."""
    kinds = np.array(table.column("kind").to_pylist())
    out = {}
    for name, column, upper, target in (b for b in BOUNDS if b[0] in names):
        values = np.asarray(table.column(column).to_pylist(), dtype=np.float64)
        good = values[kinds == "good"]
        bad = values[kinds == target] if target else values[kinds != "good"]
        bound = calibrate(good, bad, upper=upper, stop=None if target is None else LOOPS_STOPPED)
        per_kind = {k: _stopped(values[kinds == k], bound["bound"], upper)
                    for k in KINDS if (kinds == k).any()}
        out[name] = {**bound, "stopped_by_kind": per_kind}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--out", default=None)
    parser.add_argument("--no-ifd", action="store_true", help="IQS and relevance floors only")
    parser.add_argument("--iqs-model", default="default", help="the IQS model whose floor to "
                        "calibrate ('default' or a model folder)")
    args = parser.parse_args()
    table = scores(args.limit, args.max_length, not args.no_ifd, args.iqs_model)
    if args.out:
        write_parquet(args.out, table)
    names = tuple(b[0] for b in BOUNDS if not (args.no_ifd and b[1] == "loss_direct"))
    print(json.dumps(report(table, names), indent=1))


if __name__ == "__main__":
    main()
