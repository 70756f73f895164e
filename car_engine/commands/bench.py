"""`car-engine bench`: throughput of every stage against its reference way, in one run."""

from __future__ import annotations

import argparse
import sys

from car_engine.bench import (
    STAGES,
    below_target,
    format_rows,
    refresh_results,
    run_bench,
    write_json,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="every stage vs its reference way, side by side",
        description="Run each stage and the plain reference way of doing it on the same real "
        "data in one process, and print items/s, speed-up, peak memory and an agreement check.")
    p.add_argument("--stage", choices=(*STAGES, "all"), default="all")
    p.add_argument("--quick", action="store_true", help="small sizes (a few minutes in all)")
    p.add_argument("--n", type=int, help="items per stage (overrides the default sizes)")
    p.add_argument("--json", metavar="OUT", help="also write the rows as JSON")
    p.add_argument("--results", metavar="MD", help="refresh the summary block of this "
                   "RESULTS.md (make bench does this)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    stages = list(STAGES) if args.stage == "all" else [args.stage]
    rows = run_bench(stages, quick=args.quick, n=args.n)
    print(format_rows(rows))
    if args.quick:
        print("(--quick: smaller sizes than the full benchmarks of `make bench`; the items "
              "column gives each row's size)")
    slow = below_target(rows)
    if slow:  # reported, not an error: speed on a shared machine is noisy
        print(f"below target speed-up: {', '.join(slow)}", file=sys.stderr)
    if args.json:
        write_json(rows, args.json)
    if args.results:
        refresh_results(rows, args.results, "car-engine " + " ".join(sys.argv[1:]))
    failed = [r["stage"] for r in rows if not r["check_ok"]]
    if failed:
        print(f"agreement check failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
