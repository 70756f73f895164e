"""Softmax attention over packed sequences by the native AVX512 kernel (bf16 and fp32).

``csrc/attention.cpp`` runs one (sequence, key/value head) at a time with the scores in L1,
where PyTorch's matmul + softmax + matmul writes every head's n x n scores to memory and reads
them back twice, and its flash kernel ran causal grouped-query attention at ~50 GFLOP/s.
The packed model bodies (:mod:`car_engine.models.bert`, :mod:`car_engine.models.llama`) call it
on CPUs that have the instructions (:func:`runs`), and keep a PyTorch path for the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from car_engine.kernels.native_views import DTYPES, as_numpy

from car_engine import native

# Built in and this CPU has AVX512-BF16 (the fp32 kernel is built and gated with it).
AVAILABLE = native.attention_supported()


HEAD_DIMS = (16, 32, 64, 128)  # the head sizes the kernel is compiled for


def runs(x: torch.Tensor, head_dim: int | None = None) -> bool:
    """Whether :func:`fused_attention` can take ``x``: a CPU tensor of a kernel's dtype, on a
    CPU that has the kernel, with heads of ``head_dim`` (when given) that it is built for."""
    return AVAILABLE and x.device.type == "cpu" and x.dtype in DTYPES and \
        (head_dim is None or head_dim in HEAD_DIMS)


def fused_attention(qkv: torch.Tensor, lengths: Sequence[int], heads: int,
                    kv_heads: int | None = None, causal: bool = False) -> torch.Tensor:
    """Attention of every sequence over its own tokens (``causal``: itself and earlier ones).

    ``qkv`` is bf16 or fp32 ``[tokens, (heads + 2 * kv_heads) * head_dim]``: query heads
    (already scaled), key heads, value heads; sequences of ``lengths`` tokens follow each
    other. Query head h reads key/value head ``h // (heads // kv_heads)``. Returns ``[tokens,
    heads * head_dim]`` in ``qkv``'s dtype; scores and sums are fp32 inside. Check
    :func:`runs` first."""
    kv_heads = kv_heads or heads
    head_dim = qkv.shape[1] // (heads + 2 * kv_heads)
    lens = np.asarray(lengths, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lens[:-1])]).astype(np.int64)
    context = qkv.new_empty((qkv.shape[0], heads * head_dim))
    native.attention(as_numpy(qkv.contiguous()), starts, lens, heads, kv_heads, head_dim,
                     causal, as_numpy(context), torch.get_num_threads(),
                     bf16=qkv.dtype == torch.bfloat16)
    return context
