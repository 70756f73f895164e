"""`car-engine select`: CaR or IFD selection from score (and cluster) files."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from car_engine.commands import options
from car_engine.config import check_dedup, check_table_out
from car_engine.errors import CorpusError, UsageError

if TYPE_CHECKING:
    import pyarrow as pa


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "select",
        help="select records from scores (CaR: + clusters; or --ifd)",
        description="CaR: the top --n1 records by score plus the top --n2 of every cluster "
        "(SPEC §4). With --ifd: drop IFD >= 1, then the top fraction/count by IFD (SPEC §2). "
        "Writes the selected records in final order with their scores.",
    )
    p.add_argument("--scores", required=True, help="scores file (.parquet/.jsonl) keyed by id")
    p.add_argument("--clusters", help="clusters file keyed by id with a 'cluster' column (CaR)")
    p.add_argument("--out", required=True, help="selected records (.jsonl or .parquet)")
    p.add_argument("--corpus", help="corpus to take the record fields from, when the scores "
                   "file lacks them; also the base of --ifd-frac (its rejected items count)")
    options.add_selection_flags(p.add_argument_group("selection"), ifd_frac_default=None)
    options.add_duplicate_flags(p.add_argument_group("near duplicates"), semantic=False)
    p.add_argument("--score-column", default="iqs", help="CaR: score column (default iqs)")
    ifd = p.add_argument_group("IFD")
    ifd.add_argument("--ifd", action="store_true", help="IFD selection instead of CaR")
    ifd.add_argument("--ifd-column", default="ifd_ppl", help="ifd_ppl (default) or ifd_loss")
    ifd.add_argument("--ifd-count", type=int, help="number of records to keep "
                     "(instead of --ifd-frac)")
    p.set_defaults(func=run)


def _with_record_fields(scores: pa.Table, scores_path: str, corpus_path: str | None
                        ) -> tuple[pa.Table, int]:
    """Attach the corpus' record fields to the scores by id; returns (table, rejected count)."""
    import pyarrow.compute as pc

    from car_engine.corpus import load_corpus
    from car_engine.dedup import RECORD_FIELDS
    from car_engine.select import attach, unique_ids

    if corpus_path is None:
        return scores, 0
    corpus = load_corpus(corpus_path, fail_unreadable=True)
    missing = pc.invert(pc.is_in(unique_ids(scores, scores_path),
                                 value_set=corpus.records["id"]))
    if pc.any(missing).as_py():
        first = scores["id"].filter(missing)[0]
        raise CorpusError(f"{scores_path}: id '{first}' is not in the corpus {corpus_path}")
    fields = [*RECORD_FIELDS, "turns", "position"]
    return (attach(scores, corpus.records, fields, corpus_path, base_name=scores_path),
            len(corpus.rejected))


def _summary(counts: dict[str, int], rejected: int, out: str) -> str:
    parts = [f"{k.replace('_', ' ')}: {v}" for k, v in counts.items()]
    return f"wrote {counts['selected']} records to {out} ({'; '.join(parts)}; rejected: {rejected})"


def check_args(args: argparse.Namespace) -> None:
    """Refuse every flag combination that cannot work before any file is read: a usage error
    is then exit 2 whatever the files hold, and costs no read."""
    check_table_out(args.out)
    check_dedup(args.near_dup_threshold, None)
    if args.ifd:
        if args.near_dup:
            raise UsageError("--near-dup applies to CaR selection, not --ifd")
        if (args.ifd_frac is None) == (args.ifd_count is None):
            raise UsageError("--ifd needs exactly one of --ifd-frac or --ifd-count")
        if args.ifd_frac is not None and not 0 <= args.ifd_frac <= 1:
            raise UsageError(f"--ifd-frac must be in [0, 1], got {args.ifd_frac}")
        if args.ifd_count is not None and args.ifd_count < 0:
            raise UsageError(f"--ifd-count must be >= 0, got {args.ifd_count}")
        return
    if not args.clusters:
        raise UsageError("CaR selection needs --clusters (or use --ifd)")
    if args.n1 < 0 or args.n2 < 0:
        raise UsageError("--n1 and --n2 must be >= 0")


def run(args: argparse.Namespace) -> int:
    """Check the flags, read the files, select, and write the selected records."""
    from car_engine.corpus import read_table
    from car_engine.io import write_table
    from car_engine.select import Selection, picked_rows, select_car_table, select_ifd_table

    check_args(args)
    scores, rejected = _with_record_fields(read_table(args.scores), args.scores, args.corpus)
    selection: Selection
    if args.ifd:
        table, selection = select_ifd_table(
            scores, ifd_column=args.ifd_column, fraction=args.ifd_frac, count=args.ifd_count,
            keep_equal_one=args.keep_equal_one, base=scores.num_rows + rejected,
            scores_name=args.scores,
        )
    else:
        table, selection = select_car_table(
            scores, read_table(args.clusters), score_column=args.score_column, n1=args.n1,
            n2=args.n2, strategy=args.strategy, dedup_content=not args.no_dedup,
            scores_name=args.scores, clusters_name=args.clusters, near_dup=args.near_dup,
            near_dup_threshold=args.near_dup_threshold,
        )
    write_table(args.out, picked_rows(table, selection))
    print(_summary(selection.counts, rejected, args.out))
    return 0
