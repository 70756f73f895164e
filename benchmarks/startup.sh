#!/usr/bin/env bash
# Wall time of whole `car-engine --help` and `validate` processes: best and median of N runs.
# FIRST_BATCH=1 adds each scoring subcommand on one record: the time to its first batch
# (imports, model loads, one batch, the output written), as a user waits for it.
# OLD=/path/to/a/checkout adds the same commands run from that checkout's code (on PYTHONPATH;
# it needs its own built car_engine/_native*.so).
set -euo pipefail
N=${N:-5}
PY=${PY:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}
time_it() {  # label, command...
  local label=$1; shift
  local times=()
  for _ in $(seq "$N"); do
    local start end
    start=$(date +%s.%N); "$@" > /dev/null 2>&1; end=$(date +%s.%N)
    times+=("$(echo "$end - $start" | bc)")
  done
  printf '%s\n' "${times[@]}" | sort -n | awk -v l="$label" \
    '{t[NR]=$1} END {printf "%s: best %.2f s, median %.2f s\n", l, t[1], t[int((NR+1)/2)]}'
}
cd /tmp
for code in "" ${OLD:+"$OLD"}; do
  tag=${code:+" ($code)"}
  time_it "--help$tag" env ${code:+PYTHONPATH=$code} "$PY" -m car_engine.cli --help
  time_it "validate 2,000 items$tag" env ${code:+PYTHONPATH=$code} "$PY" -m car_engine.cli \
    validate builtin:sharegpt --limit 2000
done
if [ -n "${FIRST_BATCH:-}" ]; then
  work=$(mktemp -d)
  one=(builtin:sharegpt --limit 1)
  time_it "iqs score, 1 record" "$PY" -m car_engine.cli iqs score "${one[@]}" --out "$work/i.parquet"
  time_it "embed, 1 record" "$PY" -m car_engine.cli embed "${one[@]}" --out "$work/e.npy"
  time_it "ifd, 1 record" "$PY" -m car_engine.cli ifd "${one[@]}" --out "$work/f.parquet"
  # a fresh run folder each time (a second run in the same one would only resume)
  time_it "run --method car, 2 records" bash -c "rm -rf '$work/r'; '$PY' -m car_engine.cli run \
    builtin:sharegpt --limit 2 --n1 1 --k 1 --quiet --no-score-cache --out '$work/r'"
  time_it "run --method ifd, 2 records" bash -c "rm -rf '$work/r'; '$PY' -m car_engine.cli run \
    builtin:sharegpt --limit 2 --method ifd --quiet --no-score-cache --out '$work/r'"
  rm -rf "$work"
fi
