"""One encoder pass (SPEC §10): the IQS score and the sentence embedding of a text from a
single forward, when the IQS model's backbone is the embedding model (the default: both are
all-MiniLM-L6-v2 over the same pair text).

The embedder runs its forward as it always does (packed on CPU, the transformers forward on a
GPU) but keeps every hidden state: the IQS layer mix reads all of them
(``IQSModel.score_states``) and the embedding mean-pools the last. A text that fits the
embedding's 256 tokens is then scored exactly as two passes would score it. A longer one is
cut there for the embedding but not for IQS: the IQS model reads 512 tokens, and on long
ShareGPT pairs reading only 256 changed a third of the top picks (Spearman 0.95,
benchmarks/RESULTS.md), so such a text's IQS is read again at 512: on a CPU by a second
forward of the same packed body, on a GPU by the IQS stage's own ONNX scorer. The saving is
the IQS pass of every text that fits (91-95% of the expert-revision pairs; fewer in a corpus of
long chats), and in fp32 the scores and selection stay the two-pass path's (to 1e-6).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from car_engine.config import (
    AUTO,
    DEFAULT_MODEL,
    IQS_PRECISIONS,
    EmbedParams,
    IQSParams,
    resolve_precision,
)
from car_engine.corpus import RecordsLike, as_records
from car_engine.embed import CHUNK_TEXTS, Embedder, transformer_folder
from car_engine.errors import ModelError
from car_engine.iqs.model import IQSConfig, LayerMix
from car_engine.iqs.store import CONFIG_FILE, load_model, resolve_model_dir
from car_engine.models.registry import resolve_encoder
from car_engine.turn_scores import iqs_table, pool_turns, turn_texts

if TYPE_CHECKING:
    from car_engine.iqs import IQSScorer


def two_pass_reason(iqs: IQSParams, embed: EmbedParams) -> str | None:
    """None when one forward can give both the IQS and the embedding, else why not (read
    from the model folders' configs: nothing is loaded)."""
    if str(iqs.model).endswith(".ckpt"):
        return "the IQS model is a COMET checkpoint with an encoder of its own"
    config = IQSConfig.from_file(resolve_model_dir(iqs.model) / CONFIG_FILE)
    if config.trained_encoder_layers or config.train_embeddings:
        return "the IQS model fine-tuned its encoder"
    if resolve_encoder(config.backbone).resolve() != transformer_folder(embed.model).resolve():
        return "the IQS backbone is not the embedding model"
    if iqs.device != embed.device:
        return f"IQS and embeddings run on different devices ({iqs.device}, {embed.device})"
    if iqs.precision != AUTO:
        # One forward runs at the embedding's precision: an IQS precision of its own needs its
        # own pass (an --exact run pins both to fp32). The stages are laid out before a worker
        # resolves its device, so the two must agree on either.
        for on_gpu in (False, True):
            if resolve_precision("iqs", iqs.precision, on_gpu) != \
                    resolve_precision("embed", embed.dtype, on_gpu):
                return f"--iqs-precision {iqs.precision} differs from the embedding's"
    return None


class OnePassEncoder:
    """An :class:`~car_engine.embed.Embedder` and the IQS head that reads its hidden states:
    :meth:`encode` gives both a record's IQS and its unit embedding from one forward."""

    def __init__(self, iqs_model: str | os.PathLike = DEFAULT_MODEL, **embed_options: Any
                 ) -> None:
        """Load the IQS model ``iqs_model`` (``default`` or a folder) and the embedder built
        from ``embed_options`` (:class:`~car_engine.embed.Embedder`'s arguments); refuse a
        pair whose IQS backbone is not the embedding model."""
        reason = two_pass_reason(IQSParams(model=str(iqs_model)),
                                 EmbedParams(model=embed_options.get("model", DEFAULT_MODEL)))
        if reason is not None:
            raise ModelError(f"{iqs_model}: no single encoder pass: {reason}")
        self.embedder = Embedder(**embed_options)
        model, _ = load_model(iqs_model, encoder=False)  # the embedder's forward stands in
        self.iqs_max_length = model.config.max_length
        self.iqs_model, self.device = str(iqs_model), embed_options.get("device")
        self._long_scorer: IQSScorer | None = None
        self.iqs = model.to(self.embedder.device).float().eval()
        # the IQS head's layer mixes, in fp32 whatever the forward's precision
        self.mixes = [functools.partial(_mix_fp32, mix) for mix in self.iqs.mixes()]

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], *, progress: bool = True
                     ) -> tuple[np.ndarray, np.ndarray]:
        """IQS scores (float64 ``[n]``) and unit vectors (float32 ``[n, d]``) of pair texts,
        in input order. A text the embedding cuts at its length gets a second forward for
        its IQS at the IQS model's own length, so every score is the two-pass path's."""
        embedder = self.embedder
        scores = np.empty(len(texts), dtype=np.float64)
        vectors = np.empty((len(texts), embedder.dim), dtype=np.float32)
        with tqdm(total=len(texts), desc="encode", unit="text", disable=not progress) as bar:
            for start in range(0, len(texts), CHUNK_TEXTS):
                chunk = texts[start:start + CHUNK_TEXTS]
                token_ids = embedder.token_ids(chunk, start)
                # A text cut at the embedding's length gets its IQS from its own read below:
                # its states here serve the embedding only.
                cut = np.array([len(ids) >= embedder.max_seq_length for ids in token_ids]) \
                    & (self.iqs_max_length > embedder.max_seq_length)
                for rows in embedder.batches(token_ids):
                    whole = ~cut[rows]
                    if not whole.any():  # the embedding alone
                        vectors[start + rows] = embedder.vectors(
                            *embedder.states(token_ids, rows)).cpu().numpy()
                        bar.update(len(rows))
                        continue
                    last, mixed, mask = embedder.mixed_states(token_ids, rows, self.mixes)
                    vectors[start + rows] = embedder.vectors(last, mask).cpu().numpy()
                    scores[start + rows[whole]] = self._scores(mixed, token_ids, rows[whole],
                                                               mask, whole)
                    bar.update(len(rows))
                if cut.any():
                    long_rows = np.flatnonzero(cut)
                    scores[start + long_rows] = self._iqs_at_own_length(
                        [chunk[int(i)] for i in long_rows])
        return scores, vectors

    def _scores(self, mixed: list[torch.Tensor], token_ids: list[list[int]], rows: np.ndarray,
                mask: torch.Tensor, keep: np.ndarray | None = None) -> np.ndarray:
        """The IQS head on a batch's layer mixes (of its rows ``keep`` only, if given), one
        text at a time over its own tokens: pooled and scored in a batch, a text's score moved
        in its last bits with its neighbours (1e-7), and a rescore through the score cache must
        equal a fresh run byte for byte. The head is a few small GEMVs a text."""
        # position in the batch of each of ``rows`` (the kept ones)
        at = np.flatnonzero(keep) if keep is not None else np.arange(len(rows))
        out = np.empty(len(rows), dtype=np.float64)
        for k, (j, row) in enumerate(zip(at.tolist(), rows.tolist())):
            ids = torch.tensor([token_ids[row]], device=mask.device)
            n = ids.shape[1]
            out[k] = float(self.iqs.score_mixes([m[j:j + 1, :n] for m in mixed], ids,
                                                mask[j:j + 1, :n])[0])
        return out

    def _iqs_at_own_length(self, texts: list[str]) -> np.ndarray:
        """IQS of texts longer than the embedding's length, read at the IQS model's length.

        On a CPU by a second forward of the same packed body: its rows do not depend on their
        batch neighbours, so a rescore through the score cache equals a fresh run byte for
        byte (ONNX Runtime's scores moved by up to 2.4e-7 with their batch, and that flipped a
        selection), and it is faster there (fp32 with the fused attention: 27.5 s vs 32-36 s
        for the whole encode of 600 ShareGPT pairs; bf16, which ONNX Runtime lacks: 2.2x its
        fp32). Elsewhere (a GPU, the transformers forward) by the IQS stage's own ONNX scorer at
        the embedding's precision, loaded on the first such text."""
        embedder = self.embedder
        if embedder.packed is None and embedder.dtype in IQS_PRECISIONS:
            if self._long_scorer is None:
                from car_engine.iqs import IQSScorer

                self._long_scorer = IQSScorer.load(self.iqs_model, device=self.device,
                                                   precision=embedder.dtype)
            return self._long_scorer.score_texts(texts, progress=False)
        token_ids = embedder.token_ids(texts, max_length=self.iqs_max_length)
        out = np.empty(len(texts), dtype=np.float64)
        for rows in embedder.batches(token_ids):
            _, mixed, mask = embedder.mixed_states(token_ids, rows, self.mixes)
            out[rows] = self._scores(mixed, token_ids, rows, mask)
        return out

    def encode(self, records: pa.Table, *, turns: str = IQSParams.turns,
               turn_aggregate: str = IQSParams.turn_aggregate, progress: bool = True
               ) -> tuple[pa.Table, np.ndarray]:
        """The IQS table (``id``, ``iqs``, with ``turns`` ``all`` also ``turn_iqs``: see
        :meth:`~car_engine.iqs.IQSScorer.score`) and one unit vector per record (a
        conversation's: its turns' mean, renormalised), from one forward per text."""
        texts, slots = turn_texts(records, turns)
        scores, vectors = self.encode_texts(texts, progress=progress)
        return (iqs_table(records, slots, scores, turns=turns, how=turn_aggregate),
                pool_turns(slots, vectors))

    def describe(self) -> str:
        """Device, precision and forward the texts ran on."""
        from car_engine.devices import describe_device

        embedder = self.embedder
        body = "packed" if embedder.packed is not None else "transformers"
        return (f"one pass: torch {describe_device(embedder.device)} {embedder.dtype} "
                f"({body} forward)")


def _mix_fp32(mix: LayerMix, stack: torch.Tensor) -> torch.Tensor:
    """``mix(stack)`` in fp32, one layer at a time into one fp32 sum: no fp32 copy of a bf16
    stack, no [layers, tokens, hidden] product, and layers of weight 0 (sparsemax) skipped.
    That was 1.0 s of a 15 s bf16 run, profiled."""
    out: torch.Tensor | None = None
    for weight, layer in zip(mix.weights().tolist(), stack):
        if weight == 0.0:
            continue
        out = layer.float() * weight if out is None else out.add_(layer, alpha=weight)
    if out is None:
        raise ValueError("a layer mix with every weight 0")
    return out.mul_(mix.gamma)


def encode_records(records: RecordsLike, *, iqs_model: str = DEFAULT_MODEL,
                   turns: str = IQSParams.turns, turn_aggregate: str = IQSParams.turn_aggregate,
                   progress: bool = True, **embed_options: Any) -> tuple[pa.Table, np.ndarray]:
    """IQS and embeddings of a records table or corpus path from one encoder pass per text:
    ``(id/iqs table, float32 [n, d] unit vectors)``. ``embed_options`` go to
    :class:`~car_engine.embed.Embedder` (model, dtype, device, batch_size, ...)."""
    encoder = OnePassEncoder(iqs_model, **embed_options)
    return encoder.encode(as_records(records), turns=turns, turn_aggregate=turn_aggregate,
                          progress=progress)


__all__ = ["OnePassEncoder", "encode_records", "two_pass_reason"]
