"""Two-pass IFD scoring (SPEC §2): templates, exact token boundaries, batched forwards.

Per record: the conditioned pass (BOS + prompt + answer) and the direct pass (BOS [+ header] +
the same answer) both score exactly the kept answer tokens. Sequences of both passes are sorted
by length and grouped into token-budget batches; only the model body runs (on CPU packed,
without padding: :mod:`car_engine.packed_llama`), and the hidden states at answer positions
go through the fused cross-entropy kernels (no ``[batch, seq, vocab]`` logits tensor ever
exists).
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch
from tqdm import tqdm

from car_engine import kernels
from car_engine.batching import pad_batch, token_batches
from car_engine.config import (
    DEFAULT_MODEL,
    IFD_COMPAT_PROMPTS,
    IFD_DTYPES,
    IFDParams,
    check_turns,
    resolve_precision,
)
from car_engine.corpus import RecordsLike, as_records, load_corpus
from car_engine.devices import torch_device, torch_dtype, warn_if_emulated
from car_engine.errors import ModelError, UsageError
from car_engine.ifd_compat import encode_compat
from car_engine.ifd_pairs import encode_pairs, scores_table
from car_engine.ifd_prompts import OK, EncodedPair, check_template, start_token


def resolve_preset(template: str, compat: str | None) -> str:
    """The prompt template for a template and an optional compat preset (whose own prompts
    are config.IFD_COMPAT_PROMPTS; ``none``, the default, means the preset's first)."""
    if compat is None:
        check_template(template)
        return template
    if compat not in IFD_COMPAT_PROMPTS:
        raise UsageError(f"unknown compat preset '{compat}': choose one of "
                         f"{', '.join(IFD_COMPAT_PROMPTS)}")
    prompts = IFD_COMPAT_PROMPTS[compat]
    if template == "none":
        return prompts[0]
    if template not in prompts:
        raise UsageError(f"--compat {compat} implies --template {' or '.join(prompts)}, "
                         f"not '{template}'")
    return template


@dataclass(frozen=True)
class _Sequence:
    record: int
    direct: bool
    ids: list[int]
    n_score: int


def plan_batches(sequences: list[_Sequence], batch_tokens: int, *, padded: bool = True
                 ) -> list[list[_Sequence]]:
    """Longest first, with at most ``batch_tokens`` token positions per batch (a sequence
    longer than the budget runs alone): rows x the longest row when ``padded``, else the sum
    of lengths (:func:`car_engine.batching.token_batches`)."""
    if not padded:
        return [[sequences[i] for i in rows]
                for rows in token_batches([s.ids for s in sequences], batch_tokens)]
    ordered = sorted(sequences, key=lambda s: len(s.ids), reverse=True)
    batches: list[list[_Sequence]] = []
    for seq in ordered:
        if batches and len(batches[-1][0].ids) * (len(batches[-1]) + 1) <= batch_tokens:
            batches[-1].append(seq)
        else:
            batches.append([seq])
    return batches


class IFDScorer:
    """A causal LM loaded once, scoring records' IFD in token-budget batches."""

    def __init__(self, model: str = DEFAULT_MODEL, *, template: str = IFDParams.template,
                 compat: str | None = IFDParams.compat, max_length: int = IFDParams.max_length,
                 dtype: str = IFDParams.dtype, batch_tokens: int = IFDParams.batch_tokens,
                 device: str | None = None, pack: bool = True,
                 turns: str = IFDParams.turns) -> None:
        """Load ``model`` (``default`` = SmolLM2-135M-Instruct, or a local HF folder) in
        ``dtype`` (fp32|bf16) on ``device`` (default: CUDA if available, else CPU).

        On CPU a Llama-style model runs packed (:mod:`car_engine.models.llama`: no padding,
        fused layers; 1.3-1.6x the padded transformers forward); ``pack=False``, other models
        and GPUs run the transformers forward on padded batches. ``turns``: ``all`` scores
        every turn of a conversation (:mod:`car_engine.ifd_turns`, SPEC §5; the table gains
        its TURN_COLUMNS), ``first`` the first turn only; a compat preset scores the first."""
        from car_engine.models.llama import PackedCausalLM, packs
        from car_engine.models.registry import (
            causal_lm_path,
            load_causal_model,
            load_causal_tokenizer,
        )

        self.device = torch_device(device)
        dtype = resolve_precision("ifd", dtype, self.device.type == "cuda")  # auto: by device
        torch_type = torch_dtype(dtype, IFD_DTYPES, "ifd")
        if batch_tokens < 1:
            raise UsageError(f"batch_tokens must be positive, got {batch_tokens}")
        self.template, self.compat = resolve_preset(template, compat), compat
        check_turns(turns)
        self.turns = "first" if compat is not None else turns
        self.max_length, self.batch_tokens, self.dtype = max_length, batch_tokens, dtype
        warn_if_emulated(torch_type, self.device, "ifd --ifd-dtype bf16")
        folder = causal_lm_path(model)
        self.tokenizer = load_causal_tokenizer(folder)
        self.pad_id = start_token(self.tokenizer)
        self.packed: PackedCausalLM | None = None
        self.model: Any = None  # the transformers model, where the packed body does not serve
        if pack and self.device.type == "cpu" and packs(folder):
            # read from the folder's files: the transformers model is never built
            try:
                self.packed = PackedCausalLM.from_folder(folder, torch_type)
            except (OSError, ValueError) as err:
                raise ModelError(f"{folder}: cannot load as a causal LM: {err}") from err
            self.head_weight = self.packed.head
        else:
            self.model = load_causal_model(folder, dtype=dtype).to(self.device)
            self.body = self.model.base_model
            head = self.model.get_output_embeddings()
            if head is None or getattr(head, "bias", None) is not None:
                raise ModelError("IFD needs a causal LM whose output projection is a "
                                 "bias-free linear")
            self.head_weight = head.weight
        self.gpu = None  # on a GPU: padded, maskless, prefetched batches (car_engine.ifd_gpu)
        if self.device.type == "cuda":
            from car_engine.ifd_gpu import PaddedForward

            self.gpu = PaddedForward(self.body, self.head_weight, self.device, self.pad_id)

    def encode(self, records: pa.Table) -> list[EncodedPair]:
        """Both passes' token ids for every record (see :func:`encode_pairs`; with a compat
        preset, :func:`car_engine.ifd_compat.encode_compat`)."""
        if self.compat is not None:
            return encode_compat(self.tokenizer, records, compat=self.compat,
                                 template=self.template, max_length=self.max_length)
        return encode_pairs(self.tokenizer, records, template=self.template,
                            max_length=self.max_length)

    @torch.inference_mode()
    def _batch_losses(self, batch: list[_Sequence]) -> list[float]:
        """Mean answer-token NLL of every sequence of ``batch``, from one forward of the model
        body and the fused cross-entropy over the answer positions only."""
        lengths = [len(seq.ids) for seq in batch]
        # Row and column of the positions that predict each scored token (t predicts t + 1).
        rows = [r for r, seq in enumerate(batch) for _ in range(seq.n_score)]
        cols = [c for seq, n in zip(batch, lengths) for c in range(n - seq.n_score - 1, n - 1)]
        targets = torch.tensor([t for seq in batch for t in seq.ids[len(seq.ids) - seq.n_score:]],
                               device=self.device)
        hidden = self.hidden_at([seq.ids for seq in batch], rows, cols)
        offsets = torch.tensor([0, *itertools.accumulate(seq.n_score for seq in batch)],
                               device=self.device)
        _, means = kernels.linear_cross_entropy(hidden, self.head_weight, targets, offsets)
        return means.tolist()

    def hidden_at(self, token_ids: list[list[int]], rows: list[int], cols: list[int]
                  ) -> torch.Tensor:
        """Final hidden states ``[len(rows), hidden]`` at (row, column) positions of one
        forward over the sequences ``token_ids``: packed on CPU, else padded."""
        if self.packed is not None:
            starts = [0, *itertools.accumulate(len(ids) for ids in token_ids)][:-1]
            return self.packed(token_ids, torch.tensor([starts[r] + c for r, c in zip(rows, cols)],
                                                       dtype=torch.int64))
        ids, mask = (torch.from_numpy(a) for a in
                     pad_batch(token_ids, range(len(token_ids)), self.pad_id))
        hidden = self.body(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                           use_cache=False).last_hidden_state
        return hidden[torch.tensor(rows, device=self.device),
                      torch.tensor(cols, device=self.device)]

    def score(self, records: pa.Table, *, progress: bool = True) -> pa.Table:
        """IFD_COLUMNS for every record, in input order, keyed by ``id`` (with ``turns``
        ``all``: conversations turn by turn, and TURN_COLUMNS too)."""
        if self.turns == "all":
            from car_engine.ifd_turns import score_turns

            return score_turns(self, records, progress=progress)
        pairs = self.encode(records)
        sequences = []
        for i, pair in enumerate(pairs):
            if pair.status == OK:
                sequences.append(_Sequence(i, False, pair.cond_ids, pair.n_answer))
                sequences.append(_Sequence(i, True, pair.direct_ids, pair.direct_scored))
        losses: list[list[float | None]] = [[None, None] for _ in pairs]
        total_tokens = sum(len(s.ids) for s in sequences)
        bar = tqdm(total=len(pairs), unit="pair", disable=not progress, desc="ifd")
        bar.update(len(pairs) - len(sequences) // 2)  # records with no score are done already
        start, done_tokens, half_done = time.perf_counter(), 0, 0
        batches = plan_batches(sequences, self.batch_tokens, padded=self.packed is None)
        results = (self.gpu.losses(batches) if self.gpu is not None
                   else map(self._batch_losses, batches))
        for batch, batch_losses in zip(batches, results):
            for seq, loss in zip(batch, batch_losses):
                losses[seq.record][int(seq.direct)] = loss
            done_tokens += sum(len(s.ids) for s in batch)
            half_done += len(batch)
            bar.update(half_done // 2 - (half_done - len(batch)) // 2)
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(tokens_per_s=f"{done_tokens / elapsed:,.0f}",
                            tokens=f"{done_tokens}/{total_tokens}")
        bar.close()
        ids = [str(v) for v in records.column("id").to_pylist()]
        return scores_table(ids, pairs, [(cond, direct) for cond, direct in losses])


def score_ifd(records: RecordsLike, *, progress: bool = True,
              limit: int | None = None, **kwargs: Any) -> pa.Table:
    """IFD scores for a records table or a corpus path (read with ``load_corpus``); ``kwargs``
    go to :class:`IFDScorer`."""
    if isinstance(records, (str, os.PathLike)):
        records = load_corpus(records, limit=limit).records  # stop reading at the limit
    else:
        records = as_records(records)
        if limit is not None:
            records = records.slice(0, limit)
    return IFDScorer(**kwargs).score(records, progress=progress)
