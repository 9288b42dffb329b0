#!/usr/bin/env bash
# The default squad end to end (BENCHMARKS.md "The squad end to end"): samples/s and p50/p95 latency
# in one process and as separate processes with 1, 2 and 4 aligner workers per criterion, beside
# the cost of each stage measured alone in the same run.
#
#   scripts/bench/squad_bench.sh [ROWS_PER_SOURCE] [WORKER_COUNTS]      (default: 8 "1 2 4")
#
# Input: ROWS_PER_SOURCE test rows per source of ../shared/data/{ethical,factuality,helpful}.jsonl,
# each fed twice (its misaligned and its aligned answer), so ROWS_PER_SOURCE=8 gives 80 lines.
# Needs a release build (make release). Model loading is timed apart and left out of throughput.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${ALIGNERS:-.build/release/aligners}
rows=${1:-8}
counts=${2:-1 2 4}
data=${DATA_DIR:-../shared/data}
work=$(mktemp -d -t squad-bench.XXXX)
[ -x "$bin" ] || { echo "build first: make release (or set ALIGNERS=path/to/aligners)" >&2; exit 2; }
now() { date +%s.%N; }

"$bin" eval prepare --data "$data/ethical.jsonl" --data "$data/factuality.jsonl" --data "$data/helpful.jsonl" \
  --limit "$rows" > "$work/in.jsonl"
lines=$(wc -l < "$work/in.jsonl")
echo "input: $lines lines in $work/in.jsonl; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# Stage costs alone. Inspectors: the three heads over every line (one encoder pass).
t0=$(now); "$bin" score < /dev/null > /dev/null; t1=$(now)
"$bin" score < "$work/in.jsonl" > /dev/null; t2=$(now)
echo "inspectors_alone $(echo "$t2 - $t1 - ($t1 - $t0)" | bc)" > "$work/times"

# One process: model loading timed on empty input, then the run.
t0=$(now); "$bin" filter < /dev/null > /dev/null; t1=$(now)
"$bin" filter < "$work/in.jsonl" > "$work/inproc.jsonl"; t2=$(now)
echo "inproc $(echo "$t2 - $t1 - ($t1 - $t0)" | bc)" >> "$work/times"

# Separate processes over ipc: router, one inspector (all criteria), N aligners per criterion; timed once all are ready.
for n in $counts; do
  front="ipc://$work/front-$n" back="ipc://$work/back-$n"
  pids=()
  "$bin" router --frontend "$front" --backend "$back" 2> "$work/router-$n.log" & pids+=($!)
  "$bin" worker --role inspector --criteria ethical,factuality,helpful --connect "$back" 2> /dev/null & pids+=($!)
  expected=1
  for c in ethical factuality helpful; do
    for i in $(seq 1 "$n"); do
      "$bin" worker --role aligner --criterion "$c" --connect "$back" 2> /dev/null & pids+=($!); expected=$((expected + 1))
    done
  done
  until [ "$(grep -c 'worker ready' "$work/router-$n.log" || true)" -ge "$expected" ]; do sleep 0.5; done
  t1=$(now); "$bin" filter --connect "$front" < "$work/in.jsonl" > "$work/daemons-$n.jsonl"; t2=$(now)
  echo "daemons-$n $(echo "$t2 - $t1" | bc)" >> "$work/times"
  kill -TERM "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true
done

python3 - "$work" "$lines" $counts <<'PY'
import json, sys, statistics
work, lines, counts = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
times = dict(l.split() for l in open(f"{work}/times"))
def stats(name):
    recs = [json.loads(l) for l in open(f"{work}/{name}.jsonl")]
    lat = sorted(r["alignment"]["latency_ms"] for r in recs if "latency_ms" in r.get("alignment", {}))
    jobs = {}   # steps carry their job's time divided among its samples: (criterion, share) → samples
    for r in recs:
        for s in r.get("alignment", {}).get("steps", []):
            key = (s["criterion"], s["duration_ms"])
            jobs[key] = jobs.get(key, 0) + 1
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000 if lat else float("nan")
    ok = sum(1 for r in recs if "error" not in r)
    return len(recs), ok, pick(0.5), pick(0.95), sum(share * n for (_, share), n in jobs.items()) / 1000
ins = float(times["inspectors_alone"])
print(f"{lines} lines; inspectors alone (3 heads, one encoder pass): {ins:.1f} s = {lines / ins:.1f} samples/s\n")
print("| configuration | lines out (ok) | wall s | samples/s | p50 latency s | p95 latency s | aligner model time s | stage time ÷ wall |")
print("|---|---|---|---|---|---|---|---|")
for name, label in [("inproc", "one process (aligners filter)")] + [(f"daemons-{n}", f"separate processes, {n} aligner worker(s) per criterion") for n in counts]:
    n, ok, p50, p95, aligner_s = stats(name)
    wall = float(times[name])
    print(f"| {label} | {n} ({ok}) | {wall:.1f} | {lines / wall:.2f} | {p50:.1f} | {p95:.1f} | {aligner_s:.1f} | {(ins + aligner_s) / wall:.2f} |")
print("\nstage time ÷ wall = (inspectors alone + the aligner jobs' own model time) / wall time: 1.0 means the pipeline adds")
print("nothing to the stages' cost; above 1 the stages overlap (parallel workers); below 1 time goes to waiting and hand-offs.")
PY
