#!/usr/bin/env python3
"""Lower a PEFT LoRA adapter's rank by SVD of each module's update (alpha/r)·B·A, keeping the top
singular directions and the same scale. Used to fit adapters/factuality (trained at rank 16, 9.4 MB)
under the repository's 5 MB limit for artifacts; its card gives the before/after measurements.

    .venv-ref/bin/python scripts/truncate_adapter_rank.py IN_DIR OUT_DIR RANK
"""
import json, os, shutil, sys
import numpy as np
from safetensors.numpy import load_file, save_file

src, dst, rank = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = json.load(open(os.path.join(src, "adapter_config.json")))
scale = cfg["lora_alpha"] / cfg["r"]
tensors = load_file(os.path.join(src, "adapter_model.safetensors"))
out, kept = {}, []
for name in tensors:
    if not name.endswith("lora_A.weight"):
        continue
    b_name = name.replace("lora_A", "lora_B")
    a, b = tensors[name].astype(np.float64), tensors[b_name].astype(np.float64)   # [r, in], [out, r]
    qb, rb = np.linalg.qr(b)            # B = Qb Rb
    qa, ra = np.linalg.qr(a.T)          # Aᵀ = Qa Ra
    u, s, vt = np.linalg.svd(rb @ ra.T)  # B A = Qb (u s vt) Qaᵀ
    root = np.sqrt(s[:rank])
    out[b_name] = ((qb @ u[:, :rank]) * root).astype(np.float16)
    out[name] = ((root[:, None] * vt[:rank]) @ qa.T).astype(np.float16)
    kept.append(float((s[:rank] ** 2).sum() / max((s ** 2).sum(), 1e-30)))
os.makedirs(dst, exist_ok=True)
save_file(out, os.path.join(dst, "adapter_model.safetensors"))
cfg["r"], cfg["lora_alpha"] = rank, scale * rank  # same alpha/r: the update is B'A' ≈ BA
json.dump(cfg, open(os.path.join(dst, "adapter_config.json"), "w"), indent=2)
print(f"{len(kept)} modules, rank {rank}: energy kept min {min(kept):.4f}, mean {np.mean(kept):.4f}")
