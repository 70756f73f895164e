"""The GPU forward of IFD (car_engine.ifd_gpu) on the CPU, where its logic is the same: right
padding to a multiple with no attention mask gives the batch-1 reference's losses, the prefetch
thread and the batched read-back keep the order, bad targets are refused on the host; and, on a
GPU (``pytest -m gpu``), the same against the CPU."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from car_engine import ifd_gpu
from car_engine.ifd import _Sequence, plan_batches
from car_engine.reference.ifd import sequence_loss


@pytest.fixture(scope="module")
def tiny_lm() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=257, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).eval()


def _sequences(n: int) -> list[_Sequence]:
    rng = random.Random(4)
    out = []
    for record in range(n):
        length = rng.randint(3, 70)
        scored = rng.randint(1, length - 1)
        out.append(_Sequence(record, bool(record % 2), [rng.randrange(257) for _ in
                                                         range(length)], scored))
    return out


def _losses(forward: ifd_gpu.PaddedForward, batches: list[list[_Sequence]]) -> dict[int, float]:
    got = {}
    for batch, means in zip(batches, forward.losses(batches)):
        got.update({seq.record: loss for seq, loss in zip(batch, means)})
    return got


def test_maskless_right_padded_batches_match_batch_1(tiny_lm, monkeypatch):
    monkeypatch.setattr(ifd_gpu, "SYNC_EVERY", 2)  # several read-backs, one partial
    sequences = _sequences(23)
    forward = ifd_gpu.PaddedForward(tiny_lm.model, tiny_lm.lm_head.weight, torch.device("cpu"),
                                    pad_id=0, pad_multiple=16)
    got = _losses(forward, plan_batches(sequences, 300))
    for seq in sequences:
        assert got[seq.record] == pytest.approx(sequence_loss(tiny_lm, seq.ids, seq.n_score),
                                                abs=2e-5)


def test_prepare_pads_to_the_multiple_and_indexes_the_predicting_positions():
    batch = [_Sequence(0, False, [5, 6, 7, 8], 2), _Sequence(1, True, [9, 10], 1)]
    got = ifd_gpu.prepare(batch, pad_id=0, vocab=20, pad_multiple=8)
    assert got.ids.tolist() == [[5, 6, 7, 8, 0, 0, 0, 0], [9, 10, 0, 0, 0, 0, 0, 0]]
    assert got.gather.tolist() == [1, 2, 8]  # positions 1, 2 of row 0; position 0 of row 1
    assert got.targets.tolist() == [7, 8, 10] and got.offsets.tolist() == [0, 2, 3]
    with pytest.raises(ValueError, match=r"\[0, 9\)"):
        ifd_gpu.prepare(batch, pad_id=0, vocab=9)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_forward_matches_the_cpu(tiny_lm):
    import copy

    sequences = _sequences(40)
    batches = plan_batches(sequences, 512)
    cpu = _losses(ifd_gpu.PaddedForward(tiny_lm.model, tiny_lm.lm_head.weight,
                                        torch.device("cpu"), 0), batches)
    gpu_lm = copy.deepcopy(tiny_lm).cuda()
    gpu = _losses(ifd_gpu.PaddedForward(gpu_lm.model, gpu_lm.lm_head.weight,
                                        torch.device("cuda"), 0), batches)
    for record, loss in cpu.items():
        assert gpu[record] == pytest.approx(loss, abs=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_kernel_on_the_gpu_matches_the_twin(dtype):
    from car_engine import kernels

    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(777, 96, generator=gen).to(dtype)
    weight = (torch.randn(5003, 96, generator=gen) * 0.4).to(dtype)
    targets = torch.randint(0, 5003, (777,), generator=gen)
    offsets = torch.tensor([0, 100, 100, 400, 777])
    want = kernels.cross_entropy_torch.token_nll(hidden.float(), weight.float(), targets)
    nll, means = kernels.linear_cross_entropy(hidden.cuda(), weight.cuda(), targets.cuda(),
                                              offsets.cuda())
    assert kernels.backend_for(hidden.cuda()) == "triton"
    torch.testing.assert_close(nll.cpu(), want, atol=2e-3 if dtype != torch.float32 else 1e-4,
                               rtol=0)
    assert torch.isnan(means[1]).item()
