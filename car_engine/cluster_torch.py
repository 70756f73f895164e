"""PCA and greedy k-means++ seeding in torch, for a GPU (SPEC §3): the same arithmetic as
:mod:`car_engine.cluster`'s FAISS PCA and numpy seeding, which stay the CPU path.

``faiss.PCAMatrix`` runs on the CPU only, and the numpy seeding is k small memory-bound
products on one BLAS thread: on a GPU node both were the slow part of clustering once FAISS ran
Lloyd on the GPU. The random draws come from the caller's numpy generator in the same order as
the numpy seeding, so the two pick the same seeds up to float rounding of the potentials.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def pca_eigen(vectors: np.ndarray, device: torch.device
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean float32 [d], eigenvalues float64 [d] decreasing, components float32 [d, d] as rows
    in that order) of the covariance of ``vectors`` [n, d], computed in float64 on ``device``."""
    x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(device)
    x = x.double()
    mean = x.mean(dim=0)
    centred = x - mean
    covariance = centred.T @ centred / max(x.shape[0], 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    order = torch.arange(eigenvalues.numel() - 1, -1, -1, device=device)
    values = eigenvalues[order].clamp_min(0.0)
    components = eigenvectors[:, order].T.contiguous()
    return (mean.float().cpu().numpy(), values.cpu().numpy(),
            components.float().cpu().numpy())


@torch.no_grad()
def kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator,
                     device: torch.device) -> np.ndarray:
    """Greedy k-means++ seeds [k, d] (float32) of ``points`` [n, d] on ``device``: each step
    samples 2 + ln(k) candidates with probability proportional to D(x)^2 and keeps the one that
    lowers the potential most. No host sync inside the loop: the draws go up, nothing comes
    back until the seeds are chosen."""
    n = points.shape[0]
    trials = 2 + int(math.log(k))
    x = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)).to(device)
    norms = (x * x).sum(dim=1)

    def squared(rows: torch.Tensor) -> torch.Tensor:
        d = norms[rows][:, None] + norms[None, :] - 2.0 * (x[rows] @ x.T)
        return d.clamp_min_(0.0)

    chosen = torch.empty(k, dtype=torch.int64, device=device)
    first = torch.tensor([int(rng.integers(n))], device=device)
    chosen[0] = first[0]
    closest = squared(first)[0]
    potential = closest.sum(dtype=torch.float64)
    for c in range(1, k):
        cumulative = torch.cumsum(closest, dim=0, dtype=torch.float64)
        draws = torch.from_numpy(rng.random(trials)).to(device) * potential
        candidates = torch.searchsorted(cumulative, draws).clamp_(max=n - 1)
        distances = torch.minimum(squared(candidates), closest[None, :])
        potentials = distances.sum(dim=1, dtype=torch.float64)
        best = torch.argmin(potentials)
        closest, potential = distances[best], potentials[best]
        chosen[c] = candidates[best]
    return x[chosen].cpu().numpy()
