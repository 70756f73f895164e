"""The native AVX512 attention kernels (bf16, fp32) against the plain definition in float64."""

from __future__ import annotations

import pytest
import torch
from car_engine.kernels import attention as fused_attention

pytestmark = pytest.mark.skipif(not fused_attention.AVAILABLE, reason="needs AVX512-BF16")

# Lengths that hit the 16-key blocks' tails, odd key pairs and the query tiles' tails.
LENGTHS = [256, 1, 2, 15, 16, 17, 33, 100, 255]


def attention_float64(qkv: torch.Tensor, lengths: list[int], heads: int, kv_heads: int,
                      causal: bool, compute: torch.dtype = torch.float64) -> torch.Tensor:
    """softmax(q k^T [+ causal mask]) v per sequence and head, in float64 (or ``compute``),
    returned as float64."""
    head_dim = qkv.shape[1] // (heads + 2 * kv_heads)
    out, start = [], 0
    for n in lengths:
        block = qkv[start:start + n].to(compute).view(n, heads + 2 * kv_heads, head_dim)
        q = block[:, :heads].transpose(0, 1)
        k, v = (block[:, heads + i * kv_heads:heads + (i + 1) * kv_heads]
                .repeat_interleave(heads // kv_heads, dim=1).transpose(0, 1) for i in (0, 1))
        scores = q @ k.transpose(-1, -2)
        if causal:
            scores = scores.masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf"))
        out.append((torch.softmax(scores, -1) @ v).transpose(0, 1).reshape(n, -1).double())
        start += n
    return torch.cat(out)


@pytest.mark.parametrize("heads, kv_heads, head_dim, causal", [
    (12, 12, 32, False), (4, 4, 16, False), (2, 2, 64, False), (1, 1, 128, False),
    (9, 3, 64, True), (4, 1, 32, True), (2, 2, 16, True), (2, 1, 128, True), (3, 3, 64, False),
    (6, 2, 64, False),
])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_matches_float64(heads, kv_heads, head_dim, causal, dtype):
    generator = torch.Generator().manual_seed(heads * 7 + kv_heads)
    width = (heads + 2 * kv_heads) * head_dim
    qkv = (torch.randn(sum(LENGTHS), width, generator=generator) * 0.8).to(dtype)
    got = fused_attention.fused_attention(qkv, LENGTHS, heads, kv_heads, causal)
    assert got.dtype == dtype
    expected = attention_float64(qkv, LENGTHS, heads, kv_heads, causal)
    error = (got.double() - expected).abs().max()
    if dtype == torch.bfloat16:  # output rounding (2^-8 relative), bf16 probabilities in P @ V
        assert error <= 0.01 * max(1.0, expected.abs().max())
    else:  # fp32: within a few times PyTorch's own fp32 error on the same (unscaled) scores
        torch_fp32 = attention_float64(qkv.double().float(), LENGTHS, heads, kv_heads, causal,
                                       compute=torch.float32)
        assert error <= 4 * (torch_fp32 - expected).abs().max() + 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_causal_first_token_sees_only_itself(dtype):
    qkv = torch.randn(5, 3 * 16, generator=torch.Generator().manual_seed(0)).to(dtype)
    got = fused_attention.fused_attention(qkv, [5], 1, causal=True)
    assert torch.equal(got[0], qkv[0, 32:])  # its own value, exactly


def test_runs_on_the_kernels_dtypes_only():
    assert fused_attention.runs(torch.zeros(1, dtype=torch.float32))
    assert fused_attention.runs(torch.zeros(1, dtype=torch.bfloat16))
    assert not fused_attention.runs(torch.zeros(1, dtype=torch.float16))
    assert fused_attention.runs(torch.zeros(1), 64) and not fused_attention.runs(torch.zeros(1), 24)


def test_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="head_dim must be 16, 32, 64 or 128"):
        fused_attention.fused_attention(torch.zeros(10, 3 * 24, dtype=torch.bfloat16), [10], 1)
    qkv = torch.zeros(11, 3 * 32, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="text 1 is outside the tokens"):
        fused_attention.fused_attention(qkv[:10], [5, 6], 1)
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        fused_attention.fused_attention(torch.zeros(4, 7 * 32, dtype=torch.bfloat16), [4], 3, 2)
