"""The IFD quality guard (issue #22) on real ShareGPT pairs, with and without planted noise.

    python -m benchmarks.bench_guard [--quick] [--n N] [--max-length L] [--work DIR]

(`car-engine bench --stage ifd` runs it too, in a full run only: bench_ifd adds its rows.)

The first ``n`` usable first-turn pairs of builtin:sharegpt, then the same pairs plus 10%
planted noise (car_engine.quality_guard.plant_noise: the robustness suite's random words at
1x and 2-3x the answer's length, loops, another instruction's answer). Each corpus goes
through `run --method ifd --ifd-frac 0.05` guarded (the default) and unguarded
(``--no-quality-guard``, the paper's rule), all four runs sharing one score cache so each
record is scored once. Rows: the planted share of each planted-corpus selection (target: the
guarded one <= 1%), and the share of the unguarded clean selection the guarded one keeps
(target >= 95%). Engine = guarded, reference = unguarded; records/s is the whole run's
throughput on the planted corpus (the guarded one also runs the IQS stage), both rows.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from .common import bench_parser, print_rows, row

IFD_FRAC = 0.05
PLANTED_SHARE = 0.1


def pairs_items(n: int) -> list[dict]:
    """The first ``n`` builtin:sharegpt records with a non-empty first answer, as
    single-turn items (id, instruction, input, output)."""
    from car_engine.corpus import load_corpus

    table = load_corpus("builtin:sharegpt", limit=2 * n + 50).records
    items = [{"id": r["id"], "instruction": r["instruction"], "input": r["input"],
              "output": r["output"]} for r in table.to_pylist()
             if r["output"].strip() and r["instruction"].strip()]
    return items[:n]


def _write(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def _run(corpus: Path, out: Path, cache: Path, max_length: int, guard: bool
         ) -> tuple[set[str], float, dict]:
    """(selected ids, seconds, summary) of one `run --method ifd`."""
    from car_engine.config import IFDParams, RunConfig
    from car_engine.pipeline import run

    cfg = RunConfig(method="ifd", ifd_frac=IFD_FRAC, ifd=IFDParams(max_length=max_length),
                    quality_guard=guard)
    start = time.perf_counter()
    run(str(corpus), out, cfg, progress=False, report=False, score_cache=cache)
    seconds = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    ids = {json.loads(line)["car_engine"]["id"]
           for line in (out / "selected.jsonl").read_text().splitlines()}
    return ids, seconds, summary


def measure(n: int, max_length: int, work: Path) -> dict:
    """Every figure of the two rows (see the module docstring)."""
    import pyarrow as pa

    from car_engine.quality_guard import plant_noise

    clean = pairs_items(n)
    items, planted = plant_noise(pa.Table.from_pylist(clean), PLANTED_SHARE)
    planted_set = set(planted)
    cache = work / "score-cache"
    noisy_file = _write(work / "planted.jsonl", items)
    clean_file = _write(work / "clean.jsonl", clean)
    out: dict = {"pairs": len(clean), "planted": len(planted), "records": len(items)}
    # unguarded first: it scores IFD; the guarded run then adds only the IQS stage (IFD from
    # the cache), and the clean runs reuse both (their records are a subset)
    for name, corpus in (("planted", noisy_file), ("clean", clean_file)):
        for guard in (False, True):
            ids, seconds, summary = _run(corpus, work / f"{name}-{int(guard)}", cache,
                                         max_length, guard)
            out[f"{name}_{'guarded' if guard else 'unguarded'}"] = {
                "selected": len(ids), "planted": len(ids & planted_set), "seconds": seconds,
                "ids": sorted(ids), "below_floor": summary["counts"].get("below_quality_floor"),
                "floors": summary["quality_guard"]}
    return out


def run(quick: bool = False, n: int | None = None, max_length: int | None = None,
        work: str | None = None) -> list[dict]:
    """The two rows, measured in a fresh (or the given) work folder."""
    n = n or (60 if quick else 400)
    max_length = max_length or (128 if quick else 256)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(work or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        m = measure(n, max_length, folder)
    g, u = m["planted_guarded"], m["planted_unguarded"]
    share_g = g["planted"] / max(1, g["selected"])
    share_u = u["planted"] / max(1, u["selected"])
    cg, cu = m["clean_guarded"], m["clean_unguarded"]
    kept = len(set(cg["ids"]) & set(cu["ids"])) / max(1, len(cu["ids"]))
    records = m["records"]
    # cost: unguarded = the IFD run; guarded = that plus the guarded run's IQS stage
    ifd_s, guard_s = u["seconds"], u["seconds"] + g["seconds"]
    return [
        row("ifd-guard-planted", records, guard_s, ifd_s,
            check=f"planted share of the selection, guarded (unguarded {100 * share_u:.1f}%: "
            f"{u['planted']}/{u['selected']}; {m['planted']} planted in {records})",
            check_value=share_g, check_ok=share_g <= 0.01, unguarded_planted=u["planted"]),
        row("ifd-guard-clean", m["pairs"], guard_s * m["pairs"] / records,
            ifd_s * m["pairs"] / records,
            check=f"share of the unguarded selection kept ({cg['below_floor']} of "
            f"{m['pairs']} below the floor)", check_value=kept, check_ok=kept >= 0.95),
    ]


def main() -> None:
    parser = bench_parser(__doc__, quick_help="60 pairs at 128 tokens",
                          n_help="ShareGPT pairs before the planted noise (default 400)")
    parser.add_argument("--max-length", type=int, default=None, help="IFD tokens (256)")
    parser.add_argument("--work", default=None, help="keep the runs in this folder")
    args = parser.parse_args()
    started = time.perf_counter()
    print_rows(run(args.quick, args.n, args.max_length, args.work), started)


if __name__ == "__main__":
    main()
