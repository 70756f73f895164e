"""The instruction-only pass of Cherry LLM's pre-experience step (SPEC §8), on the IFD engine.

One causal forward per record over its rendered prompt (no answer) gives the instruction's
perplexity (mean NLL of tokens 1.. given the ones before, as ``model(ids, labels=ids)``) and
its sentence vector (the mean of the last hidden state over all its tokens). The sequences
go through :class:`car_engine.ifd.IFDScorer`'s batching and forward (packed on CPU), and the
per-token loss through the fused cross-entropy, so no logits tensor is ever built. Then
k-means on the vectors (:func:`car_engine.cluster.kmeans`, no PCA: Cherry clusters the raw
vectors) and the sampling rule of :mod:`car_engine.select_pre`.

Token ids: in the default mode, BOS + the prompt's ids (no special tokens), cut to
``max_length``, as the IFD conditioned pass starts; with ``--compat`` the script's own call,
``tokenizer.encode(instruction_text, truncation=True, max_length=L)`` (Cherry's ``wiz`` text is
the bare instruction).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from car_engine import kernels
from car_engine.batching import head_ids, token_batches
from car_engine.errors import UsageError
from car_engine.ifd import IFDScorer
from car_engine.ifd_compat import compat_texts, truncated_ids
from car_engine.ifd_prompts import prompt_text, start_token, text_column

PRE_COLUMNS = ["id", "instruction_ppl", "instruction_tokens", "vector"]


@dataclass
class InstructionPass:
    """Per record: the instruction's perplexity (NaN with fewer than 2 tokens), its token
    count, and its sentence vector (NaN with no token)."""

    ppl: np.ndarray  # float64 [n]
    n_tokens: np.ndarray  # int64 [n]
    vectors: np.ndarray  # float32 [n, hidden]


def instruction_ids(scorer: IFDScorer, records: pa.Table) -> list[list[int]]:
    """Every record's instruction-only token ids (module docstring)."""
    instructions, inputs = text_column(records, "instruction"), text_column(records, "input")
    L, tok = scorer.max_length, scorer.tokenizer
    if scorer.compat is not None:
        texts = [compat_texts(scorer.compat, scorer.template, i, x, "").instruct
                 for i, x in zip(instructions, inputs)]
        return truncated_ids(tok, texts, [L] * len(texts))
    prompts = [prompt_text(scorer.template, i, x, tok) for i, x in zip(instructions, inputs)]
    start = start_token(tok)
    out = []
    for ids in head_ids(tok, prompts, L, add_special_tokens=False):
        head = ids if ids[:1] == [start] else [start, *ids]  # a chat template opens with BOS
        out.append(head[:L])
    return out


@torch.inference_mode()
def _batch(scorer: IFDScorer, seqs: list[list[int]]) -> tuple[list[float], torch.Tensor]:
    """Mean NLL of tokens 1.. and mean final hidden state of each sequence of one batch."""
    lengths = [len(s) for s in seqs]
    rows = [r for r, n in enumerate(lengths) for _ in range(n)]
    cols = [c for n in lengths for c in range(n)]
    hidden = scorer.hidden_at(seqs, rows, cols)
    starts = [0, *itertools.accumulate(lengths)]
    # position t predicts token t + 1: every position but each sequence's last
    predicting = torch.tensor([starts[r] + c for r, n in enumerate(lengths) for c in range(n - 1)],
                              dtype=torch.int64, device=hidden.device)
    targets = torch.tensor([t for s in seqs for t in s[1:]], device=hidden.device)
    offsets = torch.tensor([0, *itertools.accumulate(n - 1 for n in lengths)],
                           device=hidden.device)
    _, means = kernels.linear_cross_entropy(hidden[predicting], scorer.head_weight, targets,
                                            offsets)
    segment = torch.repeat_interleave(torch.arange(len(seqs), device=hidden.device),
                                      torch.tensor(lengths, device=hidden.device))
    sums = torch.zeros((len(seqs), hidden.shape[1]), dtype=torch.float32,
                       device=hidden.device).index_add_(0, segment, hidden.float())
    return means.tolist(), sums / torch.tensor(lengths, device=hidden.device)[:, None]


def instruction_pass(scorer: IFDScorer, records: pa.Table, *, progress: bool = True
                     ) -> InstructionPass:
    """Perplexity and sentence vector of every record's instruction, in token-budget batches
    (longest first; packed on CPU), results in input order."""
    ids = instruction_ids(scorer, records)
    n = len(ids)
    ppl = np.full(n, np.nan)
    vectors = np.full((n, scorer.head_weight.shape[1]), np.nan, dtype=np.float32)
    lengths = np.array([len(s) for s in ids], dtype=np.int64)
    todo = [i for i in range(n) if lengths[i] > 0]
    bar = tqdm(total=n, unit="record", disable=not progress, desc="pre-experience")
    bar.update(n - len(todo))
    for batch in token_batches([ids[i] for i in todo], scorer.batch_tokens):
        rows = [todo[b] for b in batch]
        losses, means = _batch(scorer, [ids[r] for r in rows])
        with np.errstate(over="ignore"):
            ppl[rows] = np.exp(np.array(losses, dtype=np.float64))
        vectors[rows] = means.cpu().numpy()
        bar.update(len(rows))
    bar.close()
    return InstructionPass(ppl, lengths, vectors)


def pre_table(records: pa.Table, result: InstructionPass) -> pa.Table:
    """PRE_COLUMNS: id, perplexity (null without one), token count, vector."""
    ppl = pa.array(result.ppl, mask=~np.isfinite(result.ppl))
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(result.vectors.ravel()),
                                                result.vectors.shape[1])
    return pa.table({"id": records.column("id").cast(pa.string()), "instruction_ppl": ppl,
                     "instruction_tokens": pa.array(result.n_tokens), "vector": vectors})


def cluster_labels(vectors: np.ndarray, k: int, *, seed: int, progress: bool = False
                   ) -> np.ndarray:
    """k-means labels of the vectors (rows with a NaN get -1: no cluster), k-means++ seeded."""
    from car_engine.cluster import assign, kmeans

    finite = np.isfinite(vectors).all(axis=1)
    if k > int(finite.sum()):
        raise UsageError(f"--pre-k {k} is more than the {int(finite.sum())} records with an "
                         "instruction to cluster")
    points = np.ascontiguousarray(vectors[finite], dtype=np.float32)
    centroids = kmeans(points, k, seed=seed, progress=progress)
    labels = np.full(vectors.shape[0], -1, dtype=np.int64)
    labels[finite] = assign(points, centroids)[0]
    return labels
