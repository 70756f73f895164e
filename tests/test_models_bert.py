"""The packed BERT forward against the transformers padded forward it replaces on CPU."""

from __future__ import annotations

import pytest
import torch
from car_engine.kernels import attention as fused_attention
from car_engine.kernels import linear as cpu_linear
from packed_models import assert_refused

from car_engine.batching import pad_batch, tokenize
from car_engine.embed import Embedder
from car_engine.models import bert as packed_bert
from car_engine.models.bert import PackedBert, supports


@pytest.fixture(scope="module")
def reference() -> Embedder:
    """The transformers forward (padded batches), fp32."""
    return Embedder(pack=False, dtype="fp32")


@pytest.fixture(scope="module")
def token_ids(reference, sharegpt_records) -> list[list[int]]:
    """Real texts cut at 64 tokens, longest first: runs of equal length (the cap) and a tail of
    distinct and repeated short lengths."""
    texts = sharegpt_records.column("instruction").to_pylist()[:40] + ["same len", "same len"]
    ids = tokenize(reference.tokenizer, texts, 64)
    return sorted(ids, key=len, reverse=True)


def padded_states(reference: Embedder, token_ids: list[list[int]]) -> list[torch.Tensor]:
    ids, mask = (torch.from_numpy(a) for a in pad_batch(token_ids, range(len(token_ids)),
                                                        reference.pad_id))
    with torch.inference_mode():
        hidden = reference.model(input_ids=ids, attention_mask=mask).last_hidden_state
    return [hidden[row, :len(seq)] for row, seq in enumerate(token_ids)]


@pytest.mark.parametrize("group_scores, fused", [(packed_bert.MAX_GROUP_SCORES, True),
                                                 (1, True), (packed_bert.MAX_GROUP_SCORES, False)])
def test_hidden_states_match_the_padded_forward(reference, token_ids, group_scores, fused,
                                                monkeypatch):
    # group_scores=1 puts every text in an attention group of its own; fused=False is the
    # addmm + gelu path of torch builds without oneDNN
    assert cpu_linear.AVAILABLE  # this machine's torch has it, so both paths are tested
    monkeypatch.setattr(packed_bert, "MAX_GROUP_SCORES", group_scores)
    monkeypatch.setattr(cpu_linear, "AVAILABLE", fused)
    assert len({len(t) for t in token_ids}) < len(token_ids)  # equal lengths share a group
    with torch.inference_mode():
        got = PackedBert(reference.model)(token_ids)
    for row, (mine, expected) in enumerate(zip(got, padded_states(reference, token_ids))):
        assert mine.shape == expected.shape, row
        torch.testing.assert_close(mine, expected, atol=2e-5, rtol=1e-4, msg=f"text {row}")


def test_embedder_packs_on_cpu_and_matches_unpacked(reference, sharegpt_records):
    from car_engine.corpus import pair_texts

    packed = Embedder(dtype="fp32")
    assert packed.packed is not None and reference.packed is None
    texts = pair_texts(sharegpt_records.slice(0, 10)) + ["x", "two words"]
    torch.testing.assert_close(torch.from_numpy(packed.embed(texts, progress=False)),
                               torch.from_numpy(reference.embed(texts, progress=False)),
                               atol=1e-5, rtol=0)


def test_other_architectures_are_refused_with_the_reason(reference, monkeypatch):
    assert_refused(reference.model, supports, PackedBert, monkeypatch, "hidden_act", "relu",
                   "activation is not exact gelu")


def test_lengths_outside_the_positions_are_refused(reference):
    packed = PackedBert(reference.model)
    with pytest.raises(ValueError, match="1..512 tokens"):
        packed([[101] * 513])
    with pytest.raises(ValueError, match="1..512 tokens"):
        packed([[101, 102], []])


@pytest.mark.parametrize("path", ["fused", "flash", "matmul"])
def test_bf16_attention_paths_agree(reference, token_ids, path, monkeypatch):
    # flash: every run of equal-length texts through PyTorch's flash kernel (AMX CPUs)
    if path != "matmul" and not fused_attention.AVAILABLE:
        pytest.skip("needs AVX512-BF16")
    monkeypatch.setattr(fused_attention, "AVAILABLE", path != "matmul")
    monkeypatch.setattr(packed_bert, "cpu_has_amx", lambda: path == "flash")
    with torch.inference_mode():
        fp32 = PackedBert(reference.model)(token_ids)
        bf16 = PackedBert(reference.model, torch.bfloat16)(token_ids)
    for a, b in zip(fp32, bf16):
        assert b.dtype == torch.bfloat16
        cosine = torch.nn.functional.cosine_similarity(a.mean(0), b.float().mean(0), dim=0)
        assert cosine >= 0.999


def test_flash_runs_cover_every_text(reference):
    # Runs of 1, 3, 5 and 4 equal-length texts, then singles: each run is one flash batch, and
    # each text's context lands where it belongs (against the fused kernel, text by text).
    lengths = [7] + [9] * 3 + [12] * 5 + [20] * 4 + [3, 30]
    body = PackedBert(reference.model, torch.bfloat16)
    qkv = torch.randn(sum(lengths), 3 * body.heads * body.head_dim).to(torch.bfloat16)
    runs = body._attention_groups(lengths, capped=False)
    assert [count for _, count, _ in runs] == [1, 3, 5, 4, 1, 1]
    got = body._attention_amx(qkv, runs)
    expected = body._attention(qkv.float(), body._attention_groups(lengths))  # fp32 matmuls
    torch.testing.assert_close(got.float(), expected.float(), atol=2e-2, rtol=2e-2)
