"""IQS building blocks: sparsemax, layer mix, pooling, cached-block equivalence, the pairs
reader and the paper's pairwise accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from car_engine.batching import length_batches, pad_batch, token_batches, tokenize
from car_engine.errors import CorpusError
from car_engine.iqs.model import LayerMix, encoder_blocks, masked_mean, run_blocks, sparsemax
from car_engine.iqs.pairs import pairwise_accuracy, read_pairs
from car_engine.iqs.score import spearman
from car_engine.iqs.store import new_model

finite = st.floats(-20, 20, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=200, deadline=None)
@given(st.lists(finite, min_size=1, max_size=12))
def test_sparsemax_is_a_sparse_distribution_that_keeps_order(values):
    scores = torch.tensor(values)
    probs = sparsemax(scores)
    assert torch.all(probs >= 0)
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    # larger score -> no smaller weight; the top score always has weight
    order = torch.argsort(scores)
    assert torch.all(probs[order][1:] >= probs[order][:-1] - 1e-6)
    assert probs[torch.argmax(scores)] > 0


def test_sparsemax_known_values():
    torch.testing.assert_close(sparsemax(torch.tensor([1.0, 0.5, -3.0, 0.9])),
                               torch.tensor([0.5333, 0.0333, 0.0, 0.4333]), atol=1e-4, rtol=0)
    torch.testing.assert_close(sparsemax(torch.zeros(7)), torch.full((7,), 1 / 7))


def test_layer_mix_softmax_and_gamma():
    mix = LayerMix(3, "softmax")
    with torch.no_grad():
        mix.scalar_parameters.copy_(torch.tensor([0.0, 1.0, 2.0]))
        mix.gamma.fill_(2.0)
    stacked = torch.arange(6.0).view(3, 2)
    weights = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
    torch.testing.assert_close(mix(stacked), 2.0 * (weights[:, None] * stacked).sum(0))


def test_masked_mean_ignores_padding():
    states = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [2.0], [2.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    torch.testing.assert_close(masked_mean(states, mask), torch.tensor([[2.0], [2.0]]))


def test_cached_top_blocks_reproduce_the_full_encoder():
    """The trainer runs the top blocks on cached states; that must equal the full forward,
    padding included."""
    model, tokenizer = new_model()
    texts = ["Instruction: Say hi. Input:  Response: Hello there, friend!", "Short."]
    ids = tokenize(tokenizer, texts, 64)
    input_ids, mask = (torch.from_numpy(a) for a in pad_batch(ids, [0, 1], 0))
    with torch.no_grad():
        states = model.hidden_states(input_ids, mask)
        pooled = run_blocks(encoder_blocks(model.encoder)[4:], states[4], mask)
    for got, layer in zip(pooled, (5, 6)):
        torch.testing.assert_close(got, masked_mean(states[layer], mask), atol=1e-5, rtol=1e-5)


def test_length_batches_cover_every_index_once_longest_first():
    ids = [[1] * n for n in (3, 9, 1, 7, 5)]
    batches = list(length_batches(ids, 2, min_fill=0))
    assert sorted(np.concatenate(batches).tolist()) == [0, 1, 2, 3, 4]
    assert batches[0].tolist() == [1, 3]


@pytest.mark.parametrize("min_fill", [0.0, 0.5, 0.8, 1.0])
def test_length_batches_bound_the_padding(min_fill):
    lengths = np.random.default_rng(0).integers(1, 300, size=500)
    ids = [[1] * n for n in lengths]
    batches = list(length_batches(ids, 16, min_fill=min_fill))
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    longest = [lengths[b].max() for b in batches]
    assert longest == sorted(longest, reverse=True)
    for b in batches:
        assert 1 <= len(b) <= 16
        assert lengths[b].min() >= min_fill * lengths[b].max()
    if min_fill == 0:
        assert len(batches) == 32  # a plain cut every 16


def test_token_batches_fill_a_token_budget_longest_first():
    lengths = np.random.default_rng(1).integers(1, 300, size=400)
    ids = [[1] * n for n in lengths]
    batches = list(token_batches(ids, 1000))
    assert sorted(np.concatenate(batches).tolist()) == list(range(400))
    flat = np.concatenate([lengths[b] for b in batches])
    assert flat.tolist() == sorted(lengths.tolist(), reverse=True)
    for b, after in zip(batches, batches[1:] + [None]):
        assert lengths[b].sum() <= 1000
        if after is not None:  # cut only when the next text would not fit
            assert lengths[b].sum() + lengths[after[0]] > 1000
    # a text longer than the budget still gets a batch of its own
    assert [b.tolist() for b in token_batches([[1] * 50, [1] * 5], 10)] == [[0], [1]]


def test_read_pairs_real_file(expert_revised_dir):
    pairs = read_pairs(expert_revised_dir / "APE_score_valid.csv")
    assert len(pairs) == 254
    assert all(t.startswith("Instruction: ") for t in pairs.texts)
    assert pairs.targets()[:4].tolist() == [0.0, 1.0, 0.0, 1.0]


def test_read_pairs_names_the_bad_row(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('src,score\n"Instruction: a Response: b",0\n"Instruction: a Response: c",0\n')
    with pytest.raises(CorpusError, match=r"row 2 \(line 3\).*alternation"):
        read_pairs(path)
    path.write_text("text,label\nx,0\n")
    with pytest.raises(CorpusError, match="src,score"):
        read_pairs(path)


def test_pairwise_accuracy_counts_ties_as_not_correct():
    scores = [0.0, 0.5,   # correct
              0.2, 0.205,  # tie (gap < 0.01)
              0.9, 0.1,   # wrong
              0.0, 0.01]  # exactly the margin: correct
    metrics = pairwise_accuracy(np.array(scores))
    assert metrics == {"accuracy": 0.5, "correct": 2, "ties": 1, "wrong": 1, "pairs": 4}


def test_spearman_matches_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    b = a + rng.normal(scale=0.5, size=200)
    b[:10] = b[0]  # ties
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
