"""Rescoring a changed corpus: `car-engine run` with the score cache against a fresh run.

A corpus of N real ShareGPT pairs is run once (filling the cache); then it grows by 20% new
pairs, 5% of its pairs are edited, and it is shuffled. Both sides run the changed corpus as
whole processes (imports and model loads counted): the fresh run scores every record, the
cached rerun only the new and edited ones. The check: the two select the same bytes and the
rerun scored exactly the changed records. ``ideal_speedup`` is records / changed records, the
ratio if nothing but scoring took time.

    python -m benchmarks.bench_rescore [--quick] [--n N]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from car_engine.corpus import load_corpus

from .common import bench_main, row

# method -> (full N, quick N, extra flags): IFD runs two causal-LM passes, so fewer pairs
METHODS = {"car": (500, 40, ["--n2", "1"]), "ifd": (96, 16, ["--max-length", "256"])}


def changed_corpus(n: int, seed: int = 0) -> tuple[list[dict], list[dict], int]:
    """(first corpus, the changed one, how many of its records are new or edited: not in the
    first corpus)."""
    records = load_corpus("builtin:sharegpt", limit=2 * n + 50).records
    items = [{"instruction": r["instruction"], "input": r["input"], "output": r["output"]}
             for r in records.slice(0, n + n // 5).to_pylist()]
    first, grown = items[:n], [dict(i) for i in items]
    rng = np.random.default_rng(seed)
    edited = rng.choice(n, size=max(1, n // 20), replace=False)
    for i in edited:
        grown[i]["output"] += " (edited)"
    order = rng.permutation(len(grown))
    # what the cache has not seen: a "new" pair may repeat one of the first corpus (ShareGPT
    # has exact duplicates), and that one is a cache hit
    seen = {tuple(item.values()) for item in first}
    unseen = sum(tuple(item.values()) not in seen for item in grown)
    return first, [grown[i] for i in order], unseen


def _write(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items))
    return path


def _run(corpus: Path, out: Path, method: str, flags: list[str], cache: list[str]) -> float:
    """Seconds of one whole `car-engine run` process."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "car_engine.cli", "run", str(corpus), "--out",
                    str(out), "--method", method, "--quiet", "--no-report", *flags, *cache],
                   check=True, capture_output=True)
    return time.perf_counter() - start


def bench_method(method: str, n: int) -> dict:
    """One row: the cached rerun of the changed corpus against a fresh run of it."""
    flags = METHODS[method][2] + (["--n1", str(max(2, n // 25))] if method == "car" else [])
    first, grown, changed = changed_corpus(n)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cache = ["--score-cache", str(folder / "cache")]
        _run(_write(folder / "first.jsonl", first), folder / "first", method, flags, cache)
        corpus = _write(folder / "grown.jsonl", grown)
        fresh_s = _run(corpus, folder / "fresh", method, flags, ["--no-score-cache"])
        cached_s = _run(corpus, folder / "rerun", method, flags, cache)
        same = ((folder / "fresh" / "selected.jsonl").read_bytes()
                == (folder / "rerun" / "selected.jsonl").read_bytes())
        stages = json.loads((folder / "rerun" / "summary.json").read_text())["score_cache"]
        computed = {s: c["computed"] for s, c in stages.items() if isinstance(c, dict)}
    ok = same and all(v == changed for v in computed.values())
    return row(f"rescore-{method}", len(grown), cached_s, fresh_s,
               "records scored / changed (selection identical)",
               max(computed.values()) / changed if same else -1.0, ok,
               changed=changed, ideal_speedup=round(len(grown) / changed, 2))


def run(quick: bool = False, n: int | None = None) -> list[dict]:
    """Both rows (car, ifd); ``n`` replaces the size of the first corpus of each."""
    return [bench_method(m, n or (quick_n if quick else full_n))
            for m, (full_n, quick_n, _) in METHODS.items()]


def main() -> None:
    """Command line: run the benchmark and print its table."""
    bench_main(__doc__, run, quick_help="40 (car) and 16 (ifd) pairs",
               n_help="pairs in the first corpus")


if __name__ == "__main__":
    main()
