"""Cherry LLM's pre-experience sampling rule (SPEC §8), beside select.py's CaR and IFD rules.

In each cluster, the records whose instruction perplexity lies between the cluster's
``low``-th and ``high``-th percentiles (numpy's linear interpolation, bounds included); of
those, ``per_cluster`` spread evenly over input order (every ``len // per_cluster``-th, the
first ``per_cluster``). A cluster with fewer than ``per_cluster`` records gives all of them,
and one whose middle band holds fewer gives the whole band. Clusters come in label order,
records within one in input order, as ``data_by_cluster.py`` writes them.
"""

from __future__ import annotations

import numpy as np

from car_engine.config import PreParams
from car_engine.select import Selection

WHY_PRE = "selected: middle perplexity of its cluster (pre-experience)"
WHY_PRE_OUTSIDE = "not selected: not drawn from its cluster's middle perplexity band"
WHY_PRE_UNCLUSTERED = "not selected: no instruction vector to cluster"


def select_pre_experience(ppl: np.ndarray, labels: np.ndarray, *, per_cluster: int,
                          low: float, high: float) -> Selection:
    """The pre-experience subset over rows in input order (a negative label: no cluster)."""
    PreParams(per_cluster=per_cluster, low=low, high=high).check()
    ppl = np.asarray(ppl, dtype=np.float64)
    labels = np.asarray(labels)
    if labels.shape != ppl.shape:
        raise ValueError(f"{labels.shape[0]} labels for {ppl.shape[0]} perplexities")
    why = np.full(ppl.shape[0], WHY_PRE_OUTSIDE, dtype=object)
    why[labels < 0] = WHY_PRE_UNCLUSTERED
    picks = []
    clusters = np.unique(labels[labels >= 0])
    for cluster in clusters:
        rows = np.flatnonzero(labels == cluster)
        if rows.size >= per_cluster:
            values = ppl[rows]
            lower, upper = np.percentile(values, [low, high])
            rows = rows[(values >= lower) & (values <= upper)]
            if rows.size >= per_cluster:
                rows = rows[::rows.size // per_cluster][:per_cluster]
        picks.append(rows)
    order = np.concatenate(picks) if picks else np.empty(0, np.int64)
    why[order] = WHY_PRE
    counts = {"total": int(ppl.shape[0]), "clusters": int(clusters.size),
              "selected": int(order.size)}
    return Selection(order.astype(np.int64), ["pre-experience"] * order.size, why, counts)
