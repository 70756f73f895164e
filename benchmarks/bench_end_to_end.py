"""The whole job as a user runs it: `car-engine run` with its defaults against the reference
way with the same models, each a whole process (imports, model loads and, on the engine's
side, the report and the score cache counted), on the same real ShareGPT pairs.

- ``pipeline-car``: ``run --method car`` vs car_engine.reference.car_way (eager fp32 IQS,
  one SentenceTransformer.encode per text, scikit-learn PCA + KMeans n_init=10); the check is
  the share of the reference's top-n1 picks the engine's selection keeps.
- ``pipeline-ifd-fp32`` / ``pipeline-ifd-bf16``: ``run --method ifd --ifd-dtype D`` vs
  car_engine.reference.superfiltering_way (Superfiltering's batch-1 procedure, fp32); the check
  is the share of the reference's picks kept. The engine's default IFD is the exact-boundary
  definition (SPEC §2), not Superfiltering's quirks, so a few picks differ by design.

    python -m benchmarks.bench_end_to_end [--quick] [--n N]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from car_engine.corpus import load_corpus

from .common import bench_dtypes, bench_main, row

CAR_N, CAR_QUICK_N, CAR_TARGET = 600, 40, 4.0
IFD_N, IFD_QUICK_N, IFD_MAX_LENGTH, IFD_QUICK_MAX_LENGTH = 48, 8, 512, 128
IFD_TARGETS = {"fp32": 1.3, "bf16": 2.5}
IFD_FRACTION = 0.25  # of 48 pairs: 12 picks, enough to compare two rankings


def write_corpus(path: Path, n: int) -> Path:
    """The first ``n`` real ShareGPT pairs as Alpaca JSONL items with their ids."""
    records = load_corpus("builtin:sharegpt", limit=n + 50).records.slice(0, n)
    with open(path, "w", encoding="utf-8") as f:
        for r in records.to_pylist():
            item = {"id": r["id"], "instruction": r["instruction"], "input": r["input"],
                    "output": r["output"]}
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    return path


def _seconds(command: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:5])} failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - start


def _engine(corpus: Path, out: Path, flags: list[str]) -> tuple[float, set[str]]:
    """Seconds of a whole `car-engine run` with ``flags``, and the ids it selected."""
    seconds = _seconds([sys.executable, "-m", "car_engine.cli", "run", str(corpus), "--out",
                        str(out), "--quiet", *flags])
    scores = pq.read_table(out / "scores.parquet", columns=["id", "selected"]).to_pylist()
    return seconds, {r["id"] for r in scores if r["selected"]}


def _reference(module: str, corpus: Path, out: Path, flags: list[str]) -> tuple[float, dict]:
    seconds = _seconds([sys.executable, "-m", f"car_engine.reference.{module}", str(corpus),
                        "--out", str(out), *flags])
    return seconds, json.loads(out.read_text())


def car_row(folder: Path, n: int) -> dict:
    """``run --method car`` (defaults) vs the CaR way, n1 = 5% of the pairs, n2 = 1."""
    corpus = write_corpus(folder / "car.jsonl", n)
    n1 = max(2, n // 20)
    ours_s, picked = _engine(corpus, folder / "car-run", ["--method", "car", "--n1", str(n1)])
    ref_s, ref = _reference("car_way", corpus, folder / "car-ref.json", ["--n1", str(n1)])
    kept = len(picked & set(ref["top_n1"])) / len(ref["top_n1"])
    overlap = len(picked & set(ref["selected"])) / len(ref["selected"])
    return row("pipeline-car", n, ours_s, ref_s, "share of the reference's top-n1 kept", kept,
               kept >= 0.95, target_speedup=CAR_TARGET, selection_overlap=round(overlap, 3),
               n1=n1, what="whole processes: car-engine run --method car (defaults) vs the "
               "CaR way (car_engine.reference.car_way)")


def ifd_rows(folder: Path, n: int, quick: bool = False) -> list[dict]:
    """``run --method ifd`` at fp32 and bf16 vs Superfiltering's batch-1 way."""
    corpus = write_corpus(folder / "ifd.jsonl", n)
    max_length = IFD_QUICK_MAX_LENGTH if quick else IFD_MAX_LENGTH
    common = ["--max-length", str(max_length)]
    ref_s, ref = _reference("superfiltering_way", corpus, folder / "ifd-ref.json",
                            [*common, "--fraction", str(IFD_FRACTION)])
    want = set(ref["selected"])
    rows = []
    for dtype in bench_dtypes(quick, tuple(IFD_TARGETS)):
        target = IFD_TARGETS[dtype]
        ours_s, picked = _engine(corpus, folder / f"ifd-{dtype}",
                                 ["--method", "ifd", "--ifd-dtype", dtype,
                                  "--ifd-frac", str(IFD_FRACTION), *common])
        kept = len(picked & want) / len(want) if want else 1.0
        rows.append(row(f"pipeline-ifd-{dtype}", n, ours_s, ref_s,
                        "share of the reference's picks kept", kept, True,
                        target_speedup=target, picks=len(want),
                        what=f"whole processes: car-engine run --method ifd --ifd-dtype {dtype} "
                        f"vs Superfiltering's batch-1 procedure (fp32), {max_length} tokens"))
    return rows


def run(quick: bool = False, n: int | None = None) -> list[dict]:
    """The CaR row and the two IFD rows (``n`` replaces both sizes)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        car_n = n or (CAR_QUICK_N if quick else CAR_N)
        ifd_n = n or (IFD_QUICK_N if quick else IFD_N)
        return [car_row(folder, car_n), *ifd_rows(folder, ifd_n, quick)]


def main() -> None:
    """Command line: run the benchmark and print its table."""
    bench_main(__doc__, run, quick_help="40 (car) and 8 (ifd) pairs",
               n_help="pairs of both corpora")


if __name__ == "__main__":
    main()
