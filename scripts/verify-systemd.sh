#!/usr/bin/env bash
# verify-systemd.sh BINARY: checks the units in Systemd/ offline (systemd need not be PID 1).
#
#   1. systemd-analyze verify on every unit, templates instantiated (aligners-aligner@helpful-1 ...),
#      with ExecStart's /usr/local/bin/aligners rewritten to BINARY (verify checks that it exists).
#      Fails on a non-zero exit and on any diagnostic that names our units: systemd only warns
#      ("ignoring") on a misspelt key or a bad value, which would silently drop a sandbox setting.
#   2. Every ${VAR} / $VAR the units use is set in Systemd/aligners.env.
#   3. The aligner's instance-name split: helpful-1 -> --criterion helpful (run through /bin/sh);
#      the combined inspector's ExecStart gets ALIGNERS_INSPECTOR_CRITERIA, which names the router's
#      default criteria.
#   4. systemd-analyze security --offline=true: the exposure score of each unit (informational).
#   5. The README's enable example starts an inspector for every default criterion, and an aligner
#      for each whose aligner the router's default --acceptance-margins does not turn off.
#
# Exit 0: all good, or systemd-analyze absent (skipped, with a message). Exit 1: a check failed.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
units_dir=$here/Systemd
binary=${1:-}
if [ -z "$binary" ]; then
  echo "usage: $0 BINARY   (the built aligners executable, or any executable such as /bin/true)" >&2
  exit 64
fi
binary=$(realpath "$binary")
[ -x "$binary" ] || { echo "error: $binary is not executable" >&2; exit 1; }

if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "SKIP: systemd-analyze not found; systemd units not verified"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0

# Instances to check for each template (what README.md shows).
declare -A instances=(
  [aligners-inspector@.service]="1 2"
  [aligners-aligner@.service]="helpful helpful-1 harm-less-12"
  [aligners-generator@.service]="1"
)

targets=()
for unit in "$units_dir"/*.service "$units_dir"/*.target; do
  name=$(basename "$unit")
  sed "s#/usr/local/bin/aligners#$binary#g" "$unit" > "$work/$name"
  case $name in
    *@.service)
      for instance in ${instances[$name]:-test}; do
        ln -s "$name" "$work/${name%@.service}@$instance.service"
        targets+=("$work/${name%@.service}@$instance.service")
      done ;;
    *) targets+=("$work/$name") ;;
  esac
done

# 1. systemd-analyze verify
echo "== systemd-analyze verify ($(systemd-analyze --version | head -1)), ExecStart binary $binary"
set +e
output=$(cd "$work" && SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no "${targets[@]}" 2>&1)
rc=$?
set -e
if [ -n "$output" ]; then printf '%s\n' "$output" | sed 's/^/   /'; fi
if [ $rc -ne 0 ]; then
  echo "FAIL: systemd-analyze verify exited $rc"; failed=1
elif printf '%s\n' "$output" | grep -q 'aligners'; then
  echo "FAIL: systemd-analyze verify reported problems in our units (above)"; failed=1
else
  for t in "${targets[@]}"; do echo "   ok  $(basename "$t")"; done
fi

# 2. Environment variables used by the units are set in the example environment file.
echo "== variables in Systemd/aligners.env"
used=$(grep -h '^ExecStart=' "$units_dir"/*.service | grep -o '\$\$\?{\?ALIGNERS_[A-Z_]*' | tr -d '${' | sort -u)
for var in $used; do
  if grep -q "^$var=" "$units_dir/aligners.env"; then echo "   ok  $var"; else echo "FAIL: $var is not set in aligners.env"; failed=1; fi
done
bad=$(grep -vnE '^[[:space:]]*(#|$)|^[A-Z_][A-Z0-9_]*=' "$units_dir/aligners.env" || true)
if [ -n "$bad" ]; then echo "FAIL: lines in aligners.env that are not KEY=VALUE:"; echo "$bad"; failed=1; fi

# 3. The aligner's ExecStart, as systemd would run it: unescape $$ and %%, put in the instance,
#    and run it with a stand-in binary that prints its arguments.
echo "== aligners-aligner@ instance names"
cat > "$work/fake-aligners" <<'EOF'
#!/bin/sh
printf '%s|' "$@"
EOF
chmod +x "$work/fake-aligners"
line=$(grep '^ExecStart=' "$units_dir/aligners-aligner@.service" | sed 's/^ExecStart=//')
for case in helpful:helpful helpful-1:helpful helpful-12:helpful harm-less-3:harm-less; do
  instance=${case%%:*} want=${case#*:}
  cmd=${line//\$\$/\$}
  cmd=${cmd//%%/%}
  cmd=${cmd//%i/$instance}
  cmd=${cmd//\/usr\/local\/bin\/aligners/$work/fake-aligners}
  got=$(eval "env -i ALIGNERS_ROUTER=tcp://r:1 ALIGNERS_MODELS_DIR=/m CREDENTIALS_DIRECTORY=/c 'ALIGNERS_WORKER_OPTS=--a 1' $cmd")
  expected="worker|--role|aligner|--criterion|$want|--connect|tcp://r:1|--curve-server-key|/etc/aligners/curve/router.pub|--curve-key|/c/worker.key|--models-dir|/m|--a|1|"
  if [ "$got" = "$expected" ]; then echo "   ok  $instance -> --criterion $want"
  else echo "FAIL: $instance: got $got, expected $expected"; failed=1; fi
done

# 3b. The inspector (aligners-inspector@N) and the router, as systemd would run them with
#     aligners.env's ALIGNERS_CRITERIA, which must be the router's default --criteria (the squad the
#     README describes); both get the same list, so an inspector always scores every criterion.
echo "== ALIGNERS_CRITERIA for the router and aligners-inspector@"
criteria=$(sed -n 's/^ALIGNERS_CRITERIA=//p' "$units_dir/aligners.env")
run_unit() {  # unit instance: prints the arguments its ExecStart passes
  local line cmd
  line=$(grep '^ExecStart=' "$units_dir/$1" | sed 's/^ExecStart=//')
  cmd=${line//\$\$/\$}
  cmd=${cmd//%%/%}
  cmd=${cmd//%i/$2}
  cmd=${cmd//\/usr\/local\/bin\/aligners/$work/fake-aligners}
  (export ALIGNERS_ROUTER=tcp://r:1 ALIGNERS_MODELS_DIR=/m CREDENTIALS_DIRECTORY=/c ALIGNERS_CRITERIA="$criteria" \
          ALIGNERS_FRONTEND=tcp://f:1 ALIGNERS_BACKEND=tcp://b:1 ALIGNERS_TAP=tcp://t:1 ALIGNERS_WORKER_OPTS="--a 1" ALIGNERS_ROUTER_OPTS=""
   eval "$cmd")
}
got=$(run_unit aligners-inspector@.service 1)
expected="worker|--role|inspector|--criteria|$criteria|--connect|tcp://r:1|--curve-server-key|/etc/aligners/curve/router.pub|--curve-key|/c/worker.key|--models-dir|/m|--a|1|"
if [ "$got" = "$expected" ]; then echo "   ok  aligners-inspector@1: --criteria $criteria"
else echo "FAIL: aligners-inspector@1: got $got, expected $expected"; failed=1; fi
got=$(run_unit aligners-router.service "")
if [[ "$got" == "router|--criteria|$criteria|"* ]]; then echo "   ok  aligners-router: --criteria $criteria"
else echo "FAIL: aligners-router: got $got, expected it to start with router|--criteria|$criteria|"; failed=1; fi
router_defaults=$("$binary" router --help | tr -s ' \n' ' ' | sed -n 's/.*--criteria <criteria>[^(]*(default: \([a-z,]*\)).*/\1/p')
if [ -n "$router_defaults" ] && [ "$criteria" != "$router_defaults" ]; then
  echo "FAIL: ALIGNERS_CRITERIA=$criteria in aligners.env is not the router's default --criteria ($router_defaults)"; failed=1
fi

# 5. The unit set Systemd/README.md tells operators to enable serves every criterion the router runs
#    by default: an inspector and an aligner each (else every sample fails after the service timeout).
echo "== Systemd/README.md's enable example against the router's default criteria"
defaults=$("$binary" router --help | tr -s ' \n' ' ' | sed -n 's/.*--criteria <criteria>[^(]*(default: \([a-z,]*\)).*/\1/p')
units=$(sed -n '/^sudo systemctl enable aligners.target aligners-router.service/,/generator@1.service$/p' "$units_dir/README.md" \
        | tr -d '\\' | tr ' ' '\n' | grep '@' || true)
units=$(eval "echo $(echo $units)")
[ -n "$defaults" ] || { echo "FAIL: could not read the router's default criteria from --help"; failed=1; }
# Criteria whose aligner the router's default --acceptance-margins turns off need no aligner unit.
off=$("$binary" router --help | tr -s ' \n' ' ' | sed -n 's/.*--acceptance-margins <[a-z-]*>//p' | grep -o '(default: [^)]*)' \
      | head -1 | sed 's/(default: \(.*\))/\1/' | tr ',' '\n' | sed -n 's/^\([a-z-]*\)=off$/\1/p' | tr '\n' ' ')
if echo "$units" | tr ' ' '\n' | grep -Eq "^aligners-inspector@[0-9]+\.service$"; then echo "   ok  an inspector (it scores every criterion)"
else echo "FAIL: the README's enable example starts no aligners-inspector@N"; failed=1; fi
for c in ${defaults//,/ }; do
  if [[ " $off " == *" $c "* ]]; then echo "   --  no aligner needed for $c (off by default)"; continue; fi
  if echo "$units" | tr ' ' '\n' | grep -Eq "^aligners-aligner@$c(-[0-9]+)?\.service$"; then echo "   ok  aligner for $c"
  else echo "FAIL: the README's enable example starts no aligner for $c (router default criteria: $defaults)"; failed=1; fi
done

# 4. Exposure scores (informational; 0 = locked down, 10 = exposed).
echo "== systemd-analyze security --offline=true (informational)"
for t in "${targets[@]}"; do
  case $t in *.target) continue ;; esac
  (cd "$work" && systemd-analyze security --offline=true --no-pager "$t" 2>&1 | grep -a 'Overall exposure' | sed 's/^→ */   /') || true
done

if [ $failed -ne 0 ]; then echo "verify-systemd: FAILED"; exit 1; fi
echo "verify-systemd: all units ok"
