"""The packed causal-LM body against the transformers padded forward it replaces on CPU."""

from __future__ import annotations

import pytest
import torch
from car_engine.kernels import attention as fused_attention
from car_engine.kernels import linear as cpu_linear
from packed_models import assert_refused

from car_engine.models.folder import WEIGHTS_FILE
from car_engine.models.llama import PackedCausalLM, packs, supports
from car_engine.models.registry import causal_lm_path, load_causal_lm

pytestmark = pytest.mark.slow  # real model (SmolLM2-135M-Instruct)


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return load_causal_lm("default", dtype="fp32")


@pytest.fixture(scope="module")
def token_ids(model_and_tokenizer, sharegpt_records) -> list[list[int]]:
    """Real texts cut at 80 tokens, longest first, down to a single token."""
    _, tokenizer = model_and_tokenizer
    texts = sharegpt_records.column("output").to_pylist()[:12]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:80] for t in texts]
    return sorted([[1, *seq] for seq in ids] + [[1]], key=len, reverse=True)


def padded_states(model, token_ids: list[list[int]]) -> torch.Tensor:
    """The transformers body's final hidden states of every real token, concatenated."""
    width = len(token_ids[0])
    ids = torch.full((len(token_ids), width), 2)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(token_ids):
        ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
    with torch.inference_mode():
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    return torch.cat([hidden[row, :len(seq)] for row, seq in enumerate(token_ids)])


@pytest.mark.parametrize("fused_linears, native_attention",
                         [(True, True), (False, True), (True, False)])
def test_hidden_states_match_the_padded_forward(model_and_tokenizer, token_ids, fused_linears,
                                                native_attention, monkeypatch):
    # the fallbacks: F.linear for torch builds without oneDNN, scaled_dot_product_attention
    # for CPUs without AVX512-BF16
    model, _ = model_and_tokenizer
    assert cpu_linear.AVAILABLE  # this machine's torch has it, so both paths are tested
    monkeypatch.setattr(cpu_linear, "AVAILABLE", fused_linears)
    if native_attention and not fused_attention.AVAILABLE:
        pytest.skip("needs AVX512-BF16")
    monkeypatch.setattr(fused_attention, "AVAILABLE", native_attention)
    expected = padded_states(model, token_ids)
    every = torch.arange(expected.shape[0])
    some = torch.tensor([0, 5, expected.shape[0] - 1])  # the last layer's MLP runs on these only
    with torch.inference_mode():
        packed = PackedCausalLM(model)
        torch.testing.assert_close(packed(token_ids, every), expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(packed(token_ids, some), expected[some], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_attention_paths_stay_close_to_fp32(model_and_tokenizer, token_ids, native,
                                                 monkeypatch):
    if native and not fused_attention.AVAILABLE:
        pytest.skip("needs AVX512-BF16")
    monkeypatch.setattr(fused_attention, "AVAILABLE", native)
    model, _ = model_and_tokenizer
    every = torch.arange(sum(len(t) for t in token_ids))
    with torch.inference_mode():
        fp32 = PackedCausalLM(model)(token_ids, every)
        bf16 = PackedCausalLM(model, torch.bfloat16)(token_ids, every)
    assert bf16.dtype == torch.bfloat16
    cosine = torch.nn.functional.cosine_similarity(fp32, bf16.float(), dim=1)
    assert cosine.min() >= 0.99


def test_other_architectures_are_refused_with_the_reason(model_and_tokenizer, monkeypatch):
    assert_refused(model_and_tokenizer[0], supports, PackedCausalLM, monkeypatch, "hidden_act",
                   "gelu", "activation is not silu")


def test_lengths_outside_the_positions_are_refused(model_and_tokenizer):
    packed = PackedCausalLM(model_and_tokenizer[0])
    with pytest.raises(ValueError, match="1..8192 tokens"):
        packed([[1, 2], []], torch.tensor([0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_folder_read_body_equals_the_one_built_from_the_model(model_and_tokenizer, token_ids,
                                                                   dtype):
    # IFD on CPU reads config.json + safetensors itself and never builds the transformers model
    model, _ = model_and_tokenizer
    from_folder = PackedCausalLM.from_folder(causal_lm_path("default"), dtype)
    every = torch.arange(sum(len(t) for t in token_ids))
    with torch.inference_mode():
        want = PackedCausalLM(model, dtype)(token_ids, every)
        got = from_folder(token_ids, every)
    assert torch.equal(got, want)
    assert torch.equal(from_folder.head, model.lm_head.weight.to(dtype))  # tied: the embeddings


def test_a_folder_without_the_weights_is_not_packed_and_a_bad_one_names_the_file(tmp_path):
    folder = causal_lm_path("default")
    assert packs(folder)
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    assert not packs(tmp_path)  # no safetensors: the transformers forward reads it
    from safetensors.torch import save_file

    save_file({"embed_tokens.weight": torch.zeros(4, 4)}, str(tmp_path / WEIGHTS_FILE))
    with pytest.raises(ValueError, match="model.safetensors: no Llama weight"):
        PackedCausalLM.from_folder(tmp_path)
