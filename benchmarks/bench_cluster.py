"""Diversity stages against the reference, in one run, on the same real ShareGPT texts.

- embed: one ``SentenceTransformer.encode`` per text vs :class:`car_engine.embed.Embedder`
  (length-sorted batches), in fp32 and bf16, taking turns on chunks of texts; checks max |diff|
  (fp32) / min cosine (bf16).
- cluster: scikit-learn ``PCA(0.95)`` + ``KMeans(k, n_init=10)`` vs :func:`car_engine.cluster.
  cluster` on 20,000 real all-MiniLM-L6-v2 embeddings (made once, cached under cache_dir();
  ``--quick``: 8,000 texts cut at 32 tokens); checks inertia ratio engine / reference <= 1.01.
- cluster-<generator>-<n>-s<seed>: `car-engine cluster` vs the reference as whole processes on
  generated data it was not tuned on (benchmarks/cluster_checks.py); inertia ratio <= 1.005 in
  the reference's PCA space, 10x at 50,000 x 384.
- cluster-1M: a 1,000,000 x 384 synthetic run (k = 707) in a child process, for time and peak RSS.

    .venv/bin/python -m benchmarks.bench_cluster [--quick] [--n N] [--no-synthetic]
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

from car_engine.batching import tokenize
from car_engine.cluster import cluster
from car_engine.corpus import load_corpus, pair_text, pair_texts
from car_engine.embed import Embedder
from car_engine.io import atomic_path
from car_engine.models.registry import cache_dir, minilm_path
from car_engine.reference.cluster import reference_cluster
from car_engine.reference.embed import reference_embed, reference_encoder

from . import cluster_checks
from .common import (
    bench_dtypes,
    bench_parser,
    gemm_gflops,
    peak_rss_mb,
    print_rows,
    row,
    take_turns,
    transformer_gflop,
)

REAL_N = 20_000
FULL_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length: the engine's default
QUICK_N, QUICK_TOKENS = 8_000, 32
CACHE_PART = 1_000
CLUSTER_THREADS = 1
# Both sides run once per seed and are compared on total time: one seed is a lottery (how
# many Lloyd steps a start needs to converge swung our speed-up between 8.5x and 14.4x over
# five seeds on the same 8,000 points).
CLUSTER_SEEDS = (0, 1, 2, 3, 4)
SYNTHETIC_N, SYNTHETIC_D, SYNTHETIC_K = 1_000_000, 384, 707


def sharegpt_texts(n: int) -> list[str]:
    """``n`` real ShareGPT pair texts: every conversation's first human->gpt pair, then (to go
    past the 17,345 conversations) their later pairs, in corpus order."""
    # The first n texts are the first n records' pairs: a read of those items gives the same
    # texts without parsing the whole corpus (30 s on a busy box for a 16-text smoke run).
    first = load_corpus("builtin:sharegpt", limit=n + 50).records
    if first.num_rows >= n:
        return pair_texts(first.slice(0, n))
    records = load_corpus("builtin:sharegpt").records
    texts = pair_texts(records)
    for turns in records.column("turns").to_pylist():
        if len(texts) >= n:
            break
        turns = json.loads(turns) if turns else []
        pairs = [(a["content"], b["content"]) for a, b in zip(turns, turns[1:])
                 if a["role"] == "user" and b["role"] == "assistant"]
        texts.extend(pair_text(i, "", o) for i, o in pairs[1:])
    if len(texts) < n:
        raise ValueError(f"builtin:sharegpt has only {len(texts)} pairs, {n} asked")
    return texts[:n]


def real_embeddings(n: int, *, max_tokens: int = FULL_TOKENS, progress: bool = True
                    ) -> np.ndarray:
    """``n`` all-MiniLM-L6-v2 (bf16 compute) embeddings of :func:`sharegpt_texts` cut at
    ``max_tokens``, cached under ``cache_dir()/bench`` in parts of CACHE_PART rows: 20,000 full
    texts take an hour or more on two busy cores, so an interrupted build resumes where it
    stopped."""
    name = "sharegpt-minilm-bf16" + ("" if max_tokens == FULL_TOKENS else f"-{max_tokens}tok")
    folder = cache_dir() / "bench" / name
    folder.mkdir(parents=True, exist_ok=True)
    texts, embedder, parts = None, None, []
    count = math.ceil(n / CACHE_PART)
    for part in range(count):
        path = folder / f"part-{part:05d}.npy"
        if not path.is_file() or np.load(path, mmap_mode="r").shape[0] != CACHE_PART:
            texts = texts or sharegpt_texts(count * CACHE_PART)  # whole parts, whatever n
            embedder = embedder or Embedder(dtype="bf16", max_seq_length=max_tokens)
            vectors = embedder.embed(texts[part * CACHE_PART:(part + 1) * CACHE_PART],
                                     progress=progress)
            with atomic_path(path) as tmp, open(tmp, "wb") as out:
                np.save(out, vectors)
        parts.append(np.load(path))
    return np.concatenate(parts)[:n]


def timed(fn):
    """(wall seconds, CPU seconds of this process, result) of one call. CPU time is reported
    beside wall time because on the shared box wall time is mostly waiting for a core."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def bench_embed(n: int, chunk: int = 64, quick: bool = False) -> list[dict]:
    """Reference per-text encode vs the engine in fp32 and bf16 (packed, the CPU default), and
    bf16 through the padded transformers forward for comparison (no target), on the same ``n``
    texts; they take turns on chunks of ``chunk`` texts (see :func:`take_turns`)."""
    texts = sharegpt_texts(n)
    encoder = reference_encoder(minilm_path())
    engines = {"fp32": Embedder(dtype="fp32")}
    if "bf16" in bench_dtypes(quick):
        engines.update({"bf16": Embedder(dtype="bf16"),
                        "bf16-padded": Embedder(dtype="bf16", pack=False, batch_size=64)})
    runners = {"reference": lambda part: reference_embed(part, encoder)}
    runners.update({name: (lambda part, e=e: e.embed(part, progress=False))
                    for name, e in engines.items()})
    for fn in runners.values():  # warm-up: first-call allocations
        fn(texts[:2])
    seconds, vectors = take_turns(runners, texts, chunk)
    # How close each side runs to this machine's GEMM peak: the ceiling on the speed-up is
    # (bf16 peak / fp32 peak) x (engine's fraction of its peak / reference's of its own).
    fp32 = engines["fp32"]
    lengths = [len(ids) for ids in tokenize(fp32.tokenizer, texts, fp32.max_seq_length)]
    # the packed body keeps no transformers module: count the work on the reference's
    gflop = transformer_gflop(encoder[0].auto_model, lengths, causal=False)
    peak = {dtype: gemm_gflops(dtype) for dtype in {name.split("-")[0] for name in engines}}
    reference = np.concatenate(vectors.pop("reference"))
    common = {"reference_peak_fraction": round(gflop / seconds["reference"] / peak["fp32"], 3),
              "gemm_gflops_fp32": round(peak["fp32"], 1)}
    rows = []
    for name, parts in vectors.items():
        got = np.concatenate(parts)
        fraction = gflop / seconds[name] / peak[name.split("-")[0]]
        extra = {**common, "engine_peak_fraction": round(fraction, 3)}
        if name == "fp32":
            diff = float(np.abs(got - reference).max())
            rows.append(row("embed-fp32", n, seconds[name], seconds["reference"],
                            "max_abs_diff", diff, diff <= 1e-5, **extra))
            continue
        cosine = float((got * reference).sum(axis=1).min())
        extra["gemm_gflops_bf16"] = round(peak["bf16"], 1)
        target = None if name.endswith("padded") else 2.5
        rows.append(row(f"embed-{name}", n, seconds[name], seconds["reference"],
                        "min_cosine", cosine, cosine >= 0.999, target_speedup=target, **extra))
    return rows


def bench_cluster(n: int, max_tokens: int = FULL_TOKENS) -> list[dict]:
    """scikit-learn PCA(0.95) + KMeans(n_init=10) vs ours on ``n`` real embeddings of texts cut
    at ``max_tokens``, each run once per seed of CLUSTER_SEEDS (speed-up of the total time, mean
    inertia ratio); both sides are warmed up on a 500-point slice first."""
    vectors = np.ascontiguousarray(real_embeddings(n, max_tokens=max_tokens))
    k = int(math.sqrt(n / 2))
    # Both sides get the same CLUSTER_THREADS: on a shared box, multi-threaded BLAS/OpenMP made
    # scikit-learn 10-80x slower than one thread (PCA 28 s vs 0.35 s on 2,000 x 384), which
    # would flatter us; one thread each compares the algorithms, not the thread pools.
    with threadpool_limits(CLUSTER_THREADS):
        warm = vectors[:500]  # first calls load BLAS/OpenMP kernels: not what is compared
        warm_k = min(10, warm.shape[0])  # a smoke run (--n 8) has fewer than 10 points
        reference_cluster(warm, warm_k)
        cluster(warm, k=warm_k, progress=False)
        reference_s, reference_cpu, references = timed(
            lambda: [reference_cluster(vectors, k, seed=seed) for seed in CLUSTER_SEEDS])
        engine_s, engine_cpu, ours = timed(
            lambda: [cluster(vectors, k=k, seed=seed, progress=False) for seed in CLUSTER_SEEDS])
    ratios = [mine.inertia / theirs.inertia for mine, theirs in zip(ours, references)]
    ratio = float(np.mean(ratios))
    runs = len(CLUSTER_SEEDS)  # rates are per run: n points in the mean time of one run
    return [row("cluster", n, engine_s / runs, reference_s / runs, "inertia_ratio", ratio,
                ratio <= 1.01,
                cpu_speedup=reference_cpu / engine_cpu, k=k, threads=CLUSTER_THREADS,
                text_tokens=max_tokens, target_speedup=10, seeds=runs,
                inertia_ratio_max=max(ratios),
                n_components=f"{ours[0].n_components} (reference {references[0].n_components})")]


def synthetic_vectors(n: int, d: int, centers: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``centers`` random directions with a decaying spectrum, like
    sentence embeddings (float32, generated in blocks to keep memory at one copy)."""
    rng = np.random.default_rng(seed)
    scale = (1.0 / np.sqrt(np.arange(1, d + 1))).astype(np.float32)
    means = rng.standard_normal((centers, d), dtype=np.float32) * scale
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        block = means[rng.integers(0, centers, stop - start)]
        block += 0.5 * rng.standard_normal(block.shape, dtype=np.float32) * scale
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def _synthetic_child(n: int, d: int, k: int) -> dict:
    vectors = synthetic_vectors(n, d, k)
    start = time.perf_counter()
    result = cluster(vectors, k=k, progress=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "inertia": result.inertia,
            "n_components": result.n_components, "clusters_used": int(np.unique(
                result.labels).size)}


def bench_synthetic(n: int = SYNTHETIC_N, d: int = SYNTHETIC_D, k: int = SYNTHETIC_K) -> dict:
    """PCA + k-means on ``n`` x ``d`` synthetic vectors in a fresh process (its own peak RSS)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        figures = pool.submit(_synthetic_child, n, d, k).result()
    # No reference: scikit-learn's 10-restart k-means on 1M points would take hours here.
    synthetic = row(f"cluster-{n // 1000}k-synthetic", n, figures["seconds"], 0.0,
                    "clusters_used", figures["clusters_used"], figures["clusters_used"] == k,
                    k=k, n_components=str(figures["n_components"]))
    synthetic.update(reference_per_s=None, speedup=None, peak_rss_mb=figures["peak_rss_mb"])
    return synthetic


def cluster_data(quick: bool) -> tuple[int, int]:
    """(number of real embeddings, tokens per text) the cluster comparison runs on."""
    return (QUICK_N, QUICK_TOKENS) if quick else (REAL_N, FULL_TOKENS)


CHECK_N_FLOOR = 1_000  # a --n below this (smoke runs) shrinks the generated checks too
# A smoke run (--n below CHECK_N_FLOOR) runs the generated check of this generator only: each
# check is two whole processes (~10 s on a busy box) and every generator's row goes through
# the same code; sized runs (--n >= CHECK_N_FLOOR), --quick and full runs keep every check.
SMOKE_CHECK = "many-decaying"


def run(quick: bool = False, n: int | None = None, synthetic: bool | None = None) -> list[dict]:
    """All rows: embed (fp32, bf16), cluster (real), and unless ``quick`` the 1M synthetic.

    ``n`` is the number of real embeddings clustered: REAL_N full texts, or with ``quick``
    QUICK_N texts cut at QUICK_TOKENS tokens (a fresh machine embeds those in under a minute;
    20,000 full texts take an hour). The embed comparison runs on ``n // 100`` full texts
    (quick: 64, or ``n`` when it is given: a smoke run at ``--n 16`` should not spend minutes
    on 64 texts where bf16 is emulated), since the reference encodes one at a time.
    """
    default_n, max_tokens = cluster_data(quick)
    embed_n = (n or 64) if quick else max(64, (n or default_n) // 100)
    n = n or default_n
    rows = bench_embed(embed_n, quick=quick)
    rows += bench_cluster(n, max_tokens)
    # data the clustering was not tuned on (benchmarks/cluster_checks.py): whole processes
    smoke = n is not None and n < CHECK_N_FLOOR
    rows += cluster_checks.run(quick, n if smoke else None, only=SMOKE_CHECK if smoke else None)
    if synthetic if synthetic is not None else not quick:
        rows.append(bench_synthetic())
    return rows


def main() -> None:
    """Command line: run the benchmark and print its table."""
    parser = bench_parser(__doc__, quick_help="small sizes, no 1M synthetic run",
                          n_help="real embeddings to cluster")
    parser.add_argument("--no-synthetic", action="store_true", help="skip the 1M synthetic run")
    parser.add_argument("--build-cache", action="store_true",
                        help="only make the cached real embeddings (slow, once)")
    args = parser.parse_args()
    if args.build_cache:
        default_n, max_tokens = cluster_data(args.quick)
        real_embeddings(args.n or default_n, max_tokens=max_tokens)
        return
    started = time.perf_counter()
    print_rows(run(quick=args.quick, n=args.n, synthetic=False if args.no_synthetic else None),
               started)


if __name__ == "__main__":
    main()
