"""Types of the pybind11 extension built from csrc/module.cpp (see there for each routine)."""

import numpy as np

def topk(scores: np.ndarray, k: int) -> np.ndarray: ...
def topk_per_cluster(
    scores: np.ndarray, labels: np.ndarray, n_per_cluster: int, n_clusters: int = -1
) -> np.ndarray: ...
def merge_topk(
    scores_lists: list[np.ndarray], id_lists: list[np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]: ...
def hash_texts(texts: list[str]) -> np.ndarray: ...
def hash_bytes(data: bytes) -> int: ...
def dedup(hashes: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray: ...
def attention_supported() -> bool: ...
def attention_bf16(
    qkv: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    heads: int,
    kv_heads: int,
    head_dim: int,
    causal: bool,
    out: np.ndarray,
    threads: int,
) -> None: ...
def attention_f32(
    qkv: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    heads: int,
    kv_heads: int,
    head_dim: int,
    causal: bool,
    out: np.ndarray,
    threads: int,
) -> None: ...
def rms_norm_bf16(
    x: np.ndarray, weight: np.ndarray, eps: float, out: np.ndarray, threads: int
) -> None: ...
def rms_norm_f32(
    x: np.ndarray, weight: np.ndarray, eps: float, out: np.ndarray, threads: int
) -> None: ...
def minhash_signatures(
    texts: list[str], num_perm: int, seed: int, ngram: int, threads: int = 0
) -> np.ndarray: ...
def lsh_groups(
    signatures: np.ndarray, bands: int, rows: int, threshold: float, threads: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...
def union_pairs(parent: np.ndarray, left: np.ndarray, right: np.ndarray) -> None: ...
def flatten_forest(parent: np.ndarray) -> None: ...
def cluster_means(
    x: np.ndarray, order: np.ndarray, offsets: np.ndarray, threads: int = 0,
) -> np.ndarray: ...
def semdedup_pairs(
    x: np.ndarray, z: np.ndarray, centres: np.ndarray, centres_z: np.ndarray,
    order: np.ndarray, offsets: np.ndarray,
    reach: float, cut: float, tol: float, threads: int = 0, plain: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]: ...
def union_ordered(index_arrays: list[np.ndarray]) -> np.ndarray: ...
