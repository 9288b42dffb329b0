#!/usr/bin/env bash
# Trains the shipped aligners (adapters/<criterion>/) with the settings their cards record, one
# after another; rerunning continues where a run stopped (--resume from adapters/<c>/checkpoint).
#   scripts/train-aligners.sh [CRITERION ...]      (default: ethical factuality helpful)
# Needs a release build (make release). Takes about 30-45 min per criterion on 2 Zen 4 cores
# (BENCHMARKS.md "Training"); run it under nohup. Logs go to train-<criterion>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${ALIGNERS:-.build/release/aligners}
DATA=${DATA:-../shared/data}
common=(--lr 3e-4 --warmup 10 --valid-examples 96)
# OpenBLAS's AVX-512 kernels where the CPU has them (this machine image sets OPENBLAS_CORETYPE=Haswell
# for everything; training ran 1.6x faster with SkylakeX on Zen 4, BENCHMARKS.md "Training").
if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then export OPENBLAS_CORETYPE=${TRAIN_OPENBLAS_CORETYPE:-SKYLAKEX}; fi
for c in "${@:-ethical factuality helpful}"; do
  for criterion in $c; do
    case $criterion in
      ethical)    args=(--sources pku-saferlhf --noop-data "$DATA/factuality.jsonl" "$DATA/helpful.jsonl" --epochs 1) ;;
      factuality) args=(--max-per-source 1600 --noop-data "$DATA/ethical.jsonl" "$DATA/helpful.jsonl" --epochs 1.5) ;;
      helpful)    args=(--max-per-source 800 --noop-data "$DATA/ethical.jsonl" "$DATA/factuality.jsonl" --epochs 1) ;;
      *) echo "unknown criterion $criterion" >&2; exit 2 ;;
    esac
    resume=()
    [ -f "adapters/$criterion/checkpoint/state.safetensors" ] && resume=(--resume)
    "$BIN" train aligner --criterion "$criterion" --data "$DATA/$criterion.jsonl" "${args[@]}" "${common[@]}" \
      --out "adapters/$criterion" "${resume[@]}" >> "train-$criterion.log" 2>&1
  done
done
