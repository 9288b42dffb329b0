#!/usr/bin/env bash
# Runs the squad as separate processes (no systemd needed): a router, a generator, one inspector
# per criterion and N aligner workers per criterion, then pipes a JSONL file through them.
#
#   Examples/run-daemons.sh [INPUT.jsonl] [ALIGNERS_PER_CRITERION]     (default: Examples/chats.jsonl, 2)
#
# Output goes to stdout; each process logs to $LOG_DIR (default: a temporary folder, kept).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${ALIGNERS:-$here/.build/release/aligners}
input=${1:-$here/Examples/chats.jsonl}
n=${2:-2}
criteria=${CRITERIA:-ethical,factuality,helpful}
log_dir=${LOG_DIR:-$(mktemp -d -t aligners-daemons.XXXX)}
front=${FRONTEND:-tcp://127.0.0.1:5555}
back=${BACKEND:-tcp://127.0.0.1:5556}
[ -x "$bin" ] || { echo "build first: make release (or set ALIGNERS=path/to/aligners)" >&2; exit 2; }

pids=()
stop() {
  # SIGTERM drains; then make sure nothing we started lingers.
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT

"$bin" router --frontend "$front" --backend "$back" --criteria "$criteria" 2>"$log_dir/router.log" & pids+=($!)
"$bin" worker --role generator --connect "$back" 2>"$log_dir/generator.log" & pids+=($!)
"$bin" worker --role inspector --criteria "$criteria" --connect "$back" 2>"$log_dir/inspector.log" & pids+=($!)
for c in ${criteria//,/ }; do
  for i in $(seq 1 "$n"); do
    "$bin" worker --role aligner --criterion "$c" --connect "$back" 2>"$log_dir/aligner-$c-$i.log" & pids+=($!)
  done
done
echo "started router + generator + an inspector for ${criteria//,/ } + $n aligners each; logs in $log_dir" >&2
status=0
"$bin" filter --connect "$front" --summary <"$input" || status=$?
exit $status
