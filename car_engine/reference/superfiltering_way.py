"""Superfiltering's way, whole, with the engine's causal LM: what `car-engine bench --stage
pipeline` times `car-engine run --method ifd` against, as a process of its own (imports and
model load counted).

``code_ifd/data_analysis.py`` at batch 1 (:func:`superfiltering_record`, fp32, template
``none``), then ``code_ifd/select_data.py``: drop IFD of 1 and above, keep the highest
``fraction`` of the items.

    python -m car_engine.reference.superfiltering_way CORPUS.jsonl --fraction F
        --max-length L --out PICKS.json
"""

from __future__ import annotations

from car_engine.reference.way_cli import way_main


def superfiltering_way(items: list[dict], fraction: float, max_length: int) -> dict:
    """IFD of every item, batch 1, and the ids of the top ``fraction`` with IFD < 1."""
    import torch

    from car_engine.models.registry import load_causal_lm
    from car_engine.reference.ifd_compat import superfiltering_record

    model, tokenizer = load_causal_lm("default", dtype="fp32")
    scored = []
    with torch.inference_mode():
        for i, item in enumerate(items):
            row = superfiltering_record(model, tokenizer, item["instruction"],
                                        item.get("input") or "", item["output"], max_length)
            if row["status"] == "ok" and row["ifd_ppl"] < 1:
                scored.append((-row["ifd_ppl"], i))
    scored.sort()  # highest IFD first, ties in input order
    count = int(len(items) * fraction)
    return {"selected": [str(items[i]["id"]) for _, i in scored[:count]]}


def main() -> None:
    """Command line: Superfiltering's scoring and selection over a JSONL corpus."""
    way_main(__doc__, superfiltering_way, {"fraction": (float, None), "max_length": (int, None)})


if __name__ == "__main__":
    main()
