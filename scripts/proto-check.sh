#!/usr/bin/env bash
# Fails when the committed Swift in Sources/AlignersSchema is stale against Schemas/.
# Regenerates into a temporary folder with the same protoc + protoc-gen-swift 1.39.0 and compares.
set -euo pipefail
cd "$(dirname "$0")/.."
plugin=${PROTOC_GEN_SWIFT:-.build-protoc/release/protoc-gen-swift}
if [ ! -x "$plugin" ]; then
  [ -d .build/checkouts/swift-protobuf ] || swift package resolve >/dev/null
  echo "building protoc-gen-swift 1.39.0 for the schema check (once, ~1-2 min)"
  swift build -c release --package-path .build/checkouts/swift-protobuf --scratch-path .build-protoc \
    --product protoc-gen-swift >/dev/null
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
protoc --plugin=protoc-gen-swift="$plugin" --swift_opt=Visibility=Public --swift_out="$tmp" \
  -ISchemas Schemas/aligners/v1/*.proto
if ! diff -r "$tmp" Sources/AlignersSchema >/dev/null; then
  echo "error: Sources/AlignersSchema is stale: Schemas/ changed without 'make proto'." >&2
  diff -r "$tmp" Sources/AlignersSchema | head -20 >&2
  exit 1
fi
echo "schema ok: generated Swift matches Schemas/"
