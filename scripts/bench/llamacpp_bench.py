#!/usr/bin/env python3
"""llama.cpp peer for scripts/bench/decoder_bench.sh (llama-cpp-python, low-level API).

Measures what `aligners generate-bench` measures, on the same GGUF: prompt processing of an
N-token prompt, single-stream greedy decode, and aggregate decode of B parallel sequences
(one llama_decode per step with one token per sequence; prefill excluded). Prints JSON.
"""
import argparse, ctypes, json, sys, time
import numpy as np
import llama_cpp as L

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--prompt-tokens", type=int, default=500)
ap.add_argument("--decode-tokens", type=int, default=128)
ap.add_argument("--batch-tokens", type=int, default=32)
ap.add_argument("--batches", default="8,32,64")
ap.add_argument("--repeats", type=int, default=3)
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()

L.llama_backend_init()
mp = L.llama_model_default_params()
model = L.llama_model_load_from_file(a.model.encode(), mp)
vocab = L.llama_model_get_vocab(model)
n_vocab = L.llama_vocab_n_tokens(vocab)

def make_ctx(n_ctx, n_seq):
    cp = L.llama_context_default_params()
    cp.n_ctx = n_ctx
    cp.n_batch = max(512, 24 * n_seq)
    cp.n_ubatch = 512
    cp.n_seq_max = n_seq
    cp.n_threads = a.threads
    cp.n_threads_batch = a.threads
    cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED  # flash_attn=True
    return L.llama_init_from_model(model, cp)

text = ("The quick brown fox jumps over the lazy dog near the river bank. " * (a.prompt_tokens // 10 + 2)).encode()
buf = (L.llama_token * 8192)()
n = L.llama_tokenize(vocab, text, len(text), buf, 8192, False, False)
base = list(buf[:n])
def tokens(k, salt):
    return [base[(i + salt * 7) % len(base)] for i in range(k)]

def decode(ctx, rows):
    """rows: list of (token, pos, seq, want_logits)"""
    b = L.llama_batch_init(len(rows), 0, 1)
    for i, (t, p, s, w) in enumerate(rows):
        b.token[i] = t; b.pos[i] = p; b.n_seq_id[i] = 1; b.seq_id[i][0] = s; b.logits[i] = w
    b.n_tokens = len(rows)
    rc = L.llama_decode(ctx, b)
    L.llama_batch_free(b)
    assert rc == 0, rc

def argmax_ith(ctx, i):
    p = L.llama_get_logits_ith(ctx, i)
    return int(np.argmax(np.ctypeslib.as_array(p, shape=(n_vocab,))))

res = {}
ctx = make_ctx(a.prompt_tokens + a.decode_tokens + 64, 1)
mem = L.llama_get_memory(ctx)
best = 0
for _ in range(a.repeats):
    L.llama_memory_clear(mem, True)
    toks = tokens(a.prompt_tokens, 0)
    t0 = time.perf_counter()
    decode(ctx, [(t, i, 0, i == len(toks) - 1) for i, t in enumerate(toks)])
    best = max(best, a.prompt_tokens / (time.perf_counter() - t0))
res["prompt_tps"] = best

best = 0
for _ in range(a.repeats):
    L.llama_memory_clear(mem, True)
    toks = tokens(16, 1)
    decode(ctx, [(t, i, 0, i == len(toks) - 1) for i, t in enumerate(toks)])
    nxt, pos = 0, 16
    t0 = time.perf_counter()
    for _ in range(a.decode_tokens):
        decode(ctx, [(nxt, pos, 0, True)]); pos += 1
        nxt = argmax_ith(ctx, 0)
    best = max(best, a.decode_tokens / (time.perf_counter() - t0))
res["decode_tps"] = best
L.llama_free(ctx)

for B in [int(x) for x in a.batches.split(",")]:
    ctx = make_ctx(B * (24 + a.batch_tokens + 8), B)
    best = 0
    for _ in range(max(1, a.repeats - 1)):
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        rows = []
        for s in range(B):
            toks = tokens(24, s + 3)
            rows += [(t, i, s, i == 23) for i, t in enumerate(toks)]
        decode(ctx, rows)
        nxt = [argmax_ith(ctx, 24 * s + 23) for s in range(B)]
        pos = 24
        t0 = time.perf_counter()
        for _ in range(a.batch_tokens - 1):
            decode(ctx, [(nxt[s], pos, s, True) for s in range(B)]); pos += 1
            nxt = [argmax_ith(ctx, s) for s in range(B)]
        best = max(best, B * (a.batch_tokens - 1) / (time.perf_counter() - t0))
    res[f"batch{B}_tps"] = best
    L.llama_free(ctx)
print(json.dumps(res, sort_keys=True))
