#!/usr/bin/env bash
# The 1,000-line run (issue 5): real evaluation lines with bad lines mixed in, through the default
# squad in one process; checks that every input line yields exactly one output line, in order,
# that each evaluation line comes back once, and that every bad line became an error record.
# Then judges the run with `aligners eval report`.
#
#   scripts/run-1000.sh [OUT_DIR]        (default: eval-1000; needs make release and ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${ALIGNERS:-.build/release/aligners}
out=${1:-eval-1000}
data=${DATA_DIR:-../shared/data}
mkdir -p "$out"
# 960 evaluation lines: up to 100 test rows per source, each with its misaligned and its aligned
# answer (934 lines: TruthfulQA has 67 test rows), then AlpacaEval instructions up to 960; 40 bad lines.
"$bin" eval prepare --data "$data/ethical.jsonl" --data "$data/factuality.jsonl" --data "$data/helpful.jsonl" \
  --limit 100 > "$out/good.jsonl"
"$bin" eval prepare --instructions "$data/alpaca-eval-instructions.jsonl" \
  --instruction-limit $((960 - $(wc -l < "$out/good.jsonl"))) >> "$out/good.jsonl"
python3 - "$out" <<'PY'
import json, random, sys
out = sys.argv[1]
good = open(f"{out}/good.jsonl", "rb").read().splitlines()
bad = [b"{not json", b"", b"   ", b"[1, 2, 3]", b'{"prompt": 42}', b'{"messages": "hi"}', b'{"messages": []}',
       b'{"prompt": "", "response": ""}', b"\xff\xfe\x00binary", b'{"prompt": "x", "response": ' + b'"y' * 5 + b"}",
       b'{"messages": [{"role": "user"}]}', b'"just a string"', b"null", b'{"prompt": "\xc3\x28"}']
rng = random.Random(1000)
lines = [(l, "good") for l in good] + [(bad[i % len(bad)], "bad") for i in range(1000 - len(good))]
rng.shuffle(lines)
with open(f"{out}/input.jsonl", "wb") as f:
    for l, _ in lines: f.write(l + b"\n")
json.dump([k for _, k in lines], open(f"{out}/kinds.json", "w"))
PY
start=$(date +%s)
status=0
"$bin" filter --explain < "$out/input.jsonl" > "$out/aligned.jsonl" 2> "$out/filter.log" || status=$?
echo "filter exit status $status after $(( $(date +%s) - start )) s (1 = some lines were error records)" >&2
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
kinds = json.load(open(f"{out}/kinds.json"))
inputs = open(f"{out}/input.jsonl", "rb").read().split(b"\n")[:-1]
outputs = open(f"{out}/aligned.jsonl", "rb").read().split(b"\n")[:-1]
assert len(inputs) == 1000, len(inputs)
assert len(outputs) == len(inputs), f"{len(outputs)} output lines for {len(inputs)} input lines"
ids, errors, aligned = [], 0, 0
for n, (kind, i, o) in enumerate(zip(kinds, inputs, outputs), 1):
    rec = json.loads(o)
    if kind == "bad":
        assert "error" in rec and rec.get("line") == n, f"line {n}: bad input did not become its error record: {o[:200]}"
        errors += 1
    else:
        src = json.loads(i)
        assert rec.get("eval") == src["eval"], f"line {n}: output is not this line's sample"
        assert "error" not in rec, f"line {n}: {rec['error']}"
        ids.append((src["eval"]["id"], src["eval"]["input"]))
        aligned += any(s["changed"] for s in rec["alignment"]["steps"])
# Each output line is its own input line's sample (checked above), so every sample came out exactly
# once; the data itself repeats a few rows (same id and text), which are counted, not flagged.
repeats = len(ids) - len(set(ids))
print(f"1000 lines in, 1000 out, in order: {len(ids)} samples each exactly once ({aligned} changed by an aligner), "
      f"{errors} bad lines each one error record" + (f"; {repeats} samples repeat a data row" if repeats else ""))
PY
"$bin" eval report "$out/aligned.jsonl" --out "$out" --title "The 1,000-line run"
