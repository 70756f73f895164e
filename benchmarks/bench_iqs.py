"""IQS scoring: the reference (PyTorch eager fp32, batch 16, texts sorted by character length)
vs the engine on ONNX Runtime (fp32 and int8), in one run, on the same real ShareGPT pairs.

The three runners take turns on chunks of 100 pairs (quick: 60; times summed), so outside load on a
shared machine falls on all of them alike. Checks: ORT fp32 max |score diff| vs the
reference < 1e-4; int8 Spearman vs the reference >= 0.99. Export time is not counted
(the exported file is cached).

The ``iqs-robustness`` row (issue #21) runs the robustness suite on the validation split's
expert-revised answers (car_engine.iqs.robustness; all 254 pairs, quick: the first 40): the
engine (ONNX Runtime fp32) and the reference (eager torch) score the same corrupted copies;
the check is the worst kind's share of pairs won by the good answer (target >= 0.97), every
kind's share in the row. Skipped, with a note, when the validation split is absent.

The ``iqs-one-pass`` row is benchmarks/bench_one_pass.py: IQS and the embedding from one
encoder forward against the CaR way's two passes.

    .venv/bin/python -m benchmarks.bench_iqs [--quick] [--n N] [--model default]
"""

from __future__ import annotations

import time

import numpy as np

from car_engine.iqs import IQSScorer
from car_engine.iqs.pairs import read_pairs
from car_engine.iqs.robustness import KINDS, corrupt, default_valid_csv, win_shares
from car_engine.iqs.score import load_any, spearman
from car_engine.reference.iqs import reference_scores

from .common import bench_parser, print_rows, row, sharegpt_pair_texts, take_turns

DEFAULT_N = 1000
QUICK_N = 120  # with --quick: two turns of 60, about 40 s on this machine
TARGETS = {"fp32": 1.3, "int8": 2.5}
ROBUSTNESS_TARGET = 0.97  # every kind: the good answer wins in >= 97% of the pairs
QUICK_ROBUSTNESS_PAIRS = 40


def run(quick: bool = False, n: int | None = None, model: str = "default",
        chunk: int | None = None) -> list[dict]:
    """Time the reference and the ONNX Runtime engine (fp32, int8) on ``n`` pairs.

    The machine is shared, so the three runners take turns on chunks of ``chunk`` pairs
    and each one's time is summed: a burst of outside load then slows all three alike
    instead of whichever happened to be running."""
    n = n or (QUICK_N if quick else DEFAULT_N)
    chunk = chunk or (60 if quick else 100)
    texts = sharegpt_pair_texts(n)
    iqs, tokenizer = load_any(model)
    scorers = {p: IQSScorer.load(model, runtime="onnx", precision=p) for p in TARGETS}
    runners = {"reference": lambda part: reference_scores(iqs, tokenizer, part, 16)}
    runners.update({p: (lambda part, s=s: s.score_texts(part, progress=False))
                    for p, s in scorers.items()})
    for fn in runners.values():  # warm-up (allocators, kernels), not timed
        fn(texts[:4])
    seconds, scores = take_turns(runners, texts, chunk, progress="bench iqs")
    reference = np.concatenate(scores["reference"])
    rows = []
    for precision, scorer in scorers.items():
        got = np.concatenate(scores[precision])
        if precision == "fp32":
            value = float(np.abs(got - reference).max())
            check, ok = "max_abs_diff_vs_torch", value < 1e-4
        else:
            value = spearman(got, reference)
            check, ok = "spearman_vs_torch", value >= 0.99
        rows.append(row(f"iqs-onnx-{precision}", n, seconds[precision], seconds["reference"],
                        check, value, ok, target_speedup=TARGETS[precision],
                        provider=scorer.describe()))
    # quick: the first 40 pairs, or n when it is smaller (a smoke run at --n 16)
    limit = min(QUICK_ROBUSTNESS_PAIRS, n) if quick else None
    robustness = robustness_row(iqs, tokenizer, scorers["fp32"], limit)
    from .bench_one_pass import run as one_pass_rows  # the IQS of `run`'s default encode stage

    return rows + ([robustness] if robustness else []) + one_pass_rows(quick=quick, n=n)


def robustness_row(iqs, tokenizer, scorer: IQSScorer, limit: int | None) -> dict | None:
    """The suite on the validation split (its first ``limit`` pairs; None: all): ONNX fp32
    (engine) vs eager torch (reference)."""
    path = default_valid_csv()
    if not path.is_file():
        print(f"iqs-robustness skipped: {path} is absent")
        return None
    pairs = read_pairs(path)
    suite = corrupt(pairs, limit=limit)
    good = sorted({c.pair for c in suite})
    texts = [pairs.texts[2 * k + 1] for k in good] + [c.bad for c in suite]
    runners = {"reference": lambda part: reference_scores(iqs, tokenizer, part, 16),
               "engine": lambda part: scorer.score_texts(part, progress=False)}
    seconds, scores = take_turns(runners, texts, 100, progress="bench iqs robustness")
    engine = np.concatenate(scores["engine"])
    reference = np.concatenate(scores["reference"])
    position = {k: i for i, k in enumerate(good)}
    shares = {}
    for name, got in (("engine", engine), ("reference", reference)):
        bad = got[len(good):]
        table = win_shares(suite, got[[position[c.pair] for c in suite]], bad)
        shares[name] = {k: round(table[k]["share"], 4) for k in KINDS if k in table}
    worst = min(shares["engine"].values())
    return row("iqs-robustness", len(texts), seconds["engine"], seconds["reference"],
               "worst_kind_share", worst, worst >= ROBUSTNESS_TARGET, pairs=len(good),
               reference_worst_kind_share=min(shares["reference"].values()),
               **{f"share_{k}": v for k, v in shares["engine"].items()})


def main() -> None:
    """Command line: run the benchmark and print its table."""
    parser = bench_parser(__doc__, quick_help=f"{QUICK_N} pairs",
                          n_help=f"pairs (default {DEFAULT_N})")
    parser.add_argument("--model", default="default")
    args = parser.parse_args()
    started = time.perf_counter()
    print_rows(run(quick=args.quick, n=args.n, model=args.model), started)


if __name__ == "__main__":
    main()
