"""Fused per-token cross-entropy in Triton: hidden states -> logits tile -> online log-sum-exp.

No ``[N, V]`` logits tensor ever exists: each program owns ``BLOCK_N`` tokens, walks the
vocabulary ``BLOCK_V`` entries at a time, computes that logits tile with ``tl.dot`` (fp32
accumulation for fp32/bf16/fp16 inputs) and folds it into a running max and sum of exponentials.
A second launch reduces the per-token NLLs to per-segment means. ``reference.py`` is the PyTorch
twin with the same signatures; the tests hold the two to each other under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

BLOCK_N = 32
BLOCK_V = 128
BLOCK_H = 64
SEGMENT_BLOCK = 256


@triton.jit
def _token_nll_kernel(
    hidden_ptr, weight_ptr, target_ptr, nll_ptr,
    n_tokens, vocab, width,
    stride_hn, stride_hh, stride_wv, stride_wh,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_tokens
    targets = tl.load(target_ptr + rows, mask=row_ok, other=0)
    run_max = tl.full([BLOCK_N], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_N], tl.float32)
    picked = tl.zeros([BLOCK_N], tl.float32)
    for v0 in range(0, vocab, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < vocab
        logits = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
        for h0 in range(0, width, BLOCK_H):
            hs = h0 + tl.arange(0, BLOCK_H)
            h_ok = hs < width
            a = tl.load(hidden_ptr + rows[:, None] * stride_hn + hs[None, :] * stride_hh,
                        mask=row_ok[:, None] & h_ok[None, :], other=0.0)
            b = tl.load(weight_ptr + cols[None, :] * stride_wv + hs[:, None] * stride_wh,
                        mask=col_ok[None, :] & h_ok[:, None], other=0.0)
            if UPCAST:  # exact: a product of two bf16 values fits in fp32
                a, b = a.to(tl.float32), b.to(tl.float32)
            logits = tl.dot(a, b, logits, input_precision=PRECISION)
        # Columns past the vocabulary end (V not a multiple of BLOCK_V) must not count.
        logits = tl.where(col_ok[None, :], logits, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(logits, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(
            tl.exp(logits - new_max[:, None]), axis=1)
        run_max = new_max
        picked += tl.sum(tl.where(cols[None, :] == targets[:, None], logits, 0.0), axis=1)
    tl.store(nll_ptr + rows, run_max + tl.log(run_sum) - picked, mask=row_ok)


@triton.jit
def _segment_mean_kernel(values_ptr, offsets_ptr, out_ptr, BLOCK: tl.constexpr):
    segment = tl.program_id(0)
    start = tl.load(offsets_ptr + segment)
    end = tl.load(offsets_ptr + segment + 1)
    acc = tl.zeros([BLOCK], tl.float32)
    for i in range(start, end, BLOCK):
        idx = i + tl.arange(0, BLOCK)
        acc += tl.load(values_ptr + idx, mask=idx < end, other=0.0)
    count = (end - start).to(tl.float32)
    mean = tl.sum(acc, axis=0) / tl.maximum(count, 1.0)
    tl.store(out_ptr + segment, tl.where(count > 0, mean, float("nan")))


def token_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of ``targets[i]`` under ``softmax(hidden[i] @ weight.T)``.

    ``hidden`` ``[N, H]`` and ``weight`` ``[V, H]`` share one dtype (fp32, bf16 or fp16);
    ``targets`` ``[N]`` integer ids in ``[0, V)``. Returns ``[N]`` fp32."""
    n, width = hidden.shape
    out = torch.empty(n, dtype=torch.float32, device=hidden.device)
    if n == 0:
        return out
    # fp32 inputs: exact IEEE products, not TF32, so the numbers match the fp32 reference.
    precision = "ieee" if hidden.dtype == torch.float32 else None
    # The interpreter multiplies bf16 bit patterns in tl.dot (triton-lang/triton#11584):
    # there, widen the operands first; compiled kernels keep the native bf16 dot.
    upcast = hidden.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"
    grid = (triton.cdiv(n, BLOCK_N),)
    _token_nll_kernel[grid](
        hidden, weight, targets.contiguous(), out,
        n, weight.shape[0], width,
        hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
        BLOCK_N=BLOCK_N, BLOCK_V=BLOCK_V, BLOCK_H=BLOCK_H, PRECISION=precision, UPCAST=upcast,
    )
    return out


def segment_mean(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Mean of ``values[offsets[s]:offsets[s+1]]`` per segment ``s``; NaN for an empty one.

    ``offsets`` is ``[S+1]``, non-decreasing, from 0 to ``len(values)``. Returns ``[S]`` fp32."""
    segments = offsets.numel() - 1
    out = torch.empty(segments, dtype=torch.float32, device=values.device)
    if segments > 0:
        _segment_mean_kernel[(segments,)](
            values.contiguous(), offsets.contiguous(), out, BLOCK=SEGMENT_BLOCK)
    return out


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, offsets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL ``[N]`` and its per-segment means ``[S]``: two launches, no logits tensor."""
    nll = token_nll(hidden, weight, targets)
    return nll, segment_mean(nll, offsets)
