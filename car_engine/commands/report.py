"""`car-engine report RUN_DIR`: rebuild report.html and its plots from a run's outputs."""

from __future__ import annotations

import argparse

from car_engine.report import build_report


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="rebuild RUN_DIR/report.html",
                       description="Rebuild the HTML report and SVG plots of a finished run.")
    p.add_argument("run_dir", help="a folder written by `car-engine run`")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    print(f"report: {build_report(args.run_dir)}")
    return 0
