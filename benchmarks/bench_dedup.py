"""Near duplicates (native MinHash + LSH) vs datasketch and rensa, and SemDeDup vs brute-force
cosine per cluster, in one run.

    python -m benchmarks.bench_dedup [--quick] [--n N]
    python -m benchmarks.bench_dedup --engine-only --n 1000000   # the 1M-record memory run

Texts: every (user, assistant) turn pair of builtin:sharegpt as SPEC §1 pair text, plus planted
near copies (known edits: words replaced, a greeting changed, a sentence dropped, case and
spacing changed) to make up n. Every tool gets the same word 5-gram shingles of the same
normalised text, 260 permutations and 20 bands x 13 rows; each tool's time runs from the text
to the candidate pairs. datasketch and rensa run on a slice (they are slower) and are compared
per record. Quality: recall over the planted pairs whose exact Jaccard is >= 0.9 (both in one
group), and precision over a sample of reported pairs (exact Jaccard >= 0.7).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from car_engine import native
from car_engine.config import NearDupParams
from car_engine.reference import near_dup as ref

from .common import format_table, peak_rss_mb, row

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


def semantic_rows(quick: bool, n_near: int) -> list[dict]:
    """SemDeDup vs the whole cosine matrix per cluster, on both shapes of embeddings."""
    from car_engine.reference.semdedup import semantic_groups as brute_force
    from car_engine.semdedup import semantic_groups

    n, k, dim = (20_000, 100, 384) if quick else (100_000, 300, 384)
    if n_near < 1000:  # a smoke run (`bench --n 16`): a small set of the same shape
        n, k = 2000, 20
    eps = 0.05
    rows = []
    for shape in ("spectral", "isotropic"):
        x, labels = embeddings(n, k, dim, shape)
        start = time.perf_counter()
        found = semantic_groups(x, labels, eps)
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        want = brute_force(x, labels, eps)
        ref_s = time.perf_counter() - start
        same = bool(np.array_equal(found.groups, want))
        rows.append(row(f"dedup-semantic-{shape}", n, ours_s, ref_s, "identical groups",
                        float(same), same, groups=found.n_groups,
                        what=f"SemDeDup eps {eps}, {k} clusters (largest "
                        f"{np.bincount(labels).max()}), {shape} embeddings: projected test + "
                        "tiles vs whole cosine matrix per cluster",
                        target_speedup=5.0 if shape == "spectral" else ""))
    return rows


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20k records instead of 100k")
    parser.add_argument("--n", type=int, help="number of records")
    parser.add_argument("--engine-only", action="store_true",
                        help="time the engine alone on --n records (the 1M memory run)")
    args = parser.parse_args()
    if args.engine_only:
        print(json.dumps(million(args.n or 1_000_000)))
    else:
        print(format_table(run(quick=args.quick, n=args.n)))


if __name__ == "__main__":
    main()
