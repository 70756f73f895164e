"""`car-engine select`: CaR or IFD selection from score (and cluster) files."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from car_engine.commands import options
from car_engine.config import SEED_MAX, ClusterParams, check_table_out
from car_engine.dedup_params import check_dedup
from car_engine.errors import CorpusError, UsageError

if TYPE_CHECKING:
    import pyarrow as pa


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "select",
        help="select records from scores (CaR: + clusters; or --ifd)",
        description="CaR: the top --n1 records by score plus the top --n2 of every cluster "
        "(SPEC §4). With --ifd: drop IFD >= 1, then the top fraction/count by IFD (SPEC §2). "
        "With --pre-experience: Cherry LLM's pre-experience subset of --corpus (SPEC §8). "
        "Writes the selected records in final order with their scores.",
    )
    p.add_argument("--scores", help="scores file (.parquet/.jsonl) keyed by id (CaR, --ifd)")
    p.add_argument("--clusters", help="clusters file keyed by id with a 'cluster' column (CaR)")
    p.add_argument("--out", required=True, help="selected records (.jsonl or .parquet)")
    p.add_argument("--corpus", help="corpus to take the record fields from, when the scores "
                   "file lacks them; also the base of --ifd-frac (its rejected items count)")
    options.add_selection_flags(p.add_argument_group("selection"), ifd_frac_default=None)
    options.add_duplicate_flags(p.add_argument_group("near duplicates"), semantic=False)
    p.add_argument("--score-column", default="iqs", help="CaR: score column (default iqs)")
    ifd = p.add_argument_group("IFD")
    ifd.add_argument("--ifd", action="store_true", help="IFD selection instead of CaR")
    ifd.add_argument("--ifd-column", help="ifd_ppl (default) or ifd_loss (the default with "
                     "--compat cherry, which also keeps IFD = 1)")
    ifd.add_argument("--ifd-count", type=int, help="number of records to keep "
                     "(instead of --ifd-frac)")
    pre = p.add_argument_group("pre-experience (Cherry LLM, SPEC §8)")
    pre.add_argument("--pre-experience", action="store_true",
                     help="draw Cherry's pre-experience subset from --corpus: the instruction-"
                     "only pass on the IFD model, k-means, the middle perplexity band per cluster")
    options.add_pre_flags(pre)
    pre.add_argument("--seed", type=int, default=ClusterParams.seed,
                     help=f"k-means seed (default {ClusterParams.seed})")
    options.add_ifd_flags(p.add_argument_group("IFD model (--pre-experience; --compat also "
                                                "sets --ifd's rule)"))
    options.add_device(p)
    options.add_quiet(p)
    p.set_defaults(func=run)


def _with_record_fields(scores: pa.Table, scores_path: str, corpus_path: str | None
                        ) -> tuple[pa.Table, int]:
    """Attach the corpus' record fields to the scores by id; returns (table, rejected count)."""
    import pyarrow.compute as pc

    from car_engine.corpus import load_corpus
    from car_engine.dedup import RECORD_FIELDS
    from car_engine.score_tables import attach, unique_ids

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
    if args.pre_experience:
        if not args.corpus:
            raise UsageError("--pre-experience needs --corpus (the records to draw from)")
        options.pre_params(args).check()
        options.ifd_params(args).check()
        if not 0 <= args.seed <= SEED_MAX:
            raise UsageError(f"--seed must be in 0..{SEED_MAX}, got {args.seed}")
        return
    if not args.scores:
        raise UsageError("--scores is needed (or use --pre-experience)")
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
    from car_engine.select import (
        Selection,
        ifd_rule,
        picked_rows,
        select_car_table,
        select_ifd_table,
    )

    check_args(args)
    if args.pre_experience:
        return _pre_experience(args)
    scores, rejected = _with_record_fields(read_table(args.scores), args.scores, args.corpus)
    selection: Selection
    if args.ifd:
        column, keep_equal_one = ifd_rule(args.compat, args.keep_equal_one)
        table, selection = select_ifd_table(
            scores, ifd_column=args.ifd_column or column, fraction=args.ifd_frac,
            count=args.ifd_count, keep_equal_one=keep_equal_one, base=scores.num_rows + rejected,
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


def _pre_experience(args: argparse.Namespace) -> int:
    """Cherry's pre-experience subset of --corpus, written as the selected records."""
    import numpy as np
    import pyarrow as pa

    from car_engine.ifd import IFDScorer
    from car_engine.io import write_table
    from car_engine.pre_experience import cluster_labels, instruction_pass
    from car_engine.select import picked_rows
    from car_engine.select_pre import select_pre_experience

    pre = options.pre_params(args)
    corpus = options.read_records(args.corpus, None)
    if pre.k > len(corpus):
        raise UsageError(f"--pre-k {pre.k} is more than the {len(corpus)} records read")
    if args.quiet:
        options.silence_hf_progress()
    scorer = IFDScorer(args.ifd_model, template=args.template, compat=args.compat,
                       max_length=args.max_length, dtype=args.ifd_dtype,
                       batch_tokens=args.batch_tokens, device=args.device)
    result = instruction_pass(scorer, corpus.records, progress=not args.quiet)
    labels = cluster_labels(result.vectors, pre.k, seed=args.seed, progress=not args.quiet)
    selection = select_pre_experience(result.ppl, labels, per_cluster=pre.per_cluster,
                                      low=pre.low, high=pre.high)
    ppl = pa.array(result.ppl, mask=np.isnan(result.ppl))  # no perplexity: null
    table = corpus.records.append_column("instruction_ppl", ppl).append_column(
        "cluster", pa.array(labels, pa.int64()))
    write_table(args.out, picked_rows(table, selection))
    print(_summary(selection.counts, len(corpus.rejected), args.out))
    return 0
