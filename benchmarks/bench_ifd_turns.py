"""Conversations scored turn by turn (SPEC §5), side by side with the plain ways, in one run:

- IFD on real ShareGPT conversations at max length 2048: the engine (one forward per
  conversation for every turn's conditioned loss, direct passes packed) vs the per-turn batch-1
  reference (car_engine.reference.ifd_turns: each turn a pair with its history as the prompt,
  two HF forwards with labels, fp32); turns/s and max |d loss| over every turn.
- IQS and embeddings with --turns all: the cost per turn of scoring conversations vs the cost
  per pair of the same turns given as single-turn items (no per-conversation overhead).

    python -m benchmarks.bench_ifd_turns [--quick] [--n N] [--min-turns T] [--ifd-only]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from car_engine.config import EmbedParams, IQSParams
from car_engine.corpus import load_corpus
from car_engine.corpus.conversations import parse_json
from car_engine.ifd import IFDScorer
from car_engine.ifd_turns import encode_conversations
from car_engine.models.registry import load_causal_model
from car_engine.reference.ifd_turns import reference_turns
from car_engine.turn_scores import turn_texts
from car_engine.workers import EmbedWorker, IQSWorker

from .common import bench_parser, model_gflop, print_rows, row, take_turns

TARGETS = {"ifd-turns-fp32": 4.0, "iqs-turns": 1 / 1.2, "embed-turns": 1 / 1.2}


def conversations(n: int, min_turns: int = 2) -> pa.Table:
    """The first ``n`` real ShareGPT records with at least ``min_turns`` scored turns."""
    table = load_corpus("builtin:sharegpt", limit=40 * n).records
    keep = [i for i, chat in enumerate(table.column("turns").to_pylist())
            if chat and len(parse_json(chat).scored) >= min_turns][:n]
    return table.take(keep)


def _ifd_rows(quick: bool, n: int, min_turns: int = 2) -> list[dict]:
    max_length = 256 if quick else 2048
    records = conversations(n, min_turns)
    scorer = IFDScorer("default", max_length=max_length, dtype="fp32", turns="all")
    chats = [parse_json(c) for c in records.column("turns").to_pylist()]
    model = load_causal_model("default", dtype="fp32")  # as transformers builds it

    def reference(part: list[int]) -> list[dict]:
        return [reference_turns(model, scorer.tokenizer, chats[i], template="none",
                                max_length=max_length) for i in part]

    def engine(part: list[int]) -> list[dict]:
        return scorer.score(records.take(part), progress=False).to_pylist()

    runners: dict[str, Callable[[list], Any]] = {"reference": reference, "engine": engine}
    for fn in runners.values():  # one-off setup (oneDNN, thread pool) outside the timing
        fn([0])
    seconds, parts = take_turns(runners, list(range(records.num_rows)), 2)
    ref = [r for p in parts["reference"] for r in p]
    eng = [r for p in parts["engine"] for r in p]
    deltas = [abs(g - w) for e, r in zip(eng, ref) for key in ("turn_loss_cond", "turn_loss_direct")
              for g, w in zip(e[key], r[key]) if w is not None and g is not None]
    same_turns = all(e["turn_n_tokens"] == r["turn_n_tokens"] for e, r in zip(eng, ref))
    turns = sum(e["turns_scored"] for e in eng)
    tokens = sum(n for e in eng for n in e["turn_n_tokens"] if n)
    delta = max(deltas) if deltas else float("nan")
    ceiling = work_ratio(scorer, records)
    speedup = seconds["reference"] / seconds["engine"]
    return [row("ifd-turns-fp32", turns, seconds["engine"], seconds["reference"],
                "max |d turn loss| vs per-turn batch-1 reference", delta,
                delta < 1e-4 and same_turns, unit="turns", conversations=records.num_rows,
                max_length=max_length, answer_tokens=tokens,
                work_ratio=round(ceiling, 2), speedup_of_work_ratio=round(speedup / ceiling, 2),
                target_speedup=TARGETS["ifd-turns-fp32"])]


def work_ratio(scorer: IFDScorer, records: pa.Table) -> float:
    """The reference's matmul work over the engine's on these conversations: the speed-up
    equal efficiency would give. Per scored turn the reference runs its whole history plus
    the reply and the reply alone, each with logits at every position; the engine runs each
    conversation once and each reply alone, with logits at answer positions only."""
    chats = [parse_json(c) for c in records.column("turns").to_pylist()]
    encoded = encode_conversations(scorer.tokenizer, chats, template=scorer.template,
                                   max_length=scorer.max_length)
    ref_len, ref_scored, eng_len, eng_scored = [], [], [], []
    for enc in encoded:
        if not enc.spans:
            continue
        eng_len.append(len(enc.cond_ids))
        eng_scored.append(sum(n for _, n in enc.spans))
        for (first, n), direct in zip(enc.spans, enc.direct):
            ref_len += [first + n, len(direct)]
            ref_scored += [n, n]
            eng_len.append(len(direct))
            eng_scored.append(n)
    model = load_causal_model("default", dtype="fp32")
    return model_gflop(model, ref_len, ref_scored, full_logits=True) / model_gflop(
        model, eng_len, eng_scored, full_logits=False)


def _singles(records: pa.Table) -> pa.Table:
    """Every scored turn of ``records`` as a single-turn record of its own."""
    rows: list[dict[str, Any]] = []
    for chat in records.column("turns").to_pylist():
        for turn in parse_json(chat).turns:
            if turn.scored:
                rows.append({"id": str(len(rows)), "position": len(rows),
                             "instruction": turn.user, "input": "", "output": turn.reply,
                             "turns": None})
    return pa.Table.from_pylist(rows, schema=records.schema)


def _encoder_rows(quick: bool, n: int) -> list[dict]:
    records = conversations(n)
    singles = _singles(records)
    texts, _ = turn_texts(records, "all")
    out = []
    iqs = IQSWorker(IQSParams(turns="all"))
    embed = EmbedWorker(EmbedParams(turns="all"))
    for name, worker in (("iqs-turns", iqs), ("embed-turns", embed)):
        worker(singles.slice(0, 2))  # warm-up
        got: dict[str, Any] = {}

        def conversations_run(_: list, worker=worker, got=got) -> None:
            got["turns"] = worker(records)

        def singles_run(_: list, worker=worker, got=got) -> None:
            got["singles"] = worker(singles)

        seconds, _ = take_turns({"engine": conversations_run, "reference": singles_run}, [0], 1)
        if name == "iqs-turns":
            per_turn = [v for r in got["turns"]["turn_iqs"].to_pylist()
                        for v in r if v is not None]
            delta = float(np.max(np.abs(np.array(per_turn) - np.array(
                got["singles"]["iqs"].to_pylist()))))
            check = "max |d turn IQS| vs the turns as single items"
        else:
            vectors = turn_means(got["singles"], records)
            delta = float(np.max(np.abs(vectors - got["turns"])))
            check = "max |d vector| vs mean of the turns as single items"
        out.append(row(name, len(texts), seconds["engine"], seconds["reference"], check,
                       delta, delta < 1e-5, unit="turns (engine) vs pairs (reference)",
                       conversations=records.num_rows, target_speedup=TARGETS[name]))
    return out


def turn_means(single_vectors: np.ndarray, records: pa.Table) -> np.ndarray:
    """Each conversation's renormalised mean of its turns' vectors (given in turn order)."""
    out, at = [], 0
    for chat in records.column("turns").to_pylist():
        k = len(parse_json(chat).scored)
        mean = single_vectors[at:at + k].astype(np.float64).mean(axis=0)
        out.append(mean / np.linalg.norm(mean))
        at += k
    return np.array(out, dtype=np.float32)


def run(quick: bool = False, n: int | None = None, min_turns: int = 2) -> list[dict]:
    """The IFD row and the IQS/embedding rows (``n`` conversations each, with at least
    ``min_turns`` scored turns: the IFD speed-up grows with the turns in the window)."""
    return _ifd_rows(quick, n or (3 if quick else 8), min_turns) + _encoder_rows(
        quick, n or (6 if quick else 40))


def main() -> None:
    """Command line: run the benchmark and print its table."""
    parser = bench_parser(__doc__, quick_help="a few conversations, length 256",
                          n_help="number of conversations")
    parser.add_argument("--min-turns", type=int, default=2,
                        help="only conversations with at least this many scored turns")
    parser.add_argument("--ifd-only", action="store_true", help="only the IFD row")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.ifd_only:
        rows = _ifd_rows(args.quick, args.n or (3 if args.quick else 8), args.min_turns)
    else:
        rows = run(args.quick, args.n, args.min_turns)
    print_rows(rows, started)

if __name__ == "__main__":
    main()
