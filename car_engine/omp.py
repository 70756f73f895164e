"""OpenMP thread waiting policy, set before torch or FAISS load their OpenMP runtimes.

OpenMP threads spin while they wait by default. On a shared machine (CI, a busy workstation)
the spinning steals the very cores the working threads need: measured here with load ~9 on
2 cores, 20 one-text MiniLM forward passes took 29.5 s spinning vs 0.96 s passive, and a FAISS
Lloyd step was several times slower. Passive waiting costs nothing measurable on an idle machine.
"""

from __future__ import annotations

import os


def prefer_passive_waiting() -> None:
    """Default ``OMP_WAIT_POLICY`` to PASSIVE (a user's own setting wins). Only effective before
    the first OpenMP runtime is loaded, so call it before importing torch or faiss."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
