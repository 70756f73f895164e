"""Embedding-like check data for the clustering benchmark, made here, deterministic per seed.

Each generator draws ``true`` cluster means and per-point noise, shaped by a spectrum, rotates
them by a random orthogonal matrix (so PCA has to find the directions) and normalises every
row to unit length, as sentence embeddings are. What varies between generators is what the
engine's seeding was not tuned on: far fewer, about as many, or far more true clusters than
k = int(sqrt(n / 2)); an isotropic or a decaying spectrum (variance of component j ~ j^-1.1:
95% of it in ~245 of 384 components, the shape SPEC §3 gives for all-MiniLM-L6-v2); equal
or log-normal cluster sizes and spreads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BLOCK = 50_000  # rows generated at a time: memory stays at the output plus one block
DECAY = 1.1  # variance of component j ~ j^-DECAY for the "decaying" spectrum


@dataclass(frozen=True)
class Generator:
    """How one kind of check data is drawn. ``clusters_per_k`` sets the true cluster count
    relative to k = int(sqrt(n / 2)); ``size_sigma`` / ``spread_sigma`` are the log-normal
    sigmas of the cluster sizes and spreads (0: all equal)."""

    name: str
    clusters_per_k: float
    spectrum: str  # "decaying" or "isotropic"
    size_sigma: float = 0.0
    spread_sigma: float = 0.0
    spread: float = 0.5  # noise scale relative to the spread of the cluster means

    def true_clusters(self, n: int) -> int:
        """The number of clusters the data is drawn from, for n points."""
        return max(1, round(self.clusters_per_k * int(math.sqrt(n / 2))))


GENERATORS = {g.name: g for g in (
    Generator("few-decaying", 0.25, "decaying"),
    Generator("near-isotropic", 1.0, "isotropic"),
    Generator("many-decaying", 10.0, "decaying"),  # the shape the 1.5% gap came from
    Generator("unequal-decaying", 2.0, "decaying", size_sigma=1.0, spread_sigma=0.5),
    Generator("many-isotropic", 10.0, "isotropic", size_sigma=0.5),
)}


def spectrum_scale(d: int, spectrum: str) -> np.ndarray:
    """Per-component standard deviations [d] (before rotation), unit total variance."""
    if spectrum == "isotropic":
        variance = np.ones(d)
    elif spectrum == "decaying":
        variance = np.arange(1, d + 1, dtype=np.float64) ** -DECAY
    else:
        raise ValueError(f"unknown spectrum {spectrum!r} (decaying or isotropic)")
    return np.sqrt(variance / variance.sum()).astype(np.float32)


def generate(name: str, n: int, d: int = 384, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors [n, d] (float32) from generator ``name``; the same (name, n, d,
    seed) always gives the same array."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r} (choose from {', '.join(GENERATORS)})")
    g = GENERATORS[name]
    rng = np.random.default_rng([seed, n, d, list(GENERATORS).index(name)])
    scale = spectrum_scale(d, g.spectrum)
    true = g.true_clusters(n)
    means = rng.standard_normal((true, d), dtype=np.float32) * scale
    spreads = (g.spread * np.exp(g.spread_sigma * rng.standard_normal(true))).astype(np.float32)
    weights = np.exp(g.size_sigma * rng.standard_normal(true))
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    rotation = rotation.astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        members = rng.choice(true, stop - start, p=weights / weights.sum())
        block = rng.standard_normal((stop - start, d), dtype=np.float32) * scale
        block *= spreads[members, None]
        block += means[members]
        block = block @ rotation
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out
