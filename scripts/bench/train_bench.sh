#!/usr/bin/env bash
# LoRA training speed, ours vs PyTorch CPU (+ PEFT), in one invocation (BENCHMARKS.md "## Training").
#   scripts/bench/train_bench.sh [SEQ_LEN] [BATCH] [RANK]
# Same model (the GGUF, dequantized), sequence length, batch, LoRA rank on all seven projections,
# loss on each sequence's second half, forward + backward + AdamW, 2 threads each.
# OpenBLAS runs the kernels OPENBLAS_CORETYPE names, else its CPU's (run it with OPENBLAS_CORETYPE=SKYLAKEX
# and =HASWELL to see both paths on a Zen 4). Needs: a release build, and torch (the local CPU wheel), transformers, peft, gguf in .venv-ref
# (python3 -m venv .venv-ref && .venv-ref/bin/pip install torch transformers peft gguf safetensors).
set -euo pipefail
cd "$(dirname "$0")/../.."
SEQ=${1:-256}; BATCH=${2:-4}; RANK=${3:-16}; STEPS=${STEPS:-5}
BIN=${ALIGNERS_BIN:-$(swift build -c release --show-bin-path)/aligners}
ours=$("$BIN" train bench --seq-len "$SEQ" --batch "$BATCH" --rank "$RANK" --alpha $((2 * RANK)) --dropout 0 --steps "$STEPS" --threads 2)
theirs=$(.venv-ref/bin/python scripts/bench/train_peer.py --seq-len "$SEQ" --batch "$BATCH" --rank "$RANK" --steps "$STEPS" --threads 2 2>/dev/null | tail -1)
python3 - "$ours" "$theirs" <<'PY'
import json, sys
o, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"LoRA training, seq {o['seq_len']} x batch {o['batch']}, rank {o['rank']}, 2 threads, {cpu} (AVX-512 VNNI: {o['vnni']}; OpenBLAS kernels: {o['blas']})")
print(f"| {'':22} | {'tokens/s':>9} | {'s/step':>7} |")
print(f"|{'-'*24}|{'-'*11}|{'-'*9}|")
print(f"| {'aligners':22} | {o['tokens_per_s']:9.1f} | {o['step_s']:7.2f} |")
print(f"| {'PyTorch ' + t.get('torch', '') :22} | {t['tokens_per_s']:9.1f} | {t['step_s']:7.2f} |")
print(f"ratio: {o['tokens_per_s'] / t['tokens_per_s']:.2f}x PyTorch's tokens/s")
PY
