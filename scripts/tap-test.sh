#!/usr/bin/env bash
# tap-test.sh BUILD_DIR: proves the wire format is language-neutral. Builds the C tap
# (Examples/tap, protobuf-c + libzmq), starts a Swift router with --tap and test-double workers,
# pipes samples through `aligners filter --connect`, and checks that the C program decodes every
# envelope the Swift pipeline publishes. Then the same over tcp with CURVE: the C tap reads with an
# allowlisted key, and one with an unknown key is refused and says so.
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
for s in inspect align.ethical align.helpful; do
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
[ "$lines" -eq $n ] && [ "$fixed" -ge 1 ] || exit 1
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()

# CURVE over tcp on loopback: keys for the router, the workers, a client and a stranger.
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
front=tcp://127.0.0.1:$(port) back=tcp://127.0.0.1:$(port) tap=tcp://127.0.0.1:$(port)
keys=$work/keys
for name in router worker client stranger; do "$build/aligners" keys generate --out "$keys" --name $name >/dev/null; done
cat "$keys/worker.pub" >"$work/workers.allow"
cat "$keys/client.pub" >"$work/clients.allow"
"$build/aligners" router --frontend "$front" --backend "$back" --tap "$tap" --criteria ethical,helpful \
  --batch-size 8 --window-ms 10 --log-level warning --curve-secret-key "$keys/router.key" \
  --allow-clients "$work/clients.allow" --allow-workers "$work/workers.allow" 2>"$work/router-curve.log" & pids+=($!)
for s in inspect align.ethical align.helpful; do
  "$build/aligners-testworker" --service "$s" --connect "$back" --curve-server-key "$keys/router.pub" \
    --curve-key "$keys/worker.key" 2>>"$work/workers-curve.log" & pids+=($!)
done
"$here/Examples/tap/envelope-tap" -n $n -t 30 -s "$keys/router.pub" -k "$keys/client.key" "$tap" \
  >"$work/tap-curve.out" 2>"$work/tap-curve.err" & tap_pid=$!
set +e
"$here/Examples/tap/envelope-tap" -n 1 -t 30 -s "$keys/router.pub" -k "$keys/stranger.key" "$tap" \
  >/dev/null 2>"$work/tap-stranger.err"
stranger=$?
set -e
sleep 0.5  # let the subscriber join before anything is published
for i in $(seq 1 $n); do
  m=""; [ $((i % 3)) -eq 0 ] && m="[bad:ethical]"
  printf '{"id":"t%d","prompt":"q%d","response":"a%d %s"}\n' "$i" "$i" "$i" "$m"
done | "$build/aligners" filter --connect "$front" --curve-server-key "$keys/router.pub" --curve-key "$keys/client.key" \
  --log-level warning >"$work/filter-curve.out"
if ! wait $tap_pid; then
  echo "tap-test: the C tap did not receive $n envelopes over CURVE" >&2
  cat "$work/tap-curve.err" "$work/router-curve.log" >&2
  exit 1
fi
got=$(grep -c '^envelope ' "$work/tap-curve.out" || true)
echo "tap-test: over CURVE the C tap decoded $got envelopes; a stranger's key: exit $stranger, $(tail -1 "$work/tap-stranger.err")"
[ "$got" -eq $n ] && [ "$stranger" -eq 1 ] && grep -q 'refused our CURVE key' "$work/tap-stranger.err"
