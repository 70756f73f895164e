"""Real answers from another corpus for the composite IQS head's penalties (issue #21).

The expert-revision split has 2,032 training answers, too few for the penalty heads to learn
what a real answer looks like: they fired on 12-17% of the validation answers. A corpus of
real instruction pairs (ShareGPT by default) adds answers of other shapes and lengths that the
penalties must leave alone, and their corrupted copies (the suite's own code, fresh draws)
that the penalties must flag. The expert pairs still alone set the expert path's ranking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from car_engine.batching import tokenize
from car_engine.errors import UsageError
from car_engine.iqs.pairs import Pairs
from car_engine.iqs.robustness import Corruption


@dataclass(frozen=True)
class ExtraAnswers:
    """Where the extra real answers come from: records ``skip .. skip + limit`` of
    ``source`` to train on, the next ``valid`` to report the false alarms on."""

    source: str
    skip: int
    limit: int
    valid: int

    def pairs(self) -> tuple[Pairs, Pairs]:
        """The training slice and the held-out slice as pseudo-pairs (:func:`answer_pairs`),
        from one read of the corpus."""
        from car_engine.corpus import load_corpus

        # A reader's limit counts source items, rejected ones too: slice the records instead.
        records = load_corpus(self.source).records
        end = self.skip + self.limit + self.valid
        if end > len(records):
            raise UsageError(f"{self.source} has {len(records)} usable records; records "
                             f"{self.skip}..{end} were asked for (lower --extra-skip or "
                             "--extra-limit)")
        return (answer_pairs(records, self.skip, self.limit, self.source),
                answer_pairs(records, self.skip + self.limit, self.valid, self.source))


def answer_pairs(records: pa.Table, start: int, count: int, source: str) -> Pairs:
    """Records ``start .. start + count`` (first turns), each as a pseudo-pair of its own
    pair text twice, so :func:`car_engine.iqs.robustness.corrupt` reads them like expert
    pairs. Records with an empty answer are left out (nothing to corrupt)."""
    from car_engine.corpus.records import pair_texts

    part = records.slice(start, count)
    keep = [t for t, out in zip(pair_texts(part), part.column("output").to_pylist(),
                                strict=True) if out and out.strip()]
    return Pairs([t for t in keep for _ in (0, 1)], f"{source}[{start}:{start + count}]")


def visible(tokenizer: Any, corruptions: list[Corruption], length: int) -> list[Corruption]:
    """The corruptions whose first ``length`` tokens differ from their good text's: a long
    answer cut at 40% of its words can still fill the window, and would then teach the
    penalties to fire on the good text itself."""
    goods = list(dict.fromkeys(c.good for c in corruptions))  # each good text has ~7 copies
    good = dict(zip(goods, tokenize(tokenizer, goods, length), strict=True))
    bad = tokenize(tokenizer, [c.bad for c in corruptions], length)
    return [c for c, b in zip(corruptions, bad, strict=True) if good[c.good] != b]
