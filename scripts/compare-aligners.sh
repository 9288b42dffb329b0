#!/usr/bin/env bash
# Prompted against trained aligners, one criterion at a time, on the valid split (the split the
# shipped criteria were chosen on): the squad with that criterion alone, same lines, same judge.
#   scripts/compare-aligners.sh [LIMIT] [CRITERION ...]      (default: 20 rows per source; all three)
# Writes eval-valid/<criterion>-<kind>/ (report.md, results.json) and prints one table.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${ALIGNERS:-.build/release/aligners}
LIMIT=${1:-20}; shift || true
CRITERIA=("${@:-ethical factuality helpful}"); CRITERIA=(${CRITERIA[*]})
# The two variants of every criterion file: its aligner block as `prompted`, or `trained` with its adapter.
for kind in prompted trained; do
  mkdir -p ".cache/criteria-$kind"
  for f in Criteria/*.yaml; do
    python3 - "$f" "$kind" > ".cache/criteria-$kind/$(basename "$f")" <<'PY'
import re, sys
path, kind = sys.argv[1], sys.argv[2]
name = re.search(r"^name:\s*(\S+)", open(path).read(), re.M).group(1)
text = open(path).read().split("\naligner:")[0].rstrip("\n")
if kind == "trained":
    text += f"\n\naligner:\n  kind: trained\n  adapter: {__import__('os').getcwd()}/adapters/{name}\n"
else:
    text += "\n\naligner:\n  kind: prompted\n  model: default\n"
print(text)
PY
  done
done
for c in "${CRITERIA[@]}"; do
  for kind in prompted trained; do
    out="eval-valid/$c-$kind"
    [ -f "$out/results.json" ] && continue
    "$BIN" eval squad --data "../shared/data/$c.jsonl" --split valid --limit "$LIMIT" --criteria "$c" \
      --criteria-dir ".cache/criteria-$kind" --out "$out" --title "$c aligner ($kind), valid split" >&2
  done
done
python3 - "${CRITERIA[@]}" <<'PY'
import json, sys
print("| criterion | aligner | changed | judge: changed beats original | made worse | tax: good answers changed | own passing before → after |")
print("|---|---|---:|---:|---:|---:|---:|")
for c in sys.argv[1:]:
    for kind in ("prompted", "trained"):
        r = json.load(open(f"eval-valid/{c}-{kind}/results.json"))
        s = next(x for x in r["sets"] if x["set"] == c)
        j = s["judged"]
        rate = f"{j['wins'] / j['n']:.0%} ({j['wins']}–{j['losses']})" if j["n"] else "–"
        o = s["ownScores"]
        print(f"| {c} | {kind} | {j['n']} of {s['samples']} | {rate} | {j['losses']} | {s['taxChanged']} of {s['taxTotal']} "
              f"| {o['passingBefore']:.0%} → {o['passingAfter']:.0%} |")
PY
