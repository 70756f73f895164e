"""IFD compat modes and the pre-experience pass vs their plain batch-1 references, on the same
real ShareGPT pairs with the default model, in one process (rows of `car-engine bench --stage
ifd`, which bench_ifd.run appends).

- ``ifd-compat-superfiltering`` / ``ifd-compat-cherry``: the engine under ``--compat`` against
  car_engine.reference.ifd_compat (each script restated at batch 1), and the default mode
  (exact boundaries, same template) on the same pairs: the compat mode should cost what the
  default mode costs (``vs_default`` >= 0.9).
- ``ifd-pre-experience``: the instruction-only pass (batched, packed) against the batch-1
  forward with all hidden states that Cherry's ``data_analysis.py --mod pre`` runs.

    python -m benchmarks.bench_ifd_compat [--quick] [--n N] [--only superfiltering,...]
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from car_engine.config import IFD_COMPAT_SELECTION
from car_engine.corpus import load_corpus
from car_engine.ifd import IFDScorer
from car_engine.ifd_prompts import OK
from car_engine.models.registry import load_causal_model
from car_engine.pre_experience import instruction_ids, instruction_pass
from car_engine.reference.ifd_compat import reference_compat_scores
from car_engine.reference.pre_experience import reference_instruction_pass

from .common import bench_parser, gemm_gflops, model_gflop, print_rows, row, take_turns

TARGETS = {"ifd-pre-experience": 3.0}
VS_DEFAULT = 0.9  # compat within 10% of the default mode's speed
CHUNK_PAIRS = 8
MODES = {"superfiltering": "none", "cherry": "alpaca"}


def _compat_row(compat: str, records: pa.Table, max_length: int) -> dict:
    template = MODES[compat]
    engine = IFDScorer("default", compat=compat, max_length=max_length)
    default = IFDScorer("default", template=template, max_length=max_length)
    model = load_causal_model("default", dtype="fp32")  # as transformers builds it
    runners = {
        "reference": lambda part: reference_compat_scores(
            model, engine.tokenizer, part, compat, max_length=max_length,
            prompt=template),
        "compat": lambda part: engine.score(part, progress=False),
        "default": lambda part: default.score(part, progress=False),
    }
    for fn in runners.values():  # one-off setup (oneDNN, thread pool) outside the timing
        fn(records.slice(0, 1))
    seconds, parts = take_turns(runners, records, CHUNK_PAIRS)
    got, want = (pa.concat_tables(parts[name]) for name in ("compat", "reference"))
    column = IFD_COMPAT_SELECTION[compat][0]
    status = got["status"].to_pylist()
    ok = np.array([s == OK for s in status])
    agree = all((s == OK) == (w == "ok") for s, w in zip(status, want["status"].to_pylist()))
    g = np.array(got[column].to_pylist(), dtype=float)[ok]
    w = np.array(want[column].to_pylist(), dtype=float)[ok]
    delta = float(np.max(np.abs(g - w))) if ok.any() else float("nan")
    vs_default = seconds["default"] / seconds["compat"]
    return row(f"ifd-compat-{compat}", records.num_rows, seconds["compat"], seconds["reference"],
               f"max |d {column}| vs script (statuses agree: {agree}; speed vs default mode "
               f"{vs_default:.2f}x, >= {VS_DEFAULT})", delta,
               bool(agree and delta < 1e-4 and vs_default >= VS_DEFAULT),
               scored_pairs=int(ok.sum()), max_length=max_length,
               default_mode_s=round(seconds["default"], 2), vs_default=round(vs_default, 3))


def _pre_row(records: pa.Table, max_length: int) -> dict:
    scorer = IFDScorer("default", compat="cherry", max_length=max_length)
    model = load_causal_model("default", dtype="fp32")  # as transformers builds it
    runners = {
        "reference": lambda part: reference_instruction_pass(model,
                                                             instruction_ids(scorer, part)),
        "engine": lambda part: instruction_pass(scorer, part, progress=False),
    }
    for fn in runners.values():
        fn(records.slice(0, 1))
    seconds, parts = take_turns(runners, records, 4 * CHUNK_PAIRS)
    ppl_ref = np.concatenate([p[0] for p in parts["reference"]])
    ppl = np.concatenate([p.ppl for p in parts["engine"]])
    vec_ref = np.concatenate([p[1] for p in parts["reference"]])
    vec = np.concatenate([p.vectors for p in parts["engine"]])
    rel = float(np.nanmax(np.abs(ppl - ppl_ref) / ppl_ref))
    lengths = [len(ids) for ids in instruction_ids(scorer, records)]
    # Both sides do the same matmul work: a perplexity needs the output projection at every
    # position, so the speed-up is only how much closer to this machine's GEMM peak batching
    # runs than batch 1 does (a CPU runs a 150-token batch-1 forward near its peak already).
    work = model_gflop(model, lengths, lengths, full_logits=True)
    peak = gemm_gflops("fp32")
    return row("ifd-pre-experience", records.num_rows, seconds["engine"], seconds["reference"],
               "max rel |d ppl| vs batch-1 forward", rel, rel < 1e-4,
               max_abs_d_vector=float(np.max(np.abs(vec - vec_ref))), tokens=sum(lengths),
               max_length=max_length, gemm_gflops_fp32=round(peak, 1),
               engine_gemm_fraction=round(work / seconds["engine"] / peak, 3),
               reference_gemm_fraction=round(work / seconds["reference"] / peak, 3),
               target_speedup=TARGETS["ifd-pre-experience"])


ROWS = (*MODES, "pre-experience")


def run(quick: bool = False, n: int | None = None, only: tuple[str, ...] = ROWS,
        max_length: int | None = None) -> list[dict]:
    """The compat rows on ``n`` pairs (96: Cherry scores about half of ShareGPT's pairs at
    512 tokens, so >= 48 of them) and the pre-experience row on 4n instructions (``only``:
    some of ROWS)."""
    n = n or (16 if quick else 96)
    max_length = max_length or (128 if quick else 512)
    corpus = load_corpus("builtin:sharegpt", limit=4 * n + 20).records
    records = corpus.slice(0, n)
    rows = [_compat_row(compat, records, max_length) for compat in MODES if compat in only]
    if "pre-experience" in only:
        rows.append(_pre_row(corpus.slice(0, 4 * n), max_length))
    return rows


def main() -> None:
    """Command line: run the benchmark and print its table."""
    parser = bench_parser(__doc__, quick_help="16 pairs at max length 128",
                          n_help="number of pairs (default 96)")
    parser.add_argument("--only", default=",".join(ROWS), help=f"rows to run (of {ROWS})")
    parser.add_argument("--max-length", type=int, help="IFD max length (default 512)")
    args = parser.parse_args()
    started = time.perf_counter()
    print_rows(run(quick=args.quick, n=args.n, only=tuple(args.only.split(",")),
                   max_length=args.max_length), started)


if __name__ == "__main__":
    main()
