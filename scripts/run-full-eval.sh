#!/usr/bin/env bash
# The whole evaluation (issue 5): every test row of ../shared/data (each fed with its misaligned
# and with its aligned answer) and all 722 AlpacaEval instructions, ~5,200 lines, through the
# default squad as separate processes (router, generator, three inspectors, one aligner per
# criterion). At 0.3–0.45 samples/s on 2 cores that is 3–5 hours, so the run is resumable: the
# input is split into shards of 100 lines, a shard's output is kept only once it is complete, and
# running the script again carries on with the first unfinished shard. When every shard is done
# it checks that each line came back exactly once and writes the report.
#
#   scripts/run-full-eval.sh [OUT_DIR]      (default: eval-full; needs make release and ../shared/data)
#   SHARDS=3 scripts/run-full-eval.sh       (stop after 3 more shards)
#   PARTIAL=1 scripts/run-full-eval.sh      (no new shards: report on the finished ones, in OUT_DIR/partial)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${ALIGNERS:-.build/release/aligners}
out=${1:-eval-full}
data=${DATA_DIR:-../shared/data}
max_shards=${SHARDS:-0}
front=${FRONTEND:-tcp://127.0.0.1:5565}
back=${BACKEND:-tcp://127.0.0.1:5566}
[ -x "$bin" ] || { echo "build first: make release (or set ALIGNERS=path/to/aligners)" >&2; exit 2; }
mkdir -p "$out/shards" "$out/logs"

if [ ! -f "$out/input.jsonl" ]; then
  { "$bin" eval prepare --data "$data/ethical.jsonl" --data "$data/factuality.jsonl" --data "$data/helpful.jsonl"
    "$bin" eval prepare --instructions "$data/alpaca-eval-instructions.jsonl"; } |
    # Shuffled (fixed seed) so that any prefix of the shards, and so a partial report, covers every set.
    python3 -c 'import random, sys; l = sys.stdin.buffer.readlines(); random.Random(5218).shuffle(l); sys.stdout.buffer.writelines(l)' \
    > "$out/input.tmp"
  split -l 100 -d -a 3 --additional-suffix=.in.jsonl "$out/input.tmp" "$out/shards/"
  mv "$out/input.tmp" "$out/input.jsonl"
fi
shards=("$out"/shards/*.in.jsonl)
todo=0
for s in "${shards[@]}"; do [ -f "${s%.in.jsonl}.out.jsonl" ] || todo=$((todo + 1)); done
echo "$(wc -l < "$out/input.jsonl") lines in ${#shards[@]} shards, $todo to go" >&2
if [ -n "${PARTIAL:-}" ]; then
  mkdir -p "$out/partial"
  cat "$out"/shards/*.out.jsonl > "$out/partial/aligned.jsonl"
  n=$(ls "$out"/shards/*.out.jsonl | wc -l)
  exec "$bin" eval report "$out/partial/aligned.jsonl" --out "$out/partial" \
    --title "The whole test splits and AlpacaEval: first $n of ${#shards[@]} shards"
fi

if [ "$todo" -gt 0 ]; then
  pids=()
  stop() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
  trap stop EXIT
  "$bin" router --frontend "$front" --backend "$back" 2>>"$out/logs/router.log" & pids+=($!)
  "$bin" worker --role generator --connect "$back" 2>>"$out/logs/generator.log" & pids+=($!)
  "$bin" worker --role inspector --criteria ethical,factuality,helpful --connect "$back" 2>>"$out/logs/inspector.log" & pids+=($!)
  for c in ethical factuality helpful; do
    "$bin" worker --role aligner --criterion "$c" --connect "$back" 2>>"$out/logs/aligner-$c.log" & pids+=($!)
  done
  done_now=0
  t0=$(date +%s)
  for s in "${shards[@]}"; do
    o=${s%.in.jsonl}.out.jsonl
    [ -f "$o" ] && continue
    status=0
    "$bin" filter --connect "$front" --explain < "$s" > "$o.tmp" 2>>"$out/logs/filter.log" || status=$?
    # Exit 1 means some lines became error records; anything else loses the shard (rerun it).
    if [ "$status" -gt 1 ] || [ "$(wc -l < "$o.tmp")" -ne "$(wc -l < "$s")" ]; then
      echo "shard $s: filter exit $status; will be redone on the next run" >&2; exit 3
    fi
    mv "$o.tmp" "$o"
    done_now=$((done_now + 1)); todo=$((todo - 1))
    el=$(( $(date +%s) - t0 ))
    echo "$(date +%H:%M) shard $(basename "$s" .in.jsonl) done; $todo to go, ~$(( el * todo / done_now / 60 )) min left" >&2
    [ "$max_shards" -gt 0 ] && [ "$done_now" -ge "$max_shards" ] && break
  done
  stop; trap - EXIT
fi
[ "$todo" -eq 0 ] || exit 0

cat "$out"/shards/*.out.jsonl > "$out/aligned.jsonl"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
inputs = open(f"{out}/input.jsonl", "rb").read().split(b"\n")[:-1]
outputs = open(f"{out}/aligned.jsonl", "rb").read().split(b"\n")[:-1]
assert len(outputs) == len(inputs), f"{len(outputs)} output lines for {len(inputs)} input lines"
failed = 0
for n, (i, o) in enumerate(zip(inputs, outputs), 1):
    rec = json.loads(o)
    assert rec.get("eval") == json.loads(i)["eval"], f"line {n}: output is not this line's sample"
    failed += "error" in rec
print(f"{len(inputs)} lines in, {len(outputs)} out, in order; {failed} error records")
PY
"$bin" eval report "$out/aligned.jsonl" --out "$out" --title "The whole test splits and AlpacaEval"
