"""Softmax attention over packed bf16 sequences by the native AVX512-BF16 kernel.

``csrc/attention.cpp`` runs one (sequence, key/value head) at a time with the scores in L1,
where PyTorch's matmul + softmax + matmul writes every head's n x n scores to memory and reads
them back twice, and its flash kernel ran causal grouped-query attention at ~50 GFLOP/s.
The packed encoders (:mod:`car_engine.packed_bert`, :mod:`car_engine.packed_llama`) call it
for bf16 on CPUs that have the instructions, and keep a PyTorch path for everything else.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from car_engine import _native

# Built in and this CPU has AVX512-BF16.
AVAILABLE = _native.attention_supported()


def fused_attention(qkv: torch.Tensor, lengths: Sequence[int], heads: int,
                    kv_heads: int | None = None, causal: bool = False) -> torch.Tensor:
    """Attention of every sequence over its own tokens (``causal``: itself and earlier ones).

    ``qkv`` is bf16 ``[tokens, (heads + 2 * kv_heads) * head_dim]``: query heads (already
    scaled), key heads, value heads; sequences of ``lengths`` tokens follow each other. Query
    head h reads key/value head ``h // (heads // kv_heads)``. Returns bf16 ``[tokens, heads *
    head_dim]``; scores and sums are fp32 inside. Check :data:`AVAILABLE` first."""
    kv_heads = kv_heads or heads
    head_dim = qkv.shape[1] // (heads + 2 * kv_heads)
    lengths = np.asarray(lengths, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64)
    context = qkv.new_empty((qkv.shape[0], heads * head_dim))
    _native.attention_bf16(qkv.contiguous().view(torch.int16).numpy(), starts, lengths, heads,
                           kv_heads, head_dim, causal, context.view(torch.int16).numpy(),
                           torch.get_num_threads())
    return context
