"""Every native routine against its plain numpy/heapq reference (car_engine.reference.select)."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from car_engine import _native, native
from car_engine.reference import select as ref


def scores_with_ties_and_nans(rng: np.random.Generator, n: int, dtype=np.float64) -> np.ndarray:
    s = rng.integers(0, max(2, n // 4), n).astype(dtype)  # many exact ties
    s[rng.random(n) < 0.1] = np.nan
    return s


# ---------------------------------------------------------------- top-k


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,k", [(0, 5), (1, 1), (10, 0), (10, 3), (10, 10), (10, 50),
                                 (1000, 7), (1000, 999), (5000, 1200)])
def test_topk_matches_reference(dtype, n, k):
    s = scores_with_ties_and_nans(np.random.default_rng(n + k), n, dtype)
    got = native.topk(s, k)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, ref.topk(s, k))


def test_topk_never_selects_nan_and_handles_all_nan():
    s = np.array([np.nan, 1.0, np.nan, 1.0, 2.0])
    np.testing.assert_array_equal(native.topk(s, 10), [4, 1, 3])
    assert native.topk(np.full(5, np.nan), 3).size == 0


def test_topk_ten_million():
    s = np.random.default_rng(0).random(10_000_000)
    s[::1000] = np.nan
    s[5] = s[6] = 2.0  # a tie at the very top: lower index first
    got = native.topk(s, 1000)
    np.testing.assert_array_equal(got, ref.topk(s, 1000))
    assert got[:2].tolist() == [5, 6]


@given(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                          st.sampled_from([0.0, 1.0, -1.0])), max_size=200),
       st.integers(0, 250))
@settings(max_examples=200, deadline=None)
def test_topk_property(values, k):
    s = np.array(values, dtype=np.float64)
    np.testing.assert_array_equal(native.topk(s, k), ref.topk(s, k))


# ---------------------------------------------------------------- per cluster


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("n,clusters,per", [(0, 3, 1), (50, 5, 1), (500, 7, 3), (2000, 40, 2),
                                            (300, 10, 100)])
def test_topk_per_cluster_matches_reference(label_dtype, n, clusters, per):
    rng = np.random.default_rng(n)
    s = scores_with_ties_and_nans(rng, n)
    labels = rng.integers(-1, clusters, n).astype(label_dtype)  # -1 = unassigned
    got = native.topk_per_cluster(s, labels, per)
    np.testing.assert_array_equal(got, ref.topk_per_cluster(s, labels.astype(np.int64), per))


def test_topk_per_cluster_ten_million():
    rng = np.random.default_rng(1)
    s = rng.random(10_000_000).astype(np.float32)
    labels = rng.integers(0, 2236, s.size).astype(np.int32)
    got = native.topk_per_cluster(s, labels, 1)
    assert got.size == 2236
    np.testing.assert_array_equal(got, ref.topk_per_cluster(s, labels, 1))


def test_topk_per_cluster_rejects_label_beyond_n_clusters():
    with pytest.raises(ValueError, match="n_clusters"):
        native.topk_per_cluster(np.ones(3), np.array([0, 1, 5]), 1, n_clusters=3)


# ---------------------------------------------------------------- merge


def test_merge_topk_matches_heapq():
    rng = np.random.default_rng(2)
    shards, offset = [], 0
    for size in (0, 1, 40, 300, 7):
        s = np.round(rng.random(size) * 20) / 20  # ties across shards
        top = native.topk(s, 25)
        shards.append((s[top], top + offset))
        offset += size
    for k in (0, 1, 10, 1000):
        got_s, got_i = native.merge_topk(shards, k)
        want_s, want_i = ref.merge_topk(shards, k)
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_array_equal(got_s, want_s)


def test_merge_topk_equals_global_topk():
    s = np.random.default_rng(3).random(100_000)
    shards = []
    for lo in range(0, s.size, 12_345):
        top = native.topk(s[lo:lo + 12_345], 500)
        shards.append((s[lo:lo + 12_345][top], top + lo))
    _, ids = native.merge_topk(shards, 500)
    np.testing.assert_array_equal(ids, native.topk(s, 500))


def test_merge_topk_rejects_unsorted_and_nan():
    with pytest.raises(ValueError, match="not sorted"):
        native.merge_topk([(np.array([1.0, 2.0]), np.array([0, 1]))], 2)
    with pytest.raises(ValueError, match="NaN"):
        native.merge_topk([(np.array([np.nan]), np.array([0]))], 1)
    with pytest.raises(ValueError, match="differ in length"):
        native.merge_topk([(np.array([1.0]), np.array([0, 1]))], 1)


# ---------------------------------------------------------------- hashing + dedup


def python_normal_form(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text.casefold()).split())


def test_hash_normalises_case_composition_and_whitespace():
    same = ["Café  au\tlait\n", "cafe\u0301 AU lait", "\u3000CAFÉ au\u00a0lait", "café au lait"]
    hashes = native.hash_texts(same)
    assert len(set(hashes.tolist())) == 1
    assert native.hash_texts(["café au lait!"])[0] != hashes[0]
    assert hashes[0] == _native.hash_bytes("café au lait".encode())


@given(st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=30), max_size=30))
@settings(max_examples=200, deadline=None)
def test_hash_equality_follows_python_normal_form(texts):
    hashes = native.hash_texts(texts).tolist()
    for text, h in zip(texts, hashes):
        assert h == _native.hash_bytes(python_normal_form(text).encode())


def test_hash_has_no_collisions_on_distinct_texts():
    texts = [f"instruction {i} response {i * 7919}" for i in range(200_000)]
    assert np.unique(native.hash_texts(texts)).size == len(texts)


@pytest.mark.parametrize("with_scores", [False, True])
def test_dedup_matches_reference(with_scores):
    rng = np.random.default_rng(4)
    h = rng.integers(0, 300, 2000).astype(np.uint64)
    s = scores_with_ties_and_nans(rng, 2000) if with_scores else None
    np.testing.assert_array_equal(native.dedup(h, s), ref.dedup(h, s))


def test_dedup_ten_million_half_repeated():
    rng = np.random.default_rng(5)
    unique = rng.integers(0, 2**63, 5_000_000, dtype=np.int64).astype(np.uint64)
    h = np.concatenate([unique, unique[rng.permutation(unique.size)]])
    got = native.dedup(h)
    np.testing.assert_array_equal(got, ref.dedup(h))
    assert got.size == np.unique(unique).size


def test_dedup_edge_cases():
    assert native.dedup(np.empty(0, np.uint64)).size == 0
    np.testing.assert_array_equal(native.dedup(np.array([7, 7, 7], np.uint64),
                                               np.array([np.nan, 1.0, 1.0])), [1])


def test_union_keeps_first_appearance_order():
    a, b = np.array([5, 1, 9]), np.array([1, 0, 5, 3])
    np.testing.assert_array_equal(native.union([a, b]), ref.union([a, b]))
    assert native.union([]).size == 0
    with pytest.raises(ValueError, match="negative"):
        native.union([np.array([-1])])


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("call", [
    lambda: _native.topk(np.ones(3, np.int64), 1),
    lambda: _native.topk(np.ones((2, 2)), 1),
    lambda: _native.topk(np.ones(3), -1),
    lambda: _native.topk(np.ones(6)[::2], 1),
    lambda: _native.topk_per_cluster(np.ones(3), np.ones(3, np.float64), 1),
    lambda: _native.topk_per_cluster(np.ones(3), np.zeros(2, np.int64), 1),
    lambda: _native.dedup(np.ones(3, np.int64)),
    lambda: _native.dedup(np.ones(3, np.uint64), np.ones(2)),
    lambda: _native.merge_topk([np.ones(2)], [], 1),
    lambda: _native.union_ordered([np.ones(2)]),
])
def test_bad_arguments_raise_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_hash_texts_rejects_non_strings():
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        _native.hash_texts(["a", 3])


def test_equal_but_distinct_dtype_objects_are_accepted():
    # arrays coming back from pickles / Ray's object store carry equal, non-identical dtypes
    same = np.dtype("f8").newbyteorder("=")
    assert same is not np.dtype("f8")
    scores = np.array([0.5, 2.0, 1.0], dtype=same)
    labels = np.array([0, 1, 0], dtype=np.dtype("i4").newbyteorder("="))
    np.testing.assert_array_equal(native.topk(scores, 2), [1, 2])
    np.testing.assert_array_equal(native.topk_per_cluster(scores, labels, 1), [2, 1])
    with pytest.raises(ValueError, match=">f8"):
        _native.topk(scores.astype(">f8"), 1)
