"""`car-engine embed`: sentence embeddings of every record's pair text, as a .npy."""

from __future__ import annotations

import argparse
import sys

from car_engine.commands import options
from car_engine.config import EMBED_MAX_SEQ_LENGTH, check_limit
from car_engine.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``embed`` subcommand."""
    p = sub.add_parser(
        "embed",
        help="embed every record's pair text (SPEC §3) into a .npy",
        description="Embed 'Instruction: ... Input: ... Response: ...' for every record with a "
        "sentence-transformers model (default all-MiniLM-L6-v2): float32 unit vectors, row i = "
        "record i, written in chunks to EMB.npy, with the record ids in EMB.ids.parquet. A "
        "conversation's vector is the mean of its turns' renormalised (--turns all) or its "
        "first pair's (--turns first).",
    )
    p.add_argument("input", help="corpus (.json/.jsonl/.parquet, Alpaca/ShareGPT/chat) or "
                   "builtin:sharegpt")
    p.add_argument("--out", required=True, help="embeddings file (.npy)")
    options.add_embed_flags(p, own=True)
    options.add_device(p)
    p.add_argument("--max-seq-length", type=int, default=EMBED_MAX_SEQ_LENGTH,
                   help="tokens per text, longer ones truncated "
                   f"(default {EMBED_MAX_SEQ_LENGTH}, the model's)")
    options.add_turn_flags(p, aggregate=False)
    options.add_limit(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read the corpus, embed it, report where the vectors and ids went."""
    from car_engine.embed import embed_records, ids_path

    if not str(args.out).endswith(".npy"):
        raise UsageError(f"--out {args.out}: embeddings are written as .npy")
    check_limit(args.limit)
    options.embed_params(args).check()
    if args.max_seq_length < 2:
        raise UsageError(f"--max-seq-length must be >= 2, got {args.max_seq_length}")
    corpus = options.read_records(args.input, args.limit)
    vectors = embed_records(corpus.records, args.out, model=args.embed_model,
                            batch_size=args.embed_batch_size, dtype=args.embed_dtype,
                            device=args.device, max_seq_length=args.max_seq_length,
                            compile=args.embed_compile, turns=args.turns,
                            progress=sys.stderr.isatty())
    print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} vectors to {args.out} "
          f"(ids: {ids_path(args.out)}; rejected items: {len(corpus.rejected)})")
    return 0
