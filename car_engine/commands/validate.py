"""`car-engine validate`: read a corpus the way every stage will, and account for each item."""

from __future__ import annotations

import argparse

from car_engine.corpus import read_corpus
from car_engine.io import write_jsonl


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate", help="check a corpus: count records, list rejected items",
        description="Read INPUT as `car-engine run` would and report how many items became "
        "records and which were rejected (file, line or item, reason). Cheap: no model loads.")
    p.add_argument("input", help="corpus (.json/.jsonl/.parquet[.gz]) or builtin:sharegpt")
    p.add_argument("--rejected", metavar="OUT", help="write the rejected items as JSONL")
    p.add_argument("--strict", action="store_true", help="fail at the first bad item")
    p.add_argument("--limit", type=int, help="read only the first N items")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    records, rejected = 0, []
    for batch in read_corpus(args.input, strict=args.strict, limit=args.limit):
        records += batch.records.num_rows
        rejected.extend(batch.rejected)
    if args.rejected:
        write_jsonl(args.rejected, (r.to_dict() for r in rejected))
    for r in rejected[:10]:
        print(f"rejected: {r.message()}")
    if len(rejected) > 10:
        print(f"... and {len(rejected) - 10} more")
    print(f"{args.input}: {records + len(rejected)} items, {records} records, "
          f"{len(rejected)} rejected")
    return 0
