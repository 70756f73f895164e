"""`car-engine validate`: read a corpus the way every stage will, and account for each item."""

from __future__ import annotations

import argparse

from car_engine.commands import options
from car_engine.config import check_limit
from car_engine.corpus import Rejection, read_corpus
from car_engine.field_spec import parse_fields
from car_engine.io import write_jsonl


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate", help="check a corpus: count records, list rejected items",
        description="Read INPUT as `car-engine run` would and report how many items became "
        "records and which were rejected (file, line or item, reason). Cheap: no model loads. "
        "A file that cannot be read at all (not in its format) is an error (exit 3).")
    p.add_argument("input", help=options.CORPUS_HELP)
    p.add_argument("--rejected", metavar="OUT", help="write the rejected items as JSONL")
    p.add_argument("--strict", action="store_true", help="fail at the first bad item")
    options.add_limit(p)
    options.add_fields(p)
    p.set_defaults(func=main)


def _summary(source: str, records: int, rejected: list[Rejection]) -> str:
    """'N items, R records, B rejected', and the faults between items (a trailing comma),
    which are reported but are no item."""
    bad = sum(r.item for r in rejected)
    line = f"{source}: {records + bad} items, {records} records, {bad} rejected"
    between = len(rejected) - bad
    return line + (f"; {between} fault between items" if between else "")


def main(args: argparse.Namespace) -> int:
    check_limit(args.limit)
    if args.fields is not None:
        parse_fields(args.fields)
    records, rejected = 0, []
    for batch in read_corpus(args.input, strict=args.strict, limit=args.limit,
                             fail_unreadable=True, fields=args.fields):
        records += batch.records.num_rows
        rejected.extend(batch.rejected)
    if args.rejected:
        write_jsonl(args.rejected, (r.to_dict() for r in rejected))
    for r in rejected[:10]:
        print(f"{'rejected' if r.item else 'malformed'}: {r.message()}")
    if len(rejected) > 10:
        print(f"... and {len(rejected) - 10} more")
    print(_summary(args.input, records, rejected))
    return 0
