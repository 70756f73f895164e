"""`car-engine prepare`: make the default models' derived files once, ahead of the first job.

The default IFD model ships as a GGUF that is converted to safetensors on first use (~25 s),
and the IQS scorer runs from an ONNX export made on first use; `make setup` calls this so
that neither cost falls on the first `run`, `bench` or test.
"""

from __future__ import annotations

import argparse
import time

from car_engine.models.registry import DEFAULT, cache_dir, causal_lm_path, minilm_path

IQS_PRECISIONS = ("fp32", "int8")  # the CPU ones; fp16 is exported on a GPU machine when asked


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``prepare`` subcommand."""
    p = sub.add_parser(
        "prepare", help="convert and export the default models into the cache (once)",
        description="Convert the SmolLM2 GGUF to safetensors and export the default IQS scorer "
        f"to ONNX ({', '.join(IQS_PRECISIONS)}) under the car-engine cache folder "
        "(CAR_ENGINE_CACHE, default ~/.cache/car-engine). Files already there and current are "
        "kept; safe to run again.")
    p.set_defaults(func=main)


def _torch_sees_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def main(args: argparse.Namespace) -> int:
    """Prepare every default model, saying where each one is."""
    from car_engine.iqs import IQSScorer

    print(f"cache: {cache_dir()}")
    print(f"embeddings: all-MiniLM-L6-v2 at {minilm_path()} (used as installed)")
    began = time.perf_counter()
    folder = causal_lm_path(DEFAULT)  # converts the GGUF the first time
    print(f"ifd: SmolLM2-135M-Instruct at {folder} ({time.perf_counter() - began:.0f} s)")
    from car_engine.iqs.onnx import expects_gpu

    # On a GPU machine (onnxruntime-gpu and a GPU torch sees) the fp16 graph is the default
    # IQS precision there: export it now too.
    gpu = expects_gpu("auto") and _torch_sees_gpu()
    for precision in (*IQS_PRECISIONS, "fp16") if gpu else IQS_PRECISIONS:
        began = time.perf_counter()
        scorer = IQSScorer.load(DEFAULT, runtime="onnx", precision=precision)
        print(f"iqs {precision}: {scorer.describe()} ({time.perf_counter() - began:.0f} s)")
    return 0
