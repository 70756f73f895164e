"""`car-engine ifd`: two-pass IFD scores (SPEC §2) for every record of a corpus."""

from __future__ import annotations

import argparse

from car_engine.commands import options
from car_engine.config import check_limit, check_table_out


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``ifd`` subcommand."""
    p = sub.add_parser(
        "ifd",
        help="score instruction-following difficulty (IFD) with a causal LM",
        description="Score every record's IFD: the answer's loss with the prompt (conditioned "
        "pass) and without it (direct pass), both over exactly the same answer tokens. Writes "
        "id, loss_cond, loss_direct, ppl_cond, ppl_direct, ifd_ppl, ifd_loss, n_tokens, "
        "truncated, status (scores are null when status is not 'ok').",
    )
    p.add_argument("input", help=options.CORPUS_HELP)
    p.add_argument("--out", required=True, help="scores file (.parquet or .jsonl)")
    options.add_ifd_flags(p, own=True)
    options.add_turn_flags(p, aggregate=False)
    p.add_argument("--no-pack", action="store_true",
                   help="run the transformers forward on padded batches (on CPU a Llama-style "
                   "model otherwise runs packed, without padding: faster, same scores)")
    options.add_limit(p)
    options.add_device(p)
    options.add_quiet(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Score the corpus and write the table atomically."""
    import pyarrow.compute as pc

    from car_engine.ifd import IFDScorer
    from car_engine.ifd_prompts import OK
    from car_engine.io import write_table

    check_table_out(args.out)
    check_limit(args.limit)
    options.ifd_params(args).check()
    corpus = options.read_records(args.input, args.limit)
    if args.quiet:
        options.silence_hf_progress()
    scorer = IFDScorer(args.ifd_model, template=args.template, compat=args.compat,
                       max_length=args.max_length, dtype=args.ifd_dtype,
                       batch_tokens=args.batch_tokens, device=args.device,
                       pack=not args.no_pack, turns=args.turns)
    table = scorer.score(corpus.records, progress=not args.quiet)
    write_table(args.out, table)
    scored = pc.sum(pc.equal(table["status"], OK)).as_py() or 0
    print(f"wrote IFD scores for {table.num_rows} records to {args.out} ({scored} scored, "
          f"{table.num_rows - scored} without a score; {len(corpus.rejected)} rejected items)")
    return 0
