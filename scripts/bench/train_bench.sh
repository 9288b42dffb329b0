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
peer() { .venv-ref/bin/python scripts/bench/train_peer.py --seq-len "$SEQ" --batch "$BATCH" --rank "$RANK" --steps "$STEPS" --threads 2 2>/dev/null | tail -1; }
theirs=$(peer)
# When ours runs AVX2 kernels (an AVX2-only CPU's path, or OPENBLAS_CORETYPE=HASWELL on a newer one), also
# run the peer held to AVX2 (MKL, oneDNN and ATen), which is what it does on an AVX2-only CPU.
avx2='{}'
if echo "$ours" | grep -Eqi '"blas" *: *"(haswell|zen)'; then
  avx2=$(MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 peer)
fi
python3 - "$ours" "$theirs" "$avx2" <<'PY'
import json, sys
o, t, t2 = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"LoRA training, seq {o['seq_len']} x batch {o['batch']}, rank {o['rank']}, 2 threads, {cpu} (AVX-512 VNNI: {o['vnni']}; OpenBLAS kernels: {o['blas']})")
print(f"| {'':34} | {'tokens/s':>9} | {'s/step':>7} | {'ours / it':>9} |")
print(f"|{'-'*36}|{'-'*11}|{'-'*9}|{'-'*11}|")
print(f"| {'aligners':34} | {o['tokens_per_s']:9.1f} | {o['step_s']:7.2f} | {'':>9} |")
rows = [(t, "")] + ([(t2, ", held to AVX2")] if t2 else [])
for peer, note in rows:
    name = f"PyTorch {peer.get('torch', '')} ({peer.get('cpu_capability', '?')}{note})"
    print(f"| {name:34} | {peer['tokens_per_s']:9.1f} | {peer['step_s']:7.2f} | {o['tokens_per_s'] / peer['tokens_per_s']:8.2f}x |")
PY
