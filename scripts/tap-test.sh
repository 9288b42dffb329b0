#!/usr/bin/env bash
# tap-test.sh BUILD_DIR: proves the wire format is language-neutral. Builds the C tap
# (Examples/tap, protobuf-c + libzmq), starts a Swift router with --tap and test-double workers,
# pipes samples through `aligners filter --connect`, and checks that the C program decodes every
# envelope the Swift pipeline publishes.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=$(realpath "${1:-$here/.build/debug}")
make -s -C "$here/Examples/tap" >/dev/null
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

front=ipc://$work/front back=ipc://$work/back tap=ipc://$work/tap
"$build/aligners" router --frontend "$front" --backend "$back" --tap "$tap" --criteria ethical,helpful \
  --batch-size 8 --window-ms 10 --log-level warning 2>"$work/router.log" & pids+=($!)
for s in inspect.ethical inspect.helpful align.ethical align.helpful; do
  "$build/aligners-testworker" --service "$s" --connect "$back" 2>>"$work/workers.log" & pids+=($!)
done
n=40
"$here/Examples/tap/envelope-tap" -n $n -t 30 "$tap" >"$work/tap.out" 2>"$work/tap.err" & tap_pid=$!
sleep 0.5  # let the subscriber join before anything is published
for i in $(seq 1 $n); do
  m=""; [ $((i % 3)) -eq 0 ] && m="[bad:ethical]"
  printf '{"id":"t%d","prompt":"q%d","response":"a%d %s"}\n' "$i" "$i" "$i" "$m"
done | "$build/aligners" filter --connect "$front" --log-level warning >"$work/filter.out"
if ! wait $tap_pid; then
  echo "tap-test: the C tap did not receive $n envelopes" >&2
  cat "$work/tap.err" "$work/router.log" >&2
  exit 1
fi
got=$(grep -c '^envelope ' "$work/tap.out" || true)
lines=$(wc -l <"$work/filter.out")
fixed=$(grep -c 'fixed:ethical' "$work/tap.out" || true)
echo "tap-test: C tap decoded $got envelopes (filter wrote $lines lines; $fixed aligned)"
head -12 "$work/tap.out"
[ "$lines" -eq $n ] && [ "$fixed" -ge 1 ]
