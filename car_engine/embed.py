"""Sentence embeddings (SPEC §3): the IQS pair text through a sentence-transformers encoder.

The reference encodes one text per call. Here texts are tokenized a chunk at a time, sorted by
token length inside the chunk, cut into batches (car_engine.batching), run under
``torch.inference_mode`` (optionally with bf16/fp16 weights) and put back in input order. On CPU
a BERT encoder runs packed, without padding (car_engine.packed_bert); other models and GPUs get
padded batches of bounded padding through the transformers forward.
Pooling and normalisation follow the model folder's sentence-transformers config, so fp32 output
matches ``SentenceTransformer(folder).encode`` to float rounding.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from car_engine.batching import length_batches, pad_batch, pad_states, token_batches, tokenize
from car_engine.config import (
    EMBED_BATCH,
    EMBED_DTYPES,
    EMBED_MAX_SEQ_LENGTH,
    GPU_BATCH_TOKENS,
    EmbedParams,
    check_turns,
    resolve_precision,
)
from car_engine.corpus import RecordsLike, as_records
from car_engine.devices import torch_device, torch_dtype, warn_if_emulated
from car_engine.embed_ids import ids_path, read_ids  # noqa: F401 (re-exported)
from car_engine.errors import ModelError, UsageError
from car_engine.io import atomic_path, write_parquet
from car_engine.models.bert import PackedBert, supports
from car_engine.models.folder import WEIGHTS_FILE, read_config
from car_engine.models.registry import DEFAULT, resolve_encoder
from car_engine.tokenizer import load_tokenizer
from car_engine.turn_scores import embed_turns

DTYPES = EMBED_DTYPES
POOLING_KEYS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token",
                "max": "pooling_mode_max_tokens"}
# Texts tokenized and length-sorted together: big enough that sorting removes most padding,
# small enough that token ids for a chunk stay a few MB.
CHUNK_TEXTS = 8192


def _module_paths(folder: Path) -> tuple[Path, Path | None]:
    """(transformer folder, pooling folder or None) from a sentence-transformers
    ``modules.json``; a plain transformers folder gets mean pooling."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return folder, None
    modules = json.loads(modules_file.read_text())
    by_type = {m["type"].rsplit(".", 1)[-1]: folder / m.get("path", "") for m in modules}
    if "Transformer" not in by_type:
        raise ModelError(f"{modules_file}: no sentence_transformers Transformer module")
    return by_type["Transformer"], by_type.get("Pooling")


def transformer_folder(model: str | os.PathLike) -> Path:
    """The folder of a sentence encoder's transformer (weights and tokenizer): ``default``, a
    sentence-transformers folder or a plain transformers one."""
    return _module_paths(resolve_encoder(model))[0]


def _pooling_mode(pooling_folder: Path | None) -> str:
    """The pooling the model was trained with (mean when the folder does not say)."""
    if pooling_folder is None or not (pooling_folder / "config.json").is_file():
        return "mean"
    config = json.loads((pooling_folder / "config.json").read_text())
    enabled = [key for key, on in config.items() if key.startswith("pooling_mode_") and on]
    modes = [mode for mode, key in POOLING_KEYS.items() if key in enabled]
    if len(enabled) != 1 or len(modes) != 1:
        raise ModelError(f"{pooling_folder}: pooling {enabled} is not supported "
                         f"(exactly one of {', '.join(POOLING_KEYS.values())})")
    return modes[0]


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """Pool token states [b, t, d] over non-padding tokens into [b, d] float32 vectors."""
    hidden = hidden.float()
    if mode == "cls":
        return hidden[:, 0]
    keep = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(keep == 0, float("-inf")).amax(dim=1)
    return (hidden * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1e-9)


class Embedder:
    """A sentence encoder loaded once; :meth:`embed` turns texts into unit float32 vectors."""

    def __init__(self, model: str = DEFAULT, *, batch_size: int | None = None,
                 dtype: str = EmbedParams.dtype, device: str | None = None,
                 max_seq_length: int = EMBED_MAX_SEQ_LENGTH,
                 compile: bool = False, pack: bool = True) -> None:
        """Load ``model`` (``default`` = all-MiniLM-L6-v2, or a sentence-transformers folder).

        ``dtype`` is the compute precision (``fp32``, ``bf16``; ``fp16`` on GPU only); vectors
        always come back as float32. ``device`` defaults to CUDA when present, else CPU.
        ``batch_size`` is texts per batch, by default 16 on CPU (a packed batch then holds up
        to 16 x ``max_seq_length`` tokens, which stays in cache) and 64 on GPU.
        ``compile`` runs the transformers forward through ``torch.compile`` (one graph for
        every batch shape; ~15 s once per process), for GPUs and non-BERT models: on CPU a BERT
        encoder is faster packed (``compile`` then turns packing off). ``pack=False`` keeps the
        transformers forward on CPU too.
        """
        self.device = torch_device(device)
        dtype = resolve_precision("embed", dtype, self.device.type == "cuda")  # auto: by device
        # On a GPU the default batch is cut at a token budget, not a count.
        self.max_tokens = GPU_BATCH_TOKENS if batch_size is None and \
            self.device.type == "cuda" else None
        if batch_size is None:
            batch_size = EMBED_BATCH[self.device.type != "cpu"]
        if batch_size < 1:
            raise UsageError(f"batch size must be >= 1, got {batch_size}")
        if max_seq_length < 2:
            raise UsageError(f"max_seq_length must be >= 2, got {max_seq_length}")
        torch_type = torch_dtype(dtype, EMBED_DTYPES, "embed")
        if dtype == "fp16" and self.device.type == "cpu":
            raise UsageError("fp16 is for GPUs; use bf16 on CPU")
        warn_if_emulated(torch_type, self.device, "embed --embed-dtype bf16")
        folder = resolve_encoder(model)
        transformer_dir, pooling_dir = _module_paths(folder)
        self.pooling = _pooling_mode(pooling_dir)
        self.packed: PackedBert | None = None
        self.model: Any = None  # the transformers forward, where the packed body does not serve
        try:
            config = read_config(transformer_dir)
            packs = pack and not compile and self.device.type == "cpu" and \
                supports(config) is None and (transformer_dir / WEIGHTS_FILE).is_file()
            # The packed body reads the folder's files itself; so does its tokenizer (the same
            # ids as transformers', tests/test_embed.py): neither imports transformers.
            self.tokenizer = load_tokenizer(transformer_dir, light=packs)
            if packs:
                self.packed = PackedBert.from_folder(transformer_dir, torch_type)
            else:
                from transformers import AutoModel

                # Weights cast once to the compute dtype: autocast would re-cast every weight
                # on every batch (41% of bf16 CPU time, profiled), and cosine to fp32 stays
                # >= 0.9999.
                self.model = AutoModel.from_pretrained(
                    str(transformer_dir), dtype=torch_type
                ).to(self.device).eval()
        except (OSError, ValueError) as err:
            raise ModelError(f"{transformer_dir}: cannot load the encoder: {err}") from err
        limit = config.get("max_position_embeddings")
        if limit is not None and max_seq_length > limit:
            raise UsageError(f"max_seq_length {max_seq_length} is beyond the {limit} positions "
                             f"of {folder}")
        if compile:
            self.model = torch.compile(self.model, dynamic=True)
        self.compiled = compile
        self.batch_size = batch_size
        self.dtype = dtype
        self.max_seq_length = max_seq_length
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.dim = int(config["hidden_size"])

    def states(self, token_ids: list[list[int]], rows: np.ndarray, *, every_layer: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states of the texts ``token_ids[rows]``, padded: the last layer's
        ``[len(rows), tokens, hidden]`` (float32 when packed), or with ``every_layer``
        ``[layers, len(rows), tokens, hidden]``; and the attention mask on the same device."""
        if self.packed is not None:
            return pad_states(self.packed([token_ids[i] for i in rows], every_layer=every_layer))
        ids, mask = (torch.from_numpy(a).to(self.device)
                     for a in pad_batch(token_ids, rows, self.pad_id))
        if self.compiled and len(rows) == 1:  # a 1-row batch would make torch.compile
            ids, mask = ids.repeat(2, 1), mask.repeat(2, 1)  # specialise and recompile
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=every_layer)
        if every_layer:
            return torch.stack(out.hidden_states)[:, :len(rows)], mask[:len(rows)]
        return out.last_hidden_state[:len(rows)], mask[:len(rows)]

    def mixed_states(self, token_ids: list[list[int]], rows: np.ndarray,
                     mixes: Sequence[Callable[[torch.Tensor], torch.Tensor]]
                     ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """The last hidden states of the texts ``token_ids[rows]``, each of ``mixes`` applied
        to the stack of every layer's (``[layers, ..., hidden]`` -> ``[..., hidden]``), all
        padded ``[len(rows), tokens, hidden]``, and the mask. What one pass reads: packed, the
        mixes run on the real tokens and only their outputs are padded (padding every layer
        was 1 s of a 19 s run, profiled)."""
        if self.packed is None:
            states, mask = self.states(token_ids, rows, every_layer=True)
            return states[-1], [mix(states) for mix in mixes], mask
        stack, lengths = self.packed.forward_packed([token_ids[i] for i in rows],
                                                    every_layer=True)
        last, mask = pad_states(list(stack[-1].split(lengths)))
        mixed = [pad_states(list(mix(stack).split(lengths)))[0] for mix in mixes]
        return last, mixed, mask

    def vectors(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unit float32 sentence vectors ``[batch, d]`` from last hidden states (the model's
        pooling, then L2 normalisation)."""
        return torch.nn.functional.normalize(pool(hidden, mask, self.pooling), p=2, dim=1)

    def _forward(self, token_ids: list[list[int]], rows: np.ndarray) -> torch.Tensor:
        """Unit vectors [len(rows), d] of the texts ``token_ids[rows]``."""
        return self.vectors(*self.states(token_ids, rows))

    def token_ids(self, texts: Sequence[str], offset: int = 0, max_length: int | None = None
                  ) -> list[list[int]]:
        """Token ids of ``texts`` (stripped, cut at ``max_length``, by default
        ``max_seq_length``), naming the item (``offset`` + its index) that is not a string."""
        return tokenize(self.tokenizer, [_checked_text(t, offset + i) for i, t in
                                         enumerate(texts)],
                        self.max_seq_length if max_length is None else max_length)

    def batches(self, token_ids: list[list[int]]) -> Iterator[np.ndarray]:
        """Row indices of each batch: packed batches of a token budget, or padded ones."""
        if self.packed is not None:
            return token_batches(token_ids, self.batch_size * self.max_seq_length)
        return length_batches(token_ids, self.batch_size, max_tokens=self.max_tokens)

    def embed_into(self, texts: Sequence[str], out: np.ndarray, *, progress: bool = True) -> None:
        """Write the vector of ``texts[i]`` into ``out[i]`` (an array or a ``.npy`` memmap),
        one length-sorted chunk at a time, so memory stays flat whatever ``len(texts)``."""
        if out.shape != (len(texts), self.dim):
            raise ValueError(f"output shape {out.shape} != ({len(texts)}, {self.dim})")
        bar = tqdm(total=len(texts), desc="embed", unit="text", disable=not progress)
        with torch.inference_mode(), bar:
            for start in range(0, len(texts), CHUNK_TEXTS):
                token_ids = self.token_ids(texts[start:start + CHUNK_TEXTS], start)
                for rows in self.batches(token_ids):
                    out[start + rows] = self._forward(token_ids, rows).cpu().numpy()
                    bar.update(len(rows))

    def embed(self, texts: Sequence[str], *, progress: bool = True) -> np.ndarray:
        """float32 [n, d] unit vectors for ``texts``, in input order."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        self.embed_into(texts, out, progress=progress)
        return out


def _checked_text(text: object, index: int) -> str:
    """The text stripped (as sentence-transformers does before tokenizing), or a clear error
    naming the item that is not a string."""
    if not isinstance(text, str):
        raise ValueError(f"text {index}: expected a string, got {type(text).__name__}")
    return text.strip()


RECORDS_PER_CHUNK = 4096  # records embedded (and pooled) at a time: the progress bar's step


def embed_records(records: RecordsLike, out: str | Path | None = None, *,
                  turns: str = EmbedParams.turns, **kwargs: Any) -> np.ndarray:
    """One unit vector per record, in input order, with an :class:`Embedder` built from
    ``kwargs`` (and ``progress``): its pair text's (SPEC §3), or with ``turns`` ``all`` a
    conversation's mean over its turns renormalised (SPEC §5).

    With ``out``, vectors are written chunk by chunk into a ``.npy`` (plus the companion ids file,
    see :func:`ids_path`), both atomically, and the memory-mapped result is returned.
    """
    progress = kwargs.pop("progress", True)
    check_turns(turns)
    records = as_records(records)
    if out is not None and Path(out).suffix != ".npy":
        raise UsageError(f"{out}: embeddings are written as .npy")
    embedder = Embedder(**kwargs)
    n = records.num_rows
    if out is None:
        vectors = np.empty((n, embedder.dim), dtype=np.float32)
        _embed_into(embedder, records, vectors, turns=turns, progress=progress)
        return vectors
    write_parquet(ids_path(out), pa.table({"id": records.column("id").cast(pa.string())}))
    with atomic_path(out) as tmp:
        if not n:  # numpy cannot memory-map a zero-length array
            with open(tmp, "wb") as stream:
                np.save(stream, np.empty((0, embedder.dim), dtype=np.float32))
        else:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                              shape=(n, embedder.dim))
            _embed_into(embedder, records, array, turns=turns, progress=progress)
            array.flush()
            del array
    return np.load(out, mmap_mode="r" if n else None)


def _embed_into(embedder: Embedder, records: pa.Table, out: np.ndarray, *, turns: str,
                progress: bool) -> None:
    """Fill ``out`` with the records' vectors, RECORDS_PER_CHUNK records at a time (a chunk's
    texts, turns of all its conversations together, are one list for the length bucketing)."""
    with tqdm(total=records.num_rows, unit="rec", desc="embed", disable=not progress) as bar:
        for start in range(0, records.num_rows, RECORDS_PER_CHUNK):
            chunk = records.slice(start, RECORDS_PER_CHUNK)
            out[start:start + chunk.num_rows] = embed_turns(
                chunk, lambda texts: embedder.embed(texts, progress=False), turns=turns)
            bar.update(chunk.num_rows)
