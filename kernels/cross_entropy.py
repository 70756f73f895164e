"""Fused per-token cross-entropy in Triton: hidden states -> logits tiles -> log-sum-exp, with no
``[N, V]`` logits tensor at any size.

The grid is 2-D, over token blocks and vocabulary splits (as Apple's cut-cross-entropy does it):
program (i, s) computes the logits of ``BLOCK_N`` tokens against split ``s`` of the vocabulary,
``BLOCK_V`` entries at a time (``tl.dot``, fp32 accumulation, ``BLOCK_H`` of the width per
step), and folds them into a running max and sum of exponentials and the target's logit. A small
merge (plain torch ops on ``[splits, N]`` partials, no host sync) combines the splits' partial
log-sum-exps. Splitting the vocabulary keeps every SM busy when N is small (one token block
would otherwise stream the whole ``V x H`` weight alone) and cuts each program's share of it.

- Tiles are multiples of 64 tokens so Hopper's wgmma (MMAv3 needs M % 64 == 0) is used; Ampere
  takes the same tiles with mma.sync. ``triton.autotune`` picks among a few configs per
  (token-count bucket, V, H, dtype); under ``TRITON_INTERPRET=1`` one fixed small config runs.
- Offsets are int64: ``N * H`` or ``V * H`` past 2^31 (a 128k vocabulary at H = 16k) is fine.
- The targets are checked once outside the kernel (``car_engine.kernels._check``, or by the
  caller that built them); the kernel trusts them.
- fp32 inputs use exact IEEE products (not TF32), so fp32 matches an fp32 oracle to 1e-4.
``cross_entropy_torch.py`` is the PyTorch twin with the same signatures; the tests hold the two
to each other under ``TRITON_INTERPRET=1``, and compile this kernel for sm_90 and sm_80 without a
GPU (tests/test_kernels_compile.py).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

SEGMENT_BLOCK = 256
SPLIT_ALIGN = 256  # a vocabulary split is a multiple of the largest BLOCK_V
MIN_SPLIT = 2048  # vocabulary entries per split at least: below it the merge costs more
PROGRAMS_PER_SM = 2  # grid size aimed at, per SM, when choosing the number of splits
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# The tile the interpreter runs (any size works there; small keeps the tests quick).
INTERPRETER_CONFIG = {"BLOCK_N": 16, "BLOCK_V": 64, "BLOCK_H": 32}

# (BLOCK_N, BLOCK_V, BLOCK_H, warps, stages). BLOCK_N in {64, 128}: wgmma tiles on Hopper. Shared
# memory per stage is (BLOCK_N + BLOCK_V) x BLOCK_H x 2 bytes in bf16: the largest, 128 x 256 x 64
# in 3 stages, is 144 KB of the H100/H200's 227 KB; a config that does not fit (fp32 inputs) is
# skipped by the autotuner (OutOfResources).
CONFIGS = [
    (128, 128, 64, 8, 3),
    (128, 256, 64, 8, 3),
    (64, 128, 64, 4, 4),
    (64, 256, 64, 8, 3),
    (128, 64, 64, 4, 4),
]
# Ampere's mma.sync keeps the accumulator in registers: compiled for sm_80 the other configs spill
# (ptxas: 136-452 bytes of spill stores at 255 registers), so there only these two are tried.
AMPERE_CONFIGS = [(128, 128, 64, 8, 3), (64, 256, 64, 8, 3)]


def _config(block_n: int, block_v: int, block_h: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_N": block_n, "BLOCK_V": block_v, "BLOCK_H": block_h},
                         num_warps=warps, num_stages=stages)


@triton.jit
def _partial_lse_kernel(
    hidden_ptr, weight_ptr, target_ptr, max_ptr, sum_ptr, picked_ptr,
    n_tokens, vocab, width, split_size, n_bucket,
    stride_hn, stride_hh, stride_wv, stride_wh,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    # n_bucket only keys the autotuner (a power of two of n_tokens): unused here.
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_tokens
    rows64 = rows.to(tl.int64)
    targets = tl.load(target_ptr + rows64, mask=row_ok, other=-1).to(tl.int64)
    v_start = tl.program_id(1) * split_size
    v_end = tl.minimum(v_start + split_size, vocab)
    run_max = tl.full([BLOCK_N], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_N], tl.float32)
    picked = tl.zeros([BLOCK_N], tl.float32)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < v_end
        cols64 = cols.to(tl.int64)
        logits = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
        for h0 in range(0, width, BLOCK_H):
            hs = h0 + tl.arange(0, BLOCK_H)
            h_ok = hs < width
            hs64 = hs.to(tl.int64)
            a = tl.load(hidden_ptr + rows64[:, None] * stride_hn + hs64[None, :] * stride_hh,
                        mask=row_ok[:, None] & h_ok[None, :], other=0.0)
            b = tl.load(weight_ptr + cols64[None, :] * stride_wv + hs64[:, None] * stride_wh,
                        mask=col_ok[None, :] & h_ok[:, None], other=0.0)
            if UPCAST:  # exact: a product of two bf16 values fits in fp32
                a, b = a.to(tl.float32), b.to(tl.float32)
            logits = tl.dot(a, b, logits, input_precision=PRECISION)
        # Columns past the split's end must not count.
        logits = tl.where(col_ok[None, :], logits, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(logits, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(
            tl.exp(logits - new_max[:, None]), axis=1)
        run_max = new_max
        picked += tl.sum(tl.where(cols64[None, :] == targets[:, None], logits, 0.0), axis=1)
    out = tl.program_id(1).to(tl.int64) * n_tokens + rows64
    tl.store(max_ptr + out, run_max, mask=row_ok)
    tl.store(sum_ptr + out, run_sum, mask=row_ok)
    tl.store(picked_ptr + out, picked, mask=row_ok)


def _configs_for_device(configs: list[triton.Config], named_args: dict, **_: object
                        ) -> list[triton.Config]:
    """The autotuner's early prune: before Hopper, only the configs that do not spill."""
    major = torch.cuda.get_device_capability(named_args["hidden_ptr"].device)[0]
    if major >= 9:
        return configs
    keep = {(c[0], c[1], c[2], c[3], c[4]) for c in AMPERE_CONFIGS}
    return [c for c in configs if (c.kwargs["BLOCK_N"], c.kwargs["BLOCK_V"], c.kwargs["BLOCK_H"],
                                   c.num_warps, c.num_stages) in keep]


_partial_lse_tuned = triton.autotune(
    configs=[_config(*c) for c in CONFIGS],
    key=["n_bucket", "vocab", "width"],  # and the pointer dtypes, which Triton keys on itself
    prune_configs_by={"early_config_prune": _configs_for_device},
)(_partial_lse_kernel)


@triton.jit
def _segment_mean_kernel(values_ptr, offsets_ptr, out_ptr, BLOCK: tl.constexpr):
    segment = tl.program_id(0)
    start = tl.load(offsets_ptr + segment).to(tl.int64)
    end = tl.load(offsets_ptr + segment + 1).to(tl.int64)
    acc = tl.zeros([BLOCK], tl.float32)
    for i in range(start, end, BLOCK):
        idx = i + tl.arange(0, BLOCK)
        acc += tl.load(values_ptr + idx, mask=idx < end, other=0.0)
    count = (end - start).to(tl.float32)
    mean = tl.sum(acc, axis=0) / tl.maximum(count, 1.0)
    tl.store(out_ptr + segment, tl.where(count > 0, mean, float("nan")))


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: any small number


def vocab_split(n_tokens: int, vocab: int, device: torch.device,
                splits: int | None = None) -> tuple[int, int]:
    """(vocabulary entries per split, number of splits): enough programs to fill the GPU's SMs
    PROGRAMS_PER_SM times over with 128-token blocks, no split under MIN_SPLIT entries (unless
    ``splits`` is given, as the tests do), each a multiple of SPLIT_ALIGN."""
    if splits is None:
        token_blocks = triton.cdiv(n_tokens, 128)
        wanted = triton.cdiv(PROGRAMS_PER_SM * _sm_count(device), token_blocks)
        splits = max(1, min(wanted, vocab // MIN_SPLIT))
    size = triton.cdiv(triton.cdiv(vocab, max(1, splits)), SPLIT_ALIGN) * SPLIT_ALIGN
    return size, triton.cdiv(vocab, size)


def token_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
              splits: int | None = None) -> torch.Tensor:
    """Negative log-likelihood of ``targets[i]`` under ``softmax(hidden[i] @ weight.T)``.

    ``hidden`` ``[N, H]`` and ``weight`` ``[V, H]`` share one dtype (fp32, bf16 or fp16);
    ``targets`` ``[N]`` integer ids in ``[0, V)``, checked by the caller. Returns ``[N]`` fp32.
    ``splits`` forces the number of vocabulary splits (tests); by default it fills the GPU."""
    n, width = hidden.shape
    vocab = weight.shape[0]
    out = torch.empty(n, dtype=torch.float32, device=hidden.device)
    if n == 0:
        return out
    split_size, n_splits = vocab_split(n, vocab, hidden.device, splits)
    partial = torch.empty((3, n_splits, n), dtype=torch.float32, device=hidden.device)
    # fp32 inputs: exact IEEE products, not TF32, so the numbers match the fp32 reference.
    precision = "ieee" if hidden.dtype == torch.float32 else None
    # The interpreter multiplies bf16 bit patterns in tl.dot (triton-lang/triton#11584):
    # there, widen the operands first; compiled kernels keep the native bf16 dot.
    upcast = hidden.dtype == torch.bfloat16 and INTERPRETED
    args = (hidden, weight, targets.contiguous(), partial[0], partial[1], partial[2],
            n, vocab, width, split_size, 1 << max(n - 1, 0).bit_length(),
            hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1))
    if INTERPRETED:
        fixed = (triton.cdiv(n, INTERPRETER_CONFIG["BLOCK_N"]), n_splits)
        _partial_lse_kernel[fixed](*args, **INTERPRETER_CONFIG, PRECISION=precision,
                                   UPCAST=upcast)
    else:
        def grid(meta: dict) -> tuple[int, int]:
            return (triton.cdiv(n, meta["BLOCK_N"]), n_splits)

        _partial_lse_tuned[grid](*args, PRECISION=precision, UPCAST=upcast)
    return merge_partials(partial[0], partial[1], partial[2], out=out)


def merge_partials(maxes: torch.Tensor, sums: torch.Tensor, picked: torch.Tensor, *,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """NLL ``[N]`` from per-split partials ``[S, N]``: log-sum-exp merged across the splits
    (``m + log(sum_s sums_s * exp(max_s - m))``) minus the target logit (held by one split)."""
    top = maxes.amax(dim=0)
    total = (sums * torch.exp(maxes - top)).sum(dim=0)
    nll = top + torch.log(total) - picked.sum(dim=0)
    if out is None:
        return nll
    return out.copy_(nll)


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
    """Per-token NLL ``[N]`` and its per-segment means ``[S]``: no logits tensor."""
    nll = token_nll(hidden, weight, targets)
    return nll, segment_mean(nll, offsets)
