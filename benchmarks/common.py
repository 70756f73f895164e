"""What every benchmark shares: timing, peak memory, the row shape, the table and RESULTS.md."""

from __future__ import annotations

import argparse
import platform
import resource
import time
from collections.abc import Callable
from typing import Any

ROW_KEYS = ("stage", "items", "engine_per_s", "reference_per_s", "speedup", "peak_rss_mb",
            "check", "check_value", "check_ok")


def best_time(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """The fastest of ``repeat`` runs (the machine is shared and noisy) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def take_turns(runners: dict[str, Callable[[list], Any]], items: list, chunk: int,
               progress: str | None = None) -> tuple[dict[str, float], dict[str, list]]:
    """Run every runner over ``items`` a ``chunk`` at a time, the runners taking turns on each
    chunk; returns each one's summed seconds and its per-chunk results. On a shared machine a
    burst of outside load then slows all runners alike instead of whichever was running."""
    from tqdm.auto import tqdm

    seconds = dict.fromkeys(runners, 0.0)
    results: dict[str, list] = {name: [] for name in runners}
    for start in tqdm(range(0, len(items), chunk), desc=progress, unit="chunk",
                      disable=progress is None):
        part = items[start:start + chunk]
        for name, fn in runners.items():
            began = time.perf_counter()
            results[name].append(fn(part))
            seconds[name] += time.perf_counter() - began
    return seconds, results


def gemm_gflops(dtype: str, size: int = 2048) -> float:
    """This machine's torch GEMM throughput for ``dtype`` (fp32/bf16) right now: the best of 3
    square matmuls, the ceiling a transformer forward can approach. A dtype this CPU only
    emulates (bf16 without AVX512-BF16 or AMX: ~1 GFLOP/s) is measured at 512 (a 2048 matmul
    would take ~20 s each and say the same)."""
    import torch

    from car_engine.devices import TORCH_DTYPES

    def measure(n: int) -> float:
        a = torch.randn(n, n).to(TORCH_DTYPES[dtype])
        b = torch.randn(n, n).to(TORCH_DTYPES[dtype])
        a @ b  # warm-up
        seconds, _ = best_time(lambda: a @ b, repeat=3)
        return 2 * n**3 / seconds / 1e9

    probe = measure(512)
    return probe if probe < EMULATED_GFLOPS else measure(size)


EMULATED_GFLOPS = 10.0  # below this at 512, a dtype has no native kernel on this CPU


def bench_dtypes(quick: bool, dtypes: tuple[str, ...] = ("fp32", "bf16")) -> tuple[str, ...]:
    """The dtypes a CPU benchmark measures: all of them, except that a quick (smoke) run
    leaves out bf16 on a CPU that only emulates it (no AVX512-BF16/AMX: ~4x slower than fp32
    and minutes per row, measuring the emulation, not the engine); a full run keeps it."""
    import sys

    from car_engine.devices import cpu_has_native_bf16

    if not quick or "bf16" not in dtypes or cpu_has_native_bf16():
        return dtypes
    print("bench: quick run on a CPU without native bf16: bf16 rows left out",
          file=sys.stderr, flush=True)
    return tuple(d for d in dtypes if d != "bf16")


def transformer_gflop(body, lengths: list[int], *, causal: bool) -> float:
    """Matmul work (GFLOP) of a transformer stack ``body`` (a torch module with a ``config``)
    over sequences of ``lengths``: its linear layers (embedding tables excluded) at every
    position, plus attention (QK^T and AV; half of it when causal)."""
    cfg = body.config
    params = sum(p.numel() for n, p in body.named_parameters()
                 if "embed" not in n and "pooler" not in n)  # a BERT pooler sees one position
    attention = (2 if causal else 4) * cfg.num_hidden_layers * cfg.hidden_size
    return sum(2 * params * n + attention * n * n for n in lengths) / 1e9


def model_gflop(model: Any, lengths: list[int], scored: list[int], *, full_logits: bool) -> float:
    """Matmul work of the forwards: the body's linear layers and causal attention for every
    position, plus the output projection over scored positions (or all, with full logits)."""
    cfg = model.config
    body = transformer_gflop(model.model, lengths, causal=True)
    head = sum(length if full_logits else n for length, n in zip(lengths, scored))
    return body + 2 * cfg.vocab_size * cfg.hidden_size * head / 1e9


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def row(stage: str, items: int, engine_s: float, reference_s: float, check: str,
        check_value: float, check_ok: bool, **extra: Any) -> dict[str, Any]:
    """One comparison, in the shape `car-engine bench --json` writes."""
    return {
        "stage": stage,
        "items": items,
        "engine_per_s": items / engine_s if engine_s > 0 else float("inf"),
        "reference_per_s": items / reference_s if reference_s > 0 else float("inf"),
        "speedup": reference_s / engine_s if engine_s > 0 else float("inf"),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "check": check,
        "check_value": float(check_value),
        "check_ok": bool(check_ok),
        **extra,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of benchmark rows (the extra keys, like targets, go in last)."""
    extra = sorted({k for r in rows for k in r} - set(ROW_KEYS))
    keys = list(ROW_KEYS) + extra
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    """A one-line description of the machine the figures come from."""
    import os

    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
           f"{platform.python_implementation()} {platform.python_version()}, " \
           f"torch {torch.__version__}"


def bench_parser(doc: str | None, *, quick_help: str, n_help: str) -> argparse.ArgumentParser:
    """The flags every bench script takes (``--quick``, ``--n``); a script adds its own."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--n", type=int, default=None, help=n_help)
    return parser


def print_rows(rows: list[dict[str, Any]], started: float) -> None:
    """Print where the figures come from, how long they took, and the rows as Markdown."""
    print(f"# {machine()}, {time.perf_counter() - started:.0f} s")
    print(format_table(rows))


def bench_main(doc: str | None, run: Callable[..., list[dict[str, Any]]], *, quick_help: str,
               n_help: str) -> None:
    """Command line of a script whose ``run(quick, n)`` needs nothing else."""
    args = bench_parser(doc, quick_help=quick_help, n_help=n_help).parse_args()
    started = time.perf_counter()
    print_rows(run(quick=args.quick, n=args.n), started)


def sharegpt_pair_texts(n: int) -> list[str]:
    """The first ``n`` real ShareGPT records as IQS pair texts."""
    from car_engine.corpus import load_corpus, pair_texts

    records = load_corpus("builtin:sharegpt", limit=n + 50).records.slice(0, n)
    if records.num_rows < n:
        raise ValueError(f"builtin:sharegpt gave only {records.num_rows} records, {n} asked")
    return pair_texts(records)
