#!/bin/bash
# Encoder / inspector throughput: ours (Swift, OpenBLAS) vs PyTorch CPU and onnxruntime CPU peers, same invocation.
#   swift build -c release --product aligners
#   python3 -m venv .venv-ref && .venv-ref/bin/pip install numpy safetensors tokenizers transformers onnxruntime onnx /opt/wheels/torch-*+cpu-*.whl
#   scripts/bench-encoder.sh [BIN] [PYTHON]
# The onnxruntime peer exports the model to .cache/onnx/ on its first run (and checks it against torch).
set -euo pipefail
BIN=${1:-.build/release/aligners}
PY=${2:-.venv-ref/bin/python}
MODELS=${ALIGNERS_MODELS_DIR:-models}
ARGS="--lengths 128,256 --batches 1,32 --seconds ${SECONDS_PER:-4}"
ours=$(OPENBLAS_NUM_THREADS=2 "$BIN" eval encoder-speed --threads 2 --models-dir "$MODELS" $ARGS | tail -n +2)
torch=$(OMP_NUM_THREADS=2 "$PY" scripts/reference/encoder_bench_peer.py --impl torch --threads 2 --models-dir "$MODELS" $ARGS)
ort=$(OMP_NUM_THREADS=2 "$PY" scripts/reference/encoder_bench_peer.py --impl onnxruntime --threads 2 --models-dir "$MODELS" $ARGS)
# With OpenBLAS forced to its AVX2 kernels on a newer CPU (this image sets OPENBLAS_CORETYPE=Haswell), ours runs
# what an AVX2-only CPU runs; torch is then also run held to AVX2 (MKL, oneDNN, ATen), as it would run there.
# onnxruntime has no such switch: it picks AVX-512 whenever the CPU has it.
torch2=""
case "${OPENBLAS_CORETYPE:-}" in
  [Hh][Aa][Ss][Ww][Ee][Ll][Ll]|[Zz][Ee][Nn])
    torch2=$(MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 OMP_NUM_THREADS=2 \
      "$PY" scripts/reference/encoder_bench_peer.py --impl torch --threads 2 --models-dir "$MODELS" $ARGS) ;;
esac
echo "samples/s, 2 threads; torch $("$PY" -c 'import torch;print(torch.__version__)') CPU, onnxruntime $("$PY" -c 'import onnxruntime;print(onnxruntime.__version__)') CPU; OpenBLAS kernels: ${OPENBLAS_CORETYPE:-as detected}"
echo
# One table; the "held to AVX2" columns only when torch ran that way.
avx2=$([ -n "$torch2" ] && echo 1 || echo 0)
if [ "$avx2" = 1 ]; then
  echo "| length | batch | ours | torch | torch held to AVX2 | onnxruntime (AVX-512 where the CPU has it) | ours / best peer | ours / torch AVX2 |"
  echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
else
  echo "| length | batch | ours | torch | onnxruntime | ours / best peer |"
  echo "|---:|---:|---:|---:|---:|---:|"
fi
paste <(echo "$ours") <(echo "$torch") <(echo "$ort") <(echo "$torch2") | awk -F'\t' -v avx2="$avx2" '
  $2 != $6 || $2 != $10 || $3 != $7 || $3 != $11 || (avx2 && ($2 != $14 || $3 != $15)) { print "row mismatch: " $0 > "/dev/stderr"; exit 1 }
  { best = $8 > $12 ? $8 : $12
    row = sprintf("| %d | %d | %.1f | %.1f |", $2, $3, $4, $8)
    if (avx2) row = row sprintf(" %.1f |", $16)
    row = row sprintf(" %.1f | %.2f |", $12, $4 / best)
    if (avx2) row = row sprintf(" %.2f |", $4 / $16)
    print row }'
