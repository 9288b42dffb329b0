#!/bin/bash
# Encoder / inspector throughput: ours (Swift, OpenBLAS) vs a PyTorch CPU peer, same invocation.
#   swift build -c release --product aligners
#   python3 -m venv .venv-ref && .venv-ref/bin/pip install numpy safetensors tokenizers /opt/wheels/torch-*+cpu-*.whl
#   scripts/bench-encoder.sh [BIN] [PYTHON]
set -euo pipefail
BIN=${1:-.build/release/aligners}
PY=${2:-.venv-ref/bin/python}
MODELS=${ALIGNERS_MODELS_DIR:-models}
ARGS="--lengths 128,256 --batches 1,32 --seconds ${SECONDS_PER:-4}"
ours=$(OPENBLAS_NUM_THREADS=2 "$BIN" eval encoder-speed --threads 2 --models-dir "$MODELS" $ARGS | tail -n +2)
peer=$(OMP_NUM_THREADS=2 "$PY" scripts/reference/encoder_bench_peer.py --threads 2 --models-dir "$MODELS" $ARGS)
echo "| length | batch | ours (samples/s) | torch $("$PY" -c 'import torch;print(torch.__version__)') CPU (samples/s) | ours / torch |"
echo "|---:|---:|---:|---:|---:|"
paste <(echo "$ours") <(echo "$peer") | awk -F'\t' '{printf "| %d | %d | %.1f | %.1f | %.2f |\n", $2, $3, $4, $8, $4/$8}'
