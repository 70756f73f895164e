"""Real answers from another corpus for the composite IQS head's penalties (issue #21).

The expert-revision split has 2,032 training answers, too few for the penalty heads to learn
what a real answer looks like: they fired on 12-17% of the validation answers. A corpus of
real instruction pairs (ShareGPT by default) adds answers of other shapes and lengths that the
penalties must leave alone, and their corrupted copies (the suite's own code, fresh draws)
that the penalties must flag. The expert pairs still alone set the expert path's ranking.
"""

from __future__ import annotations

from typing import Any

from car_engine.batching import tokenize
from car_engine.errors import UsageError
from car_engine.iqs.pairs import Pairs
from car_engine.iqs.robustness import Corruption


def answer_pairs(source: str, skip: int, limit: int) -> Pairs:
    """Records ``skip .. skip + limit`` of a corpus (first turns), each as a pseudo-pair of
    its own pair text twice, so :func:`car_engine.iqs.robustness.corrupt` reads them like
    expert pairs. Records with an empty answer are left out (nothing to corrupt)."""
    from car_engine.corpus import load_corpus
    from car_engine.corpus.records import pair_texts

    # A reader's limit counts source items, rejected ones too: slice the records instead.
    everything = load_corpus(source).records
    if skip + limit > len(everything):
        raise UsageError(f"{source} has {len(everything)} usable records; records "
                         f"{skip}..{skip + limit} were asked for (lower --extra-skip or "
                         "--extra-limit)")
    records = everything.slice(skip, limit)
    keep = [t for t, out in zip(pair_texts(records), records.column("output").to_pylist(),
                                strict=True) if out and out.strip()]
    return Pairs([t for t in keep for _ in (0, 1)], f"{source}[{skip}:{skip + limit}]")


def visible(tokenizer: Any, corruptions: list[Corruption], length: int) -> list[Corruption]:
    """The corruptions whose first ``length`` tokens differ from their good text's: a long
    answer cut at 40% of its words can still fill the window, and would then teach the
    penalties to fire on the good text itself."""
    good = tokenize(tokenizer, [c.good for c in corruptions], length)
    bad = tokenize(tokenizer, [c.bad for c in corruptions], length)
    return [c for c, g, b in zip(corruptions, good, bad, strict=True) if g != b]
