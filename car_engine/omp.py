"""How long idle OpenMP threads spin before sleeping; set before torch or FAISS load OpenMP.

libgomp's threads spin 300,000 times before they sleep. On a shared machine (CI, a busy
workstation) that spinning steals the cores the working threads need: with load ~9 on 2 cores,
20 one-text MiniLM forwards took 29.5 s at the default vs 0.96 s with no spinning
(``OMP_WAIT_POLICY=PASSIVE``). No spinning costs on a quiet machine instead: the packed
embedder's many short ops ran ~10% slower (bf16, 51 vs 56 texts/s), every op waking its
threads. A short spin keeps both: at 2,000 spins the quiet rate was 56 texts/s and, beside four
busy processes on the 2 cores, 20 one-text forwards took the passive time (2.55 vs 2.59 s;
5,000 spins: 3.07 s; 100,000: 11.2 s).
"""

from __future__ import annotations

import os

SPIN_COUNT = 2000


def limit_omp_spinning() -> None:
    """Default ``GOMP_SPINCOUNT`` to SPIN_COUNT unless the user set it or ``OMP_WAIT_POLICY``.
    Only effective before the first OpenMP runtime is loaded, so call it before importing torch
    or faiss."""
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", str(SPIN_COUNT))
