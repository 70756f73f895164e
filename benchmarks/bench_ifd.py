"""IFD engine vs the reference way (batch 1, two HF forwards with labels, Superfiltering style),
on the same real ShareGPT pairs with the default model, in one process.

    python -m benchmarks.bench_ifd [--quick] [--n N]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import torch

from car_engine.config import IFD_DTYPES
from car_engine.corpus import load_corpus
from car_engine.devices import TORCH_DTYPES
from car_engine.ifd import IFDScorer
from car_engine.ifd_prompts import OK
from car_engine.models.registry import load_causal_model
from car_engine.reference.ifd import reference_scores

from . import bench_guard, bench_ifd_compat, bench_ifd_turns
from .common import bench_dtypes, bench_main, gemm_gflops, model_gflop, row, take_turns

TARGETS = {"ifd-fp32": 1.1, "ifd-bf16": 2.5}
CHUNK_PAIRS = 8


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Rank correlation (no ties expected in real-valued scores)."""
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def _probe_loss(tokens: int, dtype: str) -> None:
    """Subprocess body: time and peak RSS growth (MB) of the engine's loss and of
    ``cross_entropy`` on materialised logits, for ``tokens`` positions with SmolLM2's shapes."""
    import json
    import resource

    import torch.nn.functional as F

    from car_engine import kernels

    def rss_mb() -> float:
        # VmHWM belongs to this process' own address space; ru_maxrss would also carry the
        # parent's high-water mark across fork + exec and hide everything below it.
        try:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    dt = TORCH_DTYPES[dtype]
    # Filled in place: a temporary here would raise the high-water mark above the loss's.
    weight = torch.empty(49152, 576, dtype=dt).normal_(0, 0.05)
    hidden = torch.empty(tokens, 576, dtype=dt).normal_()
    targets = torch.randint(0, 49152, (tokens,))
    offsets = torch.tensor([0, tokens])
    kernels.token_nll(hidden[:8], weight, targets[:8])  # warm-up: allocator and thread pool
    before = rss_mb()
    start = time.perf_counter()
    kernels.linear_cross_entropy(hidden, weight, targets, offsets)
    engine_s, engine_mb = time.perf_counter() - start, rss_mb() - before
    start = time.perf_counter()  # what HF does: full logits, upcast, cross_entropy
    F.cross_entropy((hidden @ weight.T).float(), targets, reduction="none").mean()
    reference_s, reference_mb = time.perf_counter() - start, rss_mb() - before
    print(json.dumps({"engine_s": engine_s, "engine_mb": engine_mb,
                      "reference_s": reference_s, "reference_mb": reference_mb}))


def loss_probe(tokens: int, dtype: str = "fp32") -> dict[str, float]:
    """:func:`_probe_loss` in a fresh process, so nothing allocated earlier hides the peak."""
    import json

    code = ("from car_engine.benchmarks.bench_ifd import _probe_loss; "
            f"_probe_loss({tokens}, {dtype!r})")
    # A fixed mmap threshold makes glibc hand every large buffer back on free, so the RSS
    # high-water mark is the live peak rather than an accident of heap fragmentation.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ifd(table) -> np.ndarray:
    return np.array(table["ifd_ppl"].to_pylist(), dtype=float)


def run(quick: bool = False, n: int | None = None) -> list[dict]:
    """Engine fp32 and bf16 vs the batch-1 HF reference on the same pairs, the three taking
    turns on chunks of pairs; loss memory at two sizes; then the compat, pre-experience and
    turn rows, each at its own default size unless ``n`` is given (turns: ``n // 4``
    conversations, about as many turn pairs as ``n`` pairs)."""
    requested, n = n, n or (16 if quick else 64)
    max_length = 128 if quick else 512
    records = load_corpus("builtin:sharegpt", limit=n).records
    dtypes = bench_dtypes(quick, IFD_DTYPES)
    engines = {d: IFDScorer("default", max_length=max_length, dtype=d) for d in dtypes}
    fp32 = engines["fp32"]
    pairs = fp32.encode(records)
    ok = [p for p in pairs if p.status == OK]
    cond_len = [len(p.cond_ids) for p in ok] + [len(p.direct_ids) for p in ok]
    scored_n = [p.n_answer for p in ok] * 2
    tokens = sum(cond_len)

    reference = load_causal_model("default", dtype="fp32")
    runners = {"reference": lambda part: reference_scores(reference, part, fp32.encode(part))}
    runners.update({d: (lambda part, e=e: e.score(part, progress=False))
                    for d, e in engines.items()})
    for fn in runners.values():  # first forwards pay one-off setup (oneDNN, thread pool)
        fn(records.slice(0, 1))
    # A chunk is one engine batch or so; taking turns spreads outside load over all of them.
    seconds, parts = take_turns(runners, records, CHUNK_PAIRS)
    ifd = {name: _ifd(pa.concat_tables(got)) for name, got in parts.items()}
    ref_s = seconds["reference"]
    model = reference
    body_only = model_gflop(model, cond_len, scored_n, full_logits=False)
    full = model_gflop(model, cond_len, scored_n, full_logits=True)
    peak = {d: gemm_gflops(d) for d in dtypes}
    mask = np.array([p.status == OK for p in pairs])
    delta = float(np.nanmax(np.abs(ifd["fp32"][mask] - ifd["reference"][mask])))
    common = {"max_length": max_length, "tokens": tokens, "reference_tokens_per_s":
              round(tokens / ref_s, 1), "reference_gemm_fraction": round(full / ref_s / peak[
                  "fp32"], 3), "gemm_gflops_fp32": round(peak["fp32"], 1)}

    def speed(d: str) -> dict:
        return {"engine_tokens_per_s": round(tokens / seconds[d], 1), "engine_gemm_fraction":
                round(body_only / seconds[d] / peak[d], 3), "target_speedup": TARGETS[f"ifd-{d}"]}

    rows = [row("ifd-fp32", len(records), seconds["fp32"], ref_s, "max |d ifd_ppl| vs reference",
                delta, delta < 1e-4, **speed("fp32"), **common)]
    if "bf16" in dtypes:
        rho = spearman(ifd["fp32"][mask], ifd["bf16"][mask])
        rows.append(row("ifd-bf16", len(records), seconds["bf16"], ref_s,
                        "Spearman(ifd_ppl) vs fp32 engine", rho, rho >= 0.99, **speed("bf16"),
                        gemm_gflops_bf16=round(peak["bf16"], 1), **common))
    sizes = (256, 1024) if quick else (2048, 8192)
    probes = {s: loss_probe(s) for s in sizes}
    base = probes[sizes[0]]["engine_mb"]
    for s in sizes:
        p = probes[s]
        rows.append(row(f"ifd-loss-memory-{s}", s, p["engine_s"], p["reference_s"],
                        "loss extra MB minus smallest size's", p["engine_mb"] - base,
                        p["engine_mb"] - base < 64, loss_extra_mb=round(p["engine_mb"], 1),
                        materialised_logits_extra_mb=round(p["reference_mb"], 1)))
    rows += bench_ifd_compat.run(quick=quick, n=requested)  # compat modes, pre-experience
    conversations = requested and max(1, requested // 4)
    rows += bench_ifd_turns.run(quick=quick, n=conversations)  # turn by turn (SPEC §5)
    # the quality guard (#22): four whole runs on 444 records, too long for a quick run
    return rows if quick else rows + bench_guard.run()


def main() -> None:
    """Command line: run the benchmark and print its table."""
    bench_main(__doc__, run, quick_help="16 pairs at max length 128",
               n_help="number of pairs (default 64)")


if __name__ == "__main__":
    main()
