"""Cherry LLM's ``sample_middle_confidence_data`` (``cherry_seletion/data_by_cluster.py``)
restated literally, for the tests to hold :mod:`car_engine.select_pre` to on fixed labels.

Clusters are ``0 .. number of distinct labels - 1``, as the script assumes; it returns the
row indices per cluster, and the script writes them cluster after cluster.
"""

from __future__ import annotations

import numpy as np


def sample_middle(labels: np.ndarray, ppl: np.ndarray, n: int, low: float = 25,
                  high: float = 75) -> list[int]:
    """The rows the script picks, in the order it writes them."""
    num_clusters = len(np.unique(labels))
    by_cluster = {i: np.where(labels == i)[0] for i in range(num_clusters)}
    picked: dict[int, np.ndarray] = {}
    for i in range(num_clusters):
        members = by_cluster[i]
        if len(members) < n:
            picked[i] = members
            continue
        conf = ppl[members]
        lower = np.percentile(conf, low)
        upper = np.percentile(conf, high)
        middle = members[(conf >= lower) & (conf <= upper)]
        if len(middle) < n:
            picked[i] = middle
        else:
            step = len(middle) // n
            picked[i] = middle[::step][:n]
    return [int(r) for i in picked for r in picked[i].tolist()]
