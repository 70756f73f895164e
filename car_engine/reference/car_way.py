"""The CaR way, whole, with the engine's models: what `car-engine bench --stage pipeline`
times `car-engine run --method car` against, as a process of its own (imports and model
loads counted, as a user of CaR's scripts pays them).

Eager fp32 IQS in batches of 16, one ``SentenceTransformer.encode`` per text, scikit-learn
``PCA(0.95)`` + ``KMeans(k-means++, n_init=10)`` with k = int(sqrt(n / 2)), then the top
``n1`` by score and the top ``n2`` of every cluster (SPEC §1, §3, §4).

    python -m car_engine.reference.car_way CORPUS.jsonl --n1 N1 --n2 N2 --out PICKS.json

``CORPUS.jsonl`` holds Alpaca items (``instruction``, ``input``, ``output``, ``id``); the
output names the ids of the top-n1 picks and of the whole selection.
"""

from __future__ import annotations

import math

from car_engine.reference.way_cli import way_main


def car_way(items: list[dict], n1: int, n2: int) -> dict:
    """Score, embed, cluster and select ``items`` the CaR way; the ids of the picks."""
    import numpy as np

    from car_engine.corpus.records import pair_text
    from car_engine.iqs.score import load_any
    from car_engine.models.registry import minilm_path
    from car_engine.reference.cluster import reference_cluster
    from car_engine.reference.embed import reference_embed, reference_encoder
    from car_engine.reference.iqs import reference_scores
    from car_engine.reference.select import topk, topk_per_cluster

    texts = [pair_text(i["instruction"], i.get("input") or "", i["output"]) for i in items]
    model, tokenizer = load_any("default")
    scores = np.asarray(reference_scores(model, tokenizer, texts, 16), dtype=np.float64)
    vectors = reference_embed(texts, reference_encoder(minilm_path()))
    labels = reference_cluster(vectors, max(1, int(math.sqrt(len(items) / 2)))).labels
    top = topk(scores, n1)
    picks = np.union1d(top, topk_per_cluster(scores, labels, n2))
    ids = [str(i["id"]) for i in items]
    return {"top_n1": [ids[r] for r in top], "selected": [ids[r] for r in picks]}


def main() -> None:
    """Command line: the CaR way over a JSONL corpus, its picks as JSON."""
    way_main(__doc__, car_way, {"n1": (int, None), "n2": (int, 1)})


if __name__ == "__main__":
    main()
