"""The IFD quality guard (issue #22) on real ShareGPT pairs, with and without planted noise.

    python -m benchmarks.bench_guard [--quick] [--n N] [--max-length L] [--work DIR]

(`car-engine bench --stage ifd` runs it too, in a full run only: bench_ifd adds its rows.)

The first ``n`` usable first-turn pairs of builtin:sharegpt, then the same pairs plus 10%
planted noise (car_engine.quality_guard.plant_noise: the robustness suite's random words at
1x and 2-3x the answer's length, loops, another instruction's answer). Each corpus goes
through `run --method ifd --ifd-frac 0.05` guarded (the default) and unguarded
(``--no-quality-guard``, the paper's rule), all runs sharing one score cache so each record
is scored once. Rows: the planted share of each planted-corpus selection (target: the
guarded one <= 1%), and the share of the unguarded clean selection the guarded one keeps
(target >= 95%); each also with the guard's relevance bound off (``--no-relevance-floor``),
and the clean one again on the pairs that open a conversation (``ID_0``: the later parts of a
ShareGPT conversation begin mid-way, often with a bare "continue", which the relevance bound
drops as it drops an answer pasted to the wrong prompt). Engine = guarded, reference =
unguarded; records/s is the whole run's throughput on the planted corpus (the guarded one
also runs the IQS and relevance stages), every row.
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


def _run(corpus: Path, out: Path, cache: Path, max_length: int, guard: bool,
         relevance_floor: bool = True) -> tuple[set[str], float, dict]:
    """(selected ids, seconds, summary) of one `run --method ifd`."""
    from car_engine.config import IFDParams, RunConfig
    from car_engine.pipeline import run

    cfg = RunConfig(method="ifd", ifd_frac=IFD_FRAC, ifd=IFDParams(max_length=max_length),
                    quality_guard=guard, relevance_floor=relevance_floor)
    start = time.perf_counter()
    run(str(corpus), out, cfg, progress=False, report=False, score_cache=cache)
    seconds = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    ids = {json.loads(line)["car_engine"]["id"]
           for line in (out / "selected.jsonl").read_text().splitlines()}
    return ids, seconds, summary


def opens_conversation(item: dict) -> bool:
    """Whether a ShareGPT record is the first part of its conversation (``ID_0``): the later
    parts (``ID_1``...) begin mid-conversation, often with a bare "continue"."""
    return item["id"].rsplit("_", 1)[-1] == "0"


# (run name, corpus, guard, relevance floor): unguarded first, it scores IFD; the guarded
# runs add only the IQS and relevance stages (IFD from the cache), and the clean corpora
# reuse all of it (their records are a subset of the planted corpus)
RUNS = (("planted_unguarded", "planted", False, True),
        ("planted_guarded", "planted", True, True),
        ("planted_no_relevance", "planted", True, False),
        ("clean_unguarded", "clean", False, True),
        ("clean_guarded", "clean", True, True),
        ("clean_no_relevance", "clean", True, False),
        ("openers_unguarded", "openers", False, True),
        ("openers_guarded", "openers", True, True))


def measure(n: int, max_length: int, work: Path) -> dict:
    """Every figure of the rows (see the module docstring)."""
    import pyarrow as pa

    from car_engine.quality_guard import plant_noise

    clean = pairs_items(n)
    items, planted = plant_noise(pa.Table.from_pylist(clean), PLANTED_SHARE)
    planted_set = set(planted)
    cache = work / "score-cache"
    corpora = {"planted": _write(work / "planted.jsonl", items),
               "clean": _write(work / "clean.jsonl", clean),
               "openers": _write(work / "openers.jsonl",
                                 [i for i in clean if opens_conversation(i)])}
    out: dict = {"pairs": len(clean), "planted": len(planted), "records": len(items),
                 "openers": sum(map(opens_conversation, clean))}
    for name, corpus, guard, relevance_floor in RUNS:
        ids, seconds, summary = _run(corpora[corpus], work / name, cache, max_length, guard,
                                     relevance_floor)
        out[name] = {"selected": len(ids), "planted": len(ids & planted_set),
                     "seconds": seconds, "ids": sorted(ids),
                     "below_floor": summary["counts"].get("below_quality_floor"),
                     "floors": summary["quality_guard"]}
    return out


def _kept(m: dict, guarded: str, unguarded: str) -> float:
    """The share of the unguarded selection the guarded one keeps."""
    ids = set(m[unguarded]["ids"])
    return len(set(m[guarded]["ids"]) & ids) / max(1, len(ids))


def run(quick: bool = False, n: int | None = None, max_length: int | None = None,
        work: str | None = None) -> list[dict]:
    """The rows, measured in a fresh (or the given) work folder."""
    n = n or (60 if quick else 400)
    max_length = max_length or (128 if quick else 256)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(work or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        m = measure(n, max_length, folder)
    u, records = m["planted_unguarded"], m["records"]
    # cost: unguarded = the IFD run; guarded = that plus the guarded run's own stages
    ifd_s = u["seconds"]
    guard_s = ifd_s + m["planted_guarded"]["seconds"]
    share_u = u["planted"] / max(1, u["selected"])
    rows = []
    for name, label in (("planted_guarded", "ifd-guard-planted"),
                        ("planted_no_relevance", "ifd-guard-planted-no-relevance")):
        g = m[name]
        share = g["planted"] / max(1, g["selected"])
        rows.append(row(label, records, guard_s, ifd_s,
                        check=f"planted share of the selection, guarded (unguarded "
                        f"{100 * share_u:.1f}%: {u['planted']}/{u['selected']}; "
                        f"{m['planted']} planted in {records})",
                        check_value=share, check_ok=share <= 0.01,
                        unguarded_planted=u["planted"], planted_picks=g["planted"]))
    for label, guarded, unguarded, pairs in (
            ("ifd-guard-clean", "clean_guarded", "clean_unguarded", m["pairs"]),
            ("ifd-guard-clean-no-relevance", "clean_no_relevance", "clean_unguarded",
             m["pairs"]),
            ("ifd-guard-openers", "openers_guarded", "openers_unguarded", m["openers"])):
        kept = _kept(m, guarded, unguarded)
        rows.append(row(label, pairs, guard_s * pairs / records, ifd_s * pairs / records,
                        check=f"share of the unguarded selection kept "
                        f"({m[guarded]['below_floor']} of {pairs} below a bound)",
                        check_value=kept, check_ok=kept >= 0.95,
                        unguarded_picks=len(m[unguarded]["ids"])))
    return rows


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
