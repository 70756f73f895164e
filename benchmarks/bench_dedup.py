"""Near duplicates (native MinHash + LSH) vs datasketch and rensa, and SemDeDup vs brute-force
cosine per cluster, in one run.

    python -m benchmarks.bench_dedup [--quick] [--n N]
    python -m benchmarks.bench_dedup --engine-only --n 1000000   # the 1M-record memory run
    python -m benchmarks.bench_dedup --semdedup-memory           # RSS: one cluster vs many
    CAR_ENGINE_BENCH_EMBEDDINGS=emb.npy python -m benchmarks.bench_dedup --semdedup-only

Texts: every (user, assistant) turn pair of builtin:sharegpt as SPEC §1 pair text, plus planted
near copies (known edits: words replaced, a greeting changed, a sentence dropped, case and
spacing changed) to make up n. Every tool gets the same word 5-gram shingles of the same
normalised text, 260 permutations and 20 bands x 13 rows; each tool's time runs from the text
to the candidate pairs. datasketch and rensa run on a slice (they are slower) and are compared
per record. Quality: recall over the planted pairs whose exact Jaccard is >= 0.9 (both in one
group), and precision over a sample of reported pairs (exact Jaccard >= 0.7).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from car_engine import native
from car_engine.dedup_params import NearDupParams
from car_engine.reference import near_dup as ref

from .common import bench_parser, peak_rss_mb, print_rows, row

P = NearDupParams()
GREETINGS = ("Sure! ", "Certainly. ", "Of course! Here you go: ", "Great question. ")


def real_texts(limit: int) -> list[str]:
    """Pair texts of every turn of builtin:sharegpt (up to ``limit``)."""
    from car_engine.corpus import load_corpus, pair_text

    records = load_corpus("builtin:sharegpt").records
    texts: list[str] = []
    for raw, ins, out in zip(*(records.column(c).to_pylist()
                               for c in ("turns", "instruction", "output"))):
        turns = json.loads(raw) if raw else [{"content": ins}, {"content": out}]
        for u, a in zip(turns[0::2], turns[1::2]):
            texts.append(pair_text(u["content"], "", a["content"]))
        if len(texts) >= limit:
            break
    return texts[:limit]


def mutate(rng: np.random.Generator, text: str) -> str:
    """One near copy: a few words replaced, maybe a greeting, a dropped sentence, case."""
    words = text.split(" ")
    for at in rng.choice(len(words), size=max(1, len(words) // 100), replace=True):
        words[at] = "edit" + str(int(rng.integers(1000)))
    out = " ".join(words)
    kind = int(rng.integers(4))
    if kind == 0:
        out = GREETINGS[int(rng.integers(len(GREETINGS)))] + out
    elif kind == 1 and ". " in out:
        parts = out.split(". ")
        del parts[int(rng.integers(len(parts)))]
        out = ". ".join(parts)
    elif kind == 2:
        out = out.upper().replace(" ", "  ")
    return out


def corpus(n: int, seed: int = 0) -> tuple[list[str], list[tuple[int, int]]]:
    """n texts: real ones, then near copies of random real ones; returns (texts, planted
    (original, copy) index pairs)."""
    rng = np.random.default_rng(seed)
    base = real_texts(int(n * 0.8))
    texts = list(base)
    planted = []
    while len(texts) < n:
        src = int(rng.integers(len(base)))
        planted.append((src, len(texts)))
        texts.append(mutate(rng, base[src]))
    return texts, planted


def shingle_lists(texts: list[str]) -> list[list[str]]:
    return [sorted(ref.shingles(t, P.ngram)) for t in texts]


def ours(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sigs = native.minhash_signatures(texts, P.num_perm, P.seed, P.ngram)  # normalises too
    groups, left, right, sim = native.lsh_groups(sigs, P.bands, P.rows, 0.8)
    return groups, np.stack([left, right], 1)[sim >= 0.8], sigs


def datasketch_way(texts: list[str]) -> int:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=0.8, num_perm=P.num_perm, params=(P.bands, P.rows))
    hashes = []
    for i, sh in enumerate(shingle_lists(texts)):
        m = MinHash(num_perm=P.num_perm, seed=1)
        m.update_batch([s.encode() for s in sh])
        lsh.insert(i, m)
        hashes.append(m)
    return sum(len(lsh.query(m)) - 1 for m in hashes)


def rensa_way(texts: list[str]) -> int:
    from rensa import RMinHash, RMinHashLSH

    hashes = RMinHash.from_token_sets(shingle_lists(texts), P.num_perm, 1)
    lsh = RMinHashLSH(0.8, P.num_perm, P.bands)
    lsh.insert_many(hashes)
    return sum(len(c) for c in lsh.query_all(hashes))


def quality(texts: list[str], planted: list[tuple[int, int]], groups: np.ndarray,
            pairs: np.ndarray, rng: np.random.Generator) -> tuple[float, float, int, int]:
    """(recall, precision, pairs in recall's base, pairs in precision's sample)."""
    truth = [(a, b) for a, b in planted
             if ref.jaccard(ref.shingles(texts[a]), ref.shingles(texts[b])) >= 0.9]
    recall = float(np.mean([groups[a] == groups[b] for a, b in truth])) if truth else 1.0
    sample = pairs[rng.choice(len(pairs), min(2000, len(pairs)), replace=False)]
    precise = [ref.jaccard(ref.shingles(texts[a]), ref.shingles(texts[b])) >= 0.7
               for a, b in sample]
    return recall, float(np.mean(precise)) if precise else 1.0, len(truth), len(sample)


def near_rows(n: int, quick: bool) -> list[dict]:
    texts, planted = corpus(n)
    start = time.perf_counter()
    groups, pairs, _ = ours(texts)
    ours_s = time.perf_counter() - start
    recall, precision, n_truth, n_sample = quality(texts, planted, groups, pairs,
                                                   np.random.default_rng(1))
    ok = recall >= 0.95 and precision >= 0.95
    rows = []
    slices = (("datasketch", datasketch_way, 1000 if quick else 5000, 20.0),
              ("rensa", rensa_way, 3000 if quick else 20000, 1.0))
    for name, fn, size, target in slices:
        size = min(size, n)
        part = texts[:size]
        start = time.perf_counter()
        ours(part)
        ours_part = time.perf_counter() - start
        start = time.perf_counter()
        fn(part)
        ref_s = time.perf_counter() - start
        rows.append(row(f"dedup-near-vs-{name}", size, ours_part, ref_s,
                        "recall(J>=0.9) / precision(J>=0.7) on all n", min(recall, precision), ok,
                        what=f"MinHash 260 perms + LSH 20x13 from text, vs {name}",
                        engine_n_per_s=round(n / ours_s), n=n, recall=round(recall, 4),
                        precision=round(precision, 4), recall_pairs=n_truth,
                        precision_pairs=n_sample, groups=int((np.bincount(groups) > 1).sum()),
                        target_speedup=target))
    return rows


def embeddings(n: int, k: int, dim: int, shape: str, seed: int = 2
               ) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors in k clusters of uneven (log-normal) sizes, mean cosine ~0.5 inside a
    cluster, 5% near copies (cosine ~0.999) of others in their cluster. ``shape`` "spectral":
    the spread inside clusters falls off like a sentence encoder's spectrum (variance of
    component j ~ j^-1.1, so 95% of it lies in ~245 of 384 components, as SPEC §3 says of
    all-MiniLM-L6-v2 on Alpaca: 243); "isotropic": spread evenly over every dimension (the
    worst case for the projected test)."""
    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(0, 0.8, k)
    labels = rng.choice(k, n, p=sizes / sizes.sum())
    decay = np.ones(dim) if shape == "isotropic" else np.arange(1, dim + 1) ** -0.55
    scale = decay * np.sqrt(dim / (decay ** 2).sum())  # spread = the centres' norm: cos ~0.5
    rotation = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    x = rng.normal(size=(k, dim))[labels] + (rng.normal(size=(n, dim)) * scale) @ rotation
    copies = rng.choice(n, n // 20, replace=False)
    half = copies.size // 2
    noise = np.linalg.norm(x[copies[:half]], axis=1, keepdims=True) * 0.03 / np.sqrt(dim)
    x[copies[half:]] = x[copies[:half]] + rng.normal(size=(copies.size - half, dim)) * noise
    labels[copies[half:]] = labels[copies[:half]]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def real_based(path: str, n: int, k: int, seed: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors from the real embeddings in ``path`` (all-MiniLM-L6-v2 over ShareGPT
    user turns): every real vector, then real vectors moved by a real difference (x_i +
    0.6 (x_j - x_l) / sqrt(2), j and l two other real vectors: new points with the real
    spread, not duplicates), and 5% near copies (x_i + 0.05 of such a difference), all
    renormalised; clustered by the engine's k-means (PCA + k-means, k clusters)."""
    from car_engine.cluster import cluster

    real = np.load(path).astype(np.float32)
    rng = np.random.default_rng(seed)
    rest = max(0, n - real.shape[0])
    near = min(rest, n // 20)
    scale = np.repeat([0.6, 0.05], [rest - near, near])[:, None]
    base = rng.integers(real.shape[0], size=(rest, 3))
    moved = real[base[:, 0]] + scale * (real[base[:, 1]] - real[base[:, 2]]) / np.sqrt(2)
    x = np.concatenate([real, moved])[:n]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = cluster(x, k=k, progress=False).labels
    return x.astype(np.float32), labels


def timed(fn, *args) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process (all its threads), fn(*args))."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def semantic_rows(quick: bool, n_near: int) -> list[dict]:
    """SemDeDup vs the whole cosine matrix per cluster: synthetic embeddings of two shapes
    and, where CAR_ENGINE_BENCH_EMBEDDINGS names a .npy of real embeddings, the real vectors
    alone (clusters of ~333) and a 100k set built from them (:func:`real_based`)."""
    import os

    from car_engine.reference.semdedup import semantic_groups as brute_force
    from car_engine.semdedup import semantic_groups

    n, k, dim = (20_000, 100, 384) if quick else (100_000, 300, 384)
    if n_near < 1000:  # a smoke run (`bench --n 16`): a small set of the same shape
        n, k = 2000, 20
    eps = 0.05
    sets = [(shape, lambda shape=shape: embeddings(n, k, dim, shape))
            for shape in ("spectral", "isotropic")]
    path = os.environ.get("CAR_ENGINE_BENCH_EMBEDDINGS")
    if path and n_near >= 1000:
        count = np.load(path, mmap_mode="r").shape[0]
        sets += [("real", lambda: real_based(path, count, max(1, round(count / 333)))),
                 ("real-based", lambda: real_based(path, n, k))]
    rows = []
    for shape, make in sets:
        x, labels = make()
        ours_s, ours_cpu, found = timed(semantic_groups, x, labels, eps)
        ref_s, ref_cpu, want = timed(brute_force, x, labels, eps)
        same = bool(np.array_equal(found.groups, want))
        sizes = np.bincount(labels[labels >= 0])
        rows.append(row(f"dedup-semantic-{shape}", x.shape[0], ours_s, ref_s,
                        "identical groups", float(same), same, groups=found.n_groups,
                        what=f"SemDeDup eps {eps}, {sizes.size} clusters (largest "
                        f"{sizes.max()}), {shape} embeddings: bound on k={found.stats['dims']}"
                        " within-cluster principal directions + residual norm, native, vs "
                        "whole cosine matrix per cluster",
                        cpu_speedup=round(ref_cpu / max(ours_cpu, 1e-9), 2),
                        passed_bound=found.stats["passed_bound"],
                        target_speedup=5.0 if shape != "isotropic" else ""))
    return rows


def memory_probe(n: int, clusters: int, dim: int = 384) -> float:
    """Peak RSS (MB) that :func:`semantic_groups` adds over its input in a fresh process,
    for n vectors in ``clusters`` clusters of equal size."""
    import subprocess
    import sys

    code = (
        "import numpy as np, resource\n"
        "from car_engine.semdedup import semantic_groups\n"
        f"rng = np.random.default_rng(0); x = rng.standard_normal(({n}, {dim}), np.float32)\n"
        "x /= np.sqrt(np.einsum('ij,ij->i', x, x))[:, None]\n"  # no float64 copy: low baseline
        f"labels = np.arange({n}) % {clusters}\n"
        "semantic_groups(x[:64], labels[:64], 0.05)\n"  # imports and the native module loaded
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "semantic_groups(x, labels, 0.05)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.split()[-1])


def million(n: int, shard: int = 50_000) -> dict:
    """The engine alone on n records, streamed shard by shard (texts never all in memory):
    each record splices the first half of one real text onto the second half of another, and
    5% are near copies (:func:`mutate`) of a record of their shard."""
    base = [t.split(" ") for t in real_texts(10**9)]
    rng = np.random.default_rng(3)
    start = time.perf_counter()
    sigs = np.empty((n, P.num_perm), dtype=np.uint32)
    for lo in range(0, n, shard):
        size = min(shard, n - lo)
        pick = rng.integers(len(base), size=(size, 2))
        texts = [" ".join(base[a][:len(base[a]) // 2] + base[b][len(base[b]) // 2:])
                 for a, b in pick]
        for at in rng.choice(size, size // 20, replace=False):
            texts[at] = mutate(rng, texts[int(rng.integers(size))])
        sigs[lo:lo + size] = native.minhash_signatures(texts, P.num_perm, P.seed, P.ngram)
        del texts
    sig_s = time.perf_counter() - start
    start = time.perf_counter()
    groups, left, _, _ = native.lsh_groups(sigs, P.bands, P.rows, 0.8)
    lsh_s = time.perf_counter() - start
    return {"records": n, "signature_s": round(sig_s, 1), "lsh_s": round(lsh_s, 1),
            "candidate_pairs": int(left.size), "groups": int((np.bincount(groups) > 1).sum()),
            "peak_rss_mb": round(peak_rss_mb())}


def run(quick: bool = False, n: int | None = None) -> list[dict]:
    """The near-duplicate rows (vs datasketch, vs rensa) and the SemDeDup rows."""
    n = n or (20_000 if quick else 100_000)
    return [*near_rows(n, quick), *semantic_rows(quick, n)]


def main() -> None:
    """Command line: run the benchmark and print its table (or one probe's JSON)."""
    parser = bench_parser(__doc__, quick_help="20k records instead of 100k",
                          n_help="number of records")
    parser.add_argument("--engine-only", action="store_true",
                        help="time the engine alone on --n records (the 1M memory run)")
    parser.add_argument("--semdedup-only", action="store_true",
                        help="only the SemDeDup rows (and CAR_ENGINE_BENCH_EMBEDDINGS' rows)")
    parser.add_argument("--semdedup-memory", action="store_true",
                        help="peak RSS SemDeDup adds: --n (20k) vectors in 1 cluster vs 150")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.semdedup_memory:
        n = args.n or 20_000
        print(json.dumps({f"{n} rows, {c} clusters: added peak RSS MB": memory_probe(n, c)
                          for c in (1, 150)}))
    elif args.engine_only:
        print(json.dumps(million(args.n or 1_000_000)))
    elif args.semdedup_only:
        print_rows(semantic_rows(args.quick, args.n or 100_000), started)
    else:
        print_rows(run(quick=args.quick, n=args.n), started)


if __name__ == "__main__":
    main()
