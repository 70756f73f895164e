"""The one encoder pass (SPEC §10) on real ShareGPT pair texts, in one run, the runners taking
turns on chunks:

- engine: ``OnePassEncoder.encode_texts``, IQS and embedding from one packed forward at the
  embedding's 256 tokens (a text cut there gets a second forward for its IQS at 512);
- reference: the CaR way's two passes over the same texts: eager fp32 IQS in batches of 16
  at the model's 512 tokens, then one ``SentenceTransformer.encode`` per text;
- also timed: the engine's own two passes (ONNX Runtime fp32 IQS at 512 + the packed
  embedder), the path ``run --two-pass`` takes (``vs_two_pass_engine`` in the row).

Check: the one-pass IQS against the reference's (max |d|, must be < 1e-5; the embedding is
the embedder's own code path). ``long_texts`` counts the texts that needed the second forward.

    .venv/bin/python -m benchmarks.bench_one_pass [--quick] [--n N]
"""

from __future__ import annotations

import numpy as np

from car_engine.config import EMBED_MAX_SEQ_LENGTH
from car_engine.embed import Embedder
from car_engine.iqs import IQSScorer
from car_engine.iqs.score import load_any
from car_engine.models.registry import resolve_encoder
from car_engine.one_pass import OnePassEncoder
from car_engine.reference.embed import reference_embed, reference_encoder
from car_engine.reference.iqs import reference_scores

from .common import bench_main, row, sharegpt_pair_texts, take_turns

DEFAULT_N, QUICK_N = 400, 24


def run(quick: bool = False, n: int | None = None) -> list[dict]:
    """Time the one pass, the CaR way's two passes and the engine's two passes on ``n``
    texts; one row."""
    n = n or (QUICK_N if quick else DEFAULT_N)
    texts = sharegpt_pair_texts(n)
    iqs, tokenizer = load_any("default")
    st = reference_encoder(resolve_encoder("default"))
    one = OnePassEncoder()
    onnx, embedder = IQSScorer.load("default"), Embedder()

    def reference(part: list[str]) -> np.ndarray:
        scores = reference_scores(iqs, tokenizer, part, 16)
        reference_embed(part, st)
        return scores

    def two_pass_engine(part: list[str]) -> np.ndarray:
        scores = onnx.score_texts(part, progress=False)
        embedder.embed(part, progress=False)
        return scores

    runners = {"reference": reference, "two-pass": two_pass_engine,
               "engine": lambda part: one.encode_texts(part, progress=False)[0]}
    for fn in runners.values():  # warm-up (allocators, kernels), not timed
        fn(texts[:4])
    seconds, scores = take_turns(runners, texts, 12 if quick else 50, progress="bench one pass")
    got = np.concatenate(scores["engine"])
    value = float(np.abs(got - np.concatenate(scores["reference"])).max())
    long_texts = sum(len(ids) >= EMBED_MAX_SEQ_LENGTH
                     for ids in one.embedder.token_ids(texts))
    return [row("iqs-one-pass", n, seconds["engine"], seconds["reference"],
                "max_abs_diff_vs_reference", value, value < 1e-5,
                vs_two_pass_engine=round(seconds["two-pass"] / seconds["engine"], 3),
                long_texts=int(long_texts))]


def main() -> None:
    """Command line: run the benchmark and print its table."""
    bench_main(__doc__, run, quick_help=f"{QUICK_N} texts", n_help=f"texts (default {DEFAULT_N})")


if __name__ == "__main__":
    main()
