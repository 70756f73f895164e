"""IFD's forward on a GPU: right-padded batches with no explicit attention mask, pinned host
buffers prepared by a prefetch thread, and no host sync inside a batch.

- No mask: with right padding and causal attention every real token already sees only real
  tokens before it (padding sits after the last real token of its row), so the scores are
  exact without a 4-D mask, and SDPA is free to take its flash kernel (an explicit mask rules it
  out). Positions are 0.. per row, as for the unpadded sequence.
- Padded lengths are rounded up to PAD_MULTIPLE, so a compiled body (``compile=True``,
  ``torch.compile``) sees few distinct shapes; the extra pad tokens are never scored.
- A prefetch thread pads the next batch into pinned buffers (ids, gather indices, targets,
  offsets) while the GPU runs the current one; copies are ``non_blocking``.
- Targets are checked on the host, where they are Python ints anyway, so the kernel's range
  check (a device-to-host read) is skipped. Means come back every SYNC_EVERY batches.
The logic is device-independent (on CPU it runs unpinned), so the tests check it there against
the batch-1 reference.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from car_engine import kernels

PAD_MULTIPLE = 64  # padded lengths are multiples of this (few shapes for a compiled body)
SYNC_EVERY = 16  # batches between the reads of their means back to the host


class ScoredSequence(Protocol):
    """A sequence whose last ``n_score`` tokens are scored (ifd._Sequence)."""

    @property
    def ids(self) -> list[int]: ...

    @property
    def n_score(self) -> int: ...


@dataclass
class PreparedBatch:
    """One batch's host tensors (pinned on a GPU): ids [B, L] right-padded, the flat positions
    ``row * L + col`` that predict each scored token, the targets and the segment offsets."""

    ids: torch.Tensor
    gather: torch.Tensor
    targets: torch.Tensor
    offsets: torch.Tensor


def prepare(batch: Sequence[ScoredSequence], pad_id: int, vocab: int, *,
            pad_multiple: int = PAD_MULTIPLE, pin: bool = False) -> PreparedBatch:
    """Pad ``batch`` on the right to a multiple of ``pad_multiple`` and index its scored
    positions (position t predicts token t + 1); a target outside ``[0, vocab)`` is an error."""
    width = max(len(seq.ids) for seq in batch)
    width = -(-width // pad_multiple) * pad_multiple
    ids = torch.full((len(batch), width), pad_id, dtype=torch.int64)
    gather: list[int] = []
    targets: list[int] = []
    for row, seq in enumerate(batch):
        n = len(seq.ids)
        ids[row, :n] = torch.tensor(seq.ids, dtype=torch.int64)
        gather.extend(range(row * width + n - seq.n_score - 1, row * width + n - 1))
        targets.extend(seq.ids[n - seq.n_score:])
    if targets and (min(targets) < 0 or max(targets) >= vocab):
        raise ValueError(f"token ids must lie in [0, {vocab}) (the output projection's rows)")
    offsets = list(itertools.accumulate((seq.n_score for seq in batch), initial=0))
    tensors = [ids, torch.tensor(gather, dtype=torch.int64),
               torch.tensor(targets, dtype=torch.int64), torch.tensor(offsets, dtype=torch.int64)]
    if pin:
        tensors = [t.pin_memory() for t in tensors]
    return PreparedBatch(*tensors)


class PaddedForward:
    """Mean answer-token NLL of every sequence, batch after batch, on ``device``."""

    def __init__(self, body: Any, head_weight: torch.Tensor, device: torch.device, pad_id: int,
                 *, compile: bool = False, pad_multiple: int = PAD_MULTIPLE) -> None:
        self.body = torch.compile(body, dynamic=True) if compile else body
        self.weight, self.device, self.pad_id = head_weight, device, pad_id
        self.pad_multiple = pad_multiple
        self.pin = device.type == "cuda"

    def _prepare(self, batch: Sequence[ScoredSequence]) -> PreparedBatch:
        return prepare(batch, self.pad_id, self.weight.shape[0], pad_multiple=self.pad_multiple,
                       pin=self.pin)

    @torch.inference_mode()
    def _run(self, prepared: PreparedBatch) -> torch.Tensor:
        """Per-sequence mean NLL of one batch, left on the device (no sync)."""
        ids, gather, targets, offsets = (
            t.to(self.device, non_blocking=True) for t in
            (prepared.ids, prepared.gather, prepared.targets, prepared.offsets))
        # Named ranges: benchmarks/gpu_check.py splits the time into forward / loss / host.
        with torch.profiler.record_function("ifd.forward"):
            hidden = self.body(input_ids=ids, use_cache=False).last_hidden_state
        with torch.profiler.record_function("ifd.loss"):
            flat = hidden.reshape(-1, hidden.shape[-1]).index_select(0, gather)
            _, means = kernels.linear_cross_entropy(flat, self.weight, targets, offsets,
                                                    targets_checked=True)
        return means

    def losses(self, batches: Sequence[Sequence[ScoredSequence]]) -> Iterator[list[float]]:
        """The mean losses of each batch, in order; the next batch is prepared on a thread
        while this one runs, and results are read back every SYNC_EVERY batches."""
        if not batches:
            return
        pending: list[torch.Tensor] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ifd-prefetch") as pool:
            ahead = pool.submit(self._prepare, batches[0])
            for i in range(len(batches)):
                prepared = ahead.result()
                if i + 1 < len(batches):
                    ahead = pool.submit(self._prepare, batches[i + 1])
                pending.append(self._run(prepared))
                if len(pending) == SYNC_EVERY or i + 1 == len(batches):
                    values = torch.cat(pending).float().cpu().tolist()  # the one sync
                    for means in pending:
                        yield values[:means.numel()]
                        values = values[means.numel():]
                    pending = []
