"""`car-engine iqs`: train, evaluate, export and run the IQS quality scorer (CaR ranking)."""

from __future__ import annotations

import argparse
import json
import sys

from car_engine.commands import options
from car_engine.config import (
    DEFAULT_MODEL,
    DEVICE_PRECISION,
    IQS_HEAD_INPUTS,
    IQS_PRECISIONS,
    IQSParams,
)


def register(subparsers) -> None:
    """Add `iqs` and its train/eval/export/score subcommands."""
    parser = subparsers.add_parser("iqs", help="IQS quality scorer: train, eval, export, score",
                                   description=__doc__)
    sub = parser.add_subparsers(dest="iqs_command", metavar="ACTION", required=True)

    train = sub.add_parser("train", help="train an IQS model on expert-revision pairs",
                           description="Train on adjacent (original=0, revised=1) CSV rows; "
                           "keep the epoch with the best pairwise accuracy on --valid.")
    train.add_argument("--train", required=True, metavar="CSV", help="training pairs (src,score)")
    train.add_argument("--valid", required=True, metavar="CSV", help="validation pairs")
    train.add_argument("--out", required=True, metavar="DIR", help="model folder to write")
    train.add_argument("--backbone", default=DEFAULT_MODEL, metavar="PATH",
                       help="local Hugging Face encoder folder (default: all-MiniLM-L6-v2)")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--freeze-backbone", action="store_true",
                       help="train only the layer mix and head (same as --train-blocks 0)")
    train.add_argument("--train-blocks", type=int, default=None, metavar="N",
                       help="fine-tune the top N encoder blocks (-1 = all; embeddings stay "
                            "frozen). Default: all, or none with --head-input composite (whose "
                            "trained blocks read cached lower layers)")
    train.add_argument("--loss", default="mse", choices=["mse", "margin", "mse+margin"],
                       help="CaR's MSE on 0/1 targets, a pairwise hinge, or both")
    train.add_argument("--margin", type=float, default=0.3, help="hinge margin")
    train.add_argument("--batch-pairs", type=int, default=16, help="pairs per optimizer step")
    train.add_argument("--head-lr", type=float, default=1e-3)
    train.add_argument("--encoder-lr", type=float, default=3e-5)
    train.add_argument("--weight-decay", type=float, default=0.01)
    train.add_argument("--hidden-sizes", default="",
                       help="head widths, comma-separated (default: 2H,H for an H-wide encoder)")
    train.add_argument("--dropout", type=float, default=0.1)
    train.add_argument("--layer-transform", default="sparsemax", choices=["sparsemax", "softmax"])
    train.add_argument("--max-length", type=int, default=512,
                       help="token limit (capped at the encoder's own)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--head-input", default="mean", choices=IQS_HEAD_INPUTS,
                       help="mean: CaR's mean pool; segments: also the prompt and response "
                       "pools of the same forward (a relevance signal); composite: "
                       "--expert-model's score minus relu-gated penalties learned on "
                       "corrupted copies (--hidden-sizes: the penalty widths)")
    train.add_argument("--expert-model", metavar="DIR",
                       help="composite: the mean-head model whose score is kept (frozen)")
    train.add_argument("--expert-weight", type=float, default=3.0,
                       help="composite: weight of keeping each expert pair's gap")
    train.add_argument("--real-weight", type=float, default=1.0,
                       help="composite: weight of holding the penalties off real answers")
    train.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                       help="composite: keep a moving average of the penalty weights (per "
                       "step, e.g. 0.99) and judge and save that")
    train.add_argument("--penalty-gate", type=float, default=0.1,
                       help="composite: penalty outputs below -GATE on real answers, above "
                       "+GATE for a corrupted copy's family")
    train.add_argument("--token-stats", action="store_true",
                       help="composite: the penalties also read token statistics computed in "
                       "the model (repeated 4-grams, the answer's ending, its word overlap "
                       "with the prompt; car_engine/iqs/token_stats.py)")
    train.add_argument("--extra-answers", metavar="CORPUS", default="",
                       help="composite: real answers of another corpus (e.g. builtin:sharegpt) "
                       "the penalties must leave alone, with corrupted copies they must flag")
    train.add_argument("--extra-skip", type=int, default=4000, metavar="N",
                       help="composite: skip the corpus's first N records (the demo's and the "
                       "benches' share)")
    train.add_argument("--extra-limit", type=int, default=4000, metavar="N",
                       help="composite: train on the next N records; the 500 after them are "
                       "held out to report false alarms on")
    train.add_argument("--extra-weight", type=float, default=1.0,
                       help="composite: weight of the extra answers' loss")
    train.add_argument("--negatives", type=int, default=0, metavar="N",
                       help="corrupted copies per training pair (random words, loops, "
                       "off-topic answers, cuts, shuffles, swapped instructions) held below "
                       "the good answer; the epoch is then picked on the robustness suite too")
    train.add_argument("--negative-weight", type=float, default=1.0,
                       help="weight of the corrupted-copy hinge in the loss")
    train.add_argument("--train-length", type=int, default=0, metavar="TOKENS",
                       help="token limit of the training features (default: --max-length)")
    train.set_defaults(func=run_train)

    evaluate = sub.add_parser("eval", help="pairwise accuracy on expert-revision pairs",
                              description="Paper's metric: revised beats original by >= 0.01.")
    evaluate.add_argument("--pairs", metavar="CSV",
                          help="expert-revision pairs (with --robustness, default: the "
                          "validation split in ../shared/data/expert-revised)")
    evaluate.add_argument("--robustness", action="store_true",
                          help="also rank each revised answer against corrupted copies "
                          "(random words, loops, off-topic, cuts, shuffles, swapped "
                          "instructions) and print the share won per kind")
    evaluate.add_argument("--max-length", type=int, default=None, metavar="TOKENS",
                          help="score at this token limit instead of the model's own")
    _add_runtime_args(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(func=run_eval)

    export = sub.add_parser("export", help="export the whole scorer to ONNX")
    export.add_argument("--iqs-model", "--model", dest="iqs_model", default=IQSParams.model,
                        help=options.IQS_MODEL_HELP)
    export.add_argument("--iqs-precision", "--precision", dest="iqs_precision",
                        default=DEVICE_PRECISION["iqs"][0], choices=IQS_PRECISIONS,
                        help="fp32; fp16 (GPUs); int8 dynamic quantization (CPUs)")
    export.add_argument("--out", required=True, metavar="FILE", help="the .onnx file to write")
    export.set_defaults(func=run_export)

    score = sub.add_parser("score", help="score a corpus: writes id, iqs (and turn_iqs)")
    score.add_argument("input", metavar="INPUT", help="corpus file or builtin:sharegpt")
    score.add_argument("--out", required=True, metavar="SCORES", help=".parquet or .jsonl")
    options.add_turn_flags(score)
    options.add_limit(score)
    _add_runtime_args(score)
    score.set_defaults(func=run_score)


def _add_runtime_args(parser: argparse.ArgumentParser) -> None:
    options.add_iqs_flags(parser, own=True)
    options.add_device(parser)


def _scorer(args: argparse.Namespace):
    from car_engine.iqs import IQSScorer

    return IQSScorer.load(args.iqs_model, runtime=args.iqs_runtime,
                          precision=args.iqs_precision, device=args.device,
                          batch_size=args.iqs_batch_size)


def run_train(args: argparse.Namespace) -> int:
    """`iqs train`."""
    from car_engine.errors import UsageError
    from car_engine.iqs.train import TrainOptions, train

    try:
        hidden = [int(h) for h in args.hidden_sizes.split(",") if h.strip()]
    except ValueError:
        raise UsageError(f"--hidden-sizes {args.hidden_sizes!r}: comma-separated "
                         "integers") from None
    if args.head_input == "composite":
        return _train_composite(args, hidden)
    train_options = TrainOptions(
        epochs=args.epochs, train_blocks=(0 if args.freeze_backbone else
                                          -1 if args.train_blocks is None else args.train_blocks),
        batch_pairs=args.batch_pairs, head_lr=args.head_lr, encoder_lr=args.encoder_lr,
        weight_decay=args.weight_decay, loss=args.loss, margin=args.margin, seed=args.seed,
        hidden_sizes=hidden, dropout=args.dropout, layer_transform=args.layer_transform,
        max_length=args.max_length, head_input=args.head_input, negatives=args.negatives,
        negative_weight=args.negative_weight, train_length=args.train_length)
    result = train(args.train, args.valid, args.out, backbone=args.backbone, options=train_options)
    best = result["best"]
    print(f"best epoch {best['epoch']}: valid pairwise accuracy {best['valid_accuracy']:.4f} "
          f"({best['valid_correct']}/{best['valid_pairs']}, ties {best['valid_ties']}) "
          f"-> {args.out}")
    return 0


def _train_composite(args: argparse.Namespace, hidden: list[int]) -> int:
    from car_engine.errors import UsageError
    from car_engine.iqs.composite_train import CompositeOptions, train_composite

    if not args.expert_model:
        raise UsageError("--head-input composite needs --expert-model DIR (a mean-head model)")
    composite = CompositeOptions(
        epochs=args.epochs, batch_pairs=args.batch_pairs, lr=args.head_lr,
        weight_decay=args.weight_decay, margin=args.margin, gate=args.penalty_gate,
        expert_weight=args.expert_weight, real_weight=args.real_weight,
        negative_weight=args.negative_weight, negatives=args.negatives or 3,
        hidden_sizes=hidden, dropout=args.dropout, train_length=args.train_length or 256,
        seed=args.seed, ema=args.ema, extra_corpus=args.extra_answers,
        extra_skip=args.extra_skip, extra_limit=args.extra_limit,
        extra_weight=args.extra_weight, encoder_lr=args.encoder_lr, token_stats=args.token_stats,
        train_blocks=0 if args.freeze_backbone or args.train_blocks is None else args.train_blocks)
    best = train_composite(args.train, args.valid, args.out, args.expert_model,
                           composite)["best"]
    shares = ", ".join(f"{k} {v:.3f}" for k, v in best["valid_robustness"].items())
    print(f"best epoch {best['epoch']}: valid pairwise accuracy {best['valid_accuracy']:.4f}; "
          f"suite {shares} -> {args.out}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """`iqs eval` (and `--robustness`: the corruption suite of issue #21)."""
    from car_engine.errors import CorpusError, UsageError
    from car_engine.iqs.pairs import pairwise_accuracy, read_pairs
    from car_engine.iqs.robustness import default_valid_csv, format_table, run_suite

    if args.pairs is None and not args.robustness:
        raise UsageError("iqs eval needs --pairs CSV (or --robustness, which defaults to the "
                         "validation split)")
    if args.max_length is not None and args.max_length < 1:
        raise UsageError("--max-length must be at least 1")
    if args.pairs is None and not default_valid_csv().is_file():
        raise CorpusError(f"{default_valid_csv()}: no validation split there; pass --pairs CSV "
                          "or set CAR_ENGINE_DATA to the folder holding expert-revised/")
    pairs = read_pairs(args.pairs or default_valid_csv())
    scorer = _scorer(args)
    if args.max_length is not None:
        scorer.max_length = args.max_length

    def score(texts: list[str]):
        return scorer.score_texts(texts, progress=not args.json)

    metrics = pairwise_accuracy(score(pairs.texts))
    metrics.update(pairs_file=str(args.pairs or default_valid_csv()), model=args.iqs_model,
                   runtime=scorer.describe(), max_length=scorer.max_length)
    if args.robustness:
        metrics["robustness"] = run_suite(score, pairs)
    if args.json:
        print(json.dumps(metrics))
        return 0
    print(f"pairwise accuracy {metrics['accuracy']:.4f}: {metrics['correct']} of "
          f"{metrics['pairs']} pairs correct, {metrics['ties']} ties, {metrics['wrong']} "
          f"wrong ({scorer.describe()}, {scorer.max_length} tokens)")
    if args.robustness:
        print("\nrobustness: the revised answer must outscore its corrupted copy by >= 0.01")
        print(format_table(metrics["robustness"]))
    return 0


def run_export(args: argparse.Namespace) -> int:
    """`iqs export`."""
    from car_engine.iqs.onnx import export, export_info
    from car_engine.iqs.score import load_any

    model, tokenizer = load_any(args.iqs_model)
    path = export(model, args.out, args.iqs_precision, tokenizer.pad_token_id or 0)
    print(export_info(path))
    return 0


def run_score(args: argparse.Namespace) -> int:
    """`iqs score`: every flag and the corpus are checked before the scorer loads."""
    from car_engine.config import check_limit, check_table_out
    from car_engine.io import write_table

    check_table_out(args.out)
    check_limit(args.limit)
    options.iqs_params(args).check()
    corpus = options.read_records(args.input, args.limit)
    for rejection in corpus.rejected[:5]:
        print(f"skipped: {rejection.message()}", file=sys.stderr)
    scores = _scorer(args).score(corpus.records, turns=args.turns,
                                 turn_aggregate=args.turn_aggregate)
    write_table(args.out, scores)
    print(f"{scores.num_rows} records scored -> {args.out} "
          f"({len(corpus.rejected)} rejected items)")
    return 0
