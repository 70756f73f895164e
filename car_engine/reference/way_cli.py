"""The command line both whole-job references share (car_way, superfiltering_way): read a
JSONL corpus, run the way, write its picks and the seconds it spent in its own process as
JSON. The bench runs each as a fresh process, so start-up (imports, model loads) counts."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def way_main(doc: str, way: Callable[..., dict[str, Any]],
             options: dict[str, tuple[type, Any]]) -> None:
    """Parse ``corpus --out FILE`` plus ``options`` (keyword of ``way`` -> (type, default;
    None = required)), run ``way(items, **options)`` and write its picks to ``--out``."""
    start = time.perf_counter()
    parser = argparse.ArgumentParser(description=" ".join(doc.split("\n\n")[0].split()))
    parser.add_argument("corpus", type=Path)
    for name, (kind, default) in options.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default,
                            required=default is None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with open(args.corpus, encoding="utf-8") as f:
        items = [json.loads(line) for line in f if line.strip()]
    picks = way(items, **{name: getattr(args, name) for name in options})
    picks["seconds_in_process"] = time.perf_counter() - start
    args.out.write_text(json.dumps(picks))
