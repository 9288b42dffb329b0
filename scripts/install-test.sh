#!/usr/bin/env bash
# `make install` into a staging directory (DESTDIR), then the installed binary run the way the units
# run it: criteria, adapters, inspectors and models found where the install put them, nothing from
# the checkout. Part of `make test`.
#   scripts/install-test.sh BUILD_DIR        (e.g. .build/debug)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$1/aligners"
stage=$(mktemp -d -t aligners-install.XXXX)
trap 'rm -rf "$stage"' EXIT
make --no-print-directory install DESTDIR="$stage" INSTALL_BIN="$bin" > "$stage.log" 2>&1 || { cat "$stage.log"; exit 1; }
for f in usr/local/bin/aligners etc/aligners/aligners.env etc/aligners/criteria/ethical.yaml \
         etc/aligners/adapters/ethical/adapter_model.safetensors var/lib/aligners/inspectors/ethical.safetensors \
         etc/systemd/system/aligners-router.service etc/aligners/curve; do
  [ -e "$stage/$f" ] || { echo "install-test: $f was not installed" >&2; exit 1; }
done
# Run from an empty directory with the checkout out of reach of the search paths' relative entries.
cd "$stage"
export ALIGNERS_CRITERIA_DIR="$stage/etc/aligners/criteria" ALIGNERS_INSPECTORS_DIR="$stage/var/lib/aligners/inspectors" \
       ALIGNERS_MODELS_DIR="$stage/var/lib/aligners/models"
line='{"id":"t","prompt":"How do I boil an egg?","response":"Put it in boiling water for 9 minutes, then cool it in cold water."}'
out=$(echo "$line" | "$stage/usr/local/bin/aligners" filter --criteria ethical,factuality,helpful)
echo "$out" | python3 -c 'import json,sys; j=json.loads(sys.stdin.read()); assert j["id"]=="t" and "alignment" in j, j; print("install-test: the installed binary aligned a line with the installed models")'
