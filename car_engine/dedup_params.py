"""The defaults of near and semantic duplicates (SPEC §9), a part of config.py's settings kept
in a file of their own (config.py reads them for RunConfig)."""

from __future__ import annotations

from dataclasses import dataclass

from car_engine.errors import UsageError


@dataclass
class NearDupParams:
    """MinHash signatures for near duplicates (SPEC §9): NeMo Curator's 20 bands x 13 rows
    (260 permutations; the LSH S-curve crosses 1/2 at Jaccard ~0.79) over word 5-grams. The
    signature stage's fingerprint is these, so a rerun with another threshold reuses it."""

    num_perm: int = 260
    bands: int = 20
    rows: int = 13
    ngram: int = 5
    seed: int = 42


# Near and semantic duplicates (SPEC §9), off by default: measured on builtin:sharegpt
# (benchmarks/RESULTS.md, "Near and semantic duplicates"); either would change golden outputs.
NEAR_DUP_THRESHOLD = 0.8
SEMDEDUP_EPS: float | None = None  # e.g. 0.05: cosine >= 0.95 inside a k-means cluster


def check_dedup(near_dup_threshold: float, semdedup_eps: float | None) -> None:
    """Refuse a Jaccard threshold outside (0, 1] or an eps outside (0, 1) (usage errors)."""
    if not 0 < near_dup_threshold <= 1:
        raise UsageError(f"--near-dup-threshold must be in (0, 1], got {near_dup_threshold}")
    if semdedup_eps is not None and not 0 < semdedup_eps < 1:
        raise UsageError(f"--semdedup-eps must be in (0, 1), got {semdedup_eps}")
