#!/usr/bin/env python3
"""Head variants on cached inspector features (the ethical study in BENCHMARKS.md).

Reads the feature cache that `aligners train inspector --views VIEWS --encode-only` writes
(.cache/inspectors/<criterion>.features) and fits, with torch on CPU, logistic / MLP heads with a
pointwise (BCE, label + sqrt source balancing as the Swift trainer) and/or pairwise (Bradley-Terry on
chosen-vs-rejected) loss, early-stopped on valid ROC-AUC. Prints train/valid ROC-AUC per source;
test only with --test. Exploration only: what ships is trained by `aligners train inspector`.

    .venv-ref/bin/python scripts/experiments/inspector_heads.py --views all-layers-mean \
        --config hidden=0,lr=2e-5,epochs=12 --config hidden=0,lr=2e-5,epochs=12,pair=1
"""
import argparse, json, struct, numpy as np, torch

M = (1 << 64) - 1
def key(s):  # FeatureCache.Key: two FNV-1a-64 streams
    a, b = 0xcbf29ce484222325, 0x84222325cbf29ce4
    for byte in s.encode():
        a = ((a ^ byte) * 0x100000001b3) & M
        b = (((b ^ byte) * 0x100000001b3) & M) ^ (b >> 29)
    return a, b

def load_cache(path):
    data, off, out = open(path, 'rb').read(), 0, {}
    while off + 20 <= len(data):
        a, b, n = struct.unpack_from('<QQI', data, off)
        if off + 20 + 4 * n > len(data): break
        out[(a, b)] = np.frombuffer(data, np.float32, n, off + 20); off += 20 + 4 * n
    return out

def views(name):
    segs = ['pair', 'x', 'y', 'response']
    if name == 'v1': return [f'{s}.6.mean' for s in segs]
    if name == 'all-layers-mean': return [f'{s}.{l}.mean' for l in range(7) for s in segs]
    return name.split(',')

def recipe(vs):
    return 'pair-segments+response@256/v1' if vs == views('v1') else 'views@256/v2:' + ','.join(vs)

def auc(s, y):
    r = np.empty(len(s)); r[np.argsort(s, kind='mergesort')] = np.arange(1, len(s) + 1)
    npos = y.sum(); return (r[y == 1].sum() - npos * (npos + 1) / 2) / (npos * (len(y) - npos))

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--criterion', default='ethical'); ap.add_argument('--data', default='../shared/data')
    ap.add_argument('--views', default='all-layers-mean'); ap.add_argument('--config', action='append', default=[])
    ap.add_argument('--test', action='store_true')
    a = ap.parse_args()
    vs = views(a.views); rec = recipe(vs)
    cache = load_cache(f'.cache/inspectors/{a.criterion}.features')
    rows = [json.loads(l) for l in open(f'{a.data}/{a.criterion}.jsonl') if l.strip()]
    X, y, src, split = [], [], [], []
    for r in rows:
        conv = r['conversation'] or [{'role': 'user', 'content': r['prompt']}]
        for resp, lab in ((r['chosen'], 1), (r['rejected'], 0)):  # pairs stay adjacent
            k = rec + '\x01' + ''.join(t['role'] + '\x02' + t['content'] + '\x03' for t in conv) + '\x01' + resp
            X.append(cache[key(k)]); y.append(lab); src.append(r['source']); split.append(r['split'])
    X, y, src, split = np.stack(X), np.array(y), np.array(src), np.array(split)
    h = 384; cols = [X]
    for other in ('y', 'response'):  # InspectorHead.transform
        for i, v in enumerate(vs):
            s_, l, p = v.split('.')
            if s_ == 'x' and f'{other}.{l}.{p}' in vs:
                j = vs.index(f'{other}.{l}.{p}'); cols.append(X[:, i*h:(i+1)*h] * X[:, j*h:(j+1)*h])
    X = np.concatenate(cols, 1)
    tr, va = split == 'train', split == 'valid'
    Z = torch.tensor((X - X[tr].mean(0)) / (X[tr].std(0) + 1e-6), dtype=torch.float32)
    w = np.ones(len(y), np.float32)
    for s in set(src):
        for lab in (0, 1):
            m = (src == s) & (y == lab) & tr; tot = ((src == s) & tr).sum(); w[m] = tot ** -0.5 * tot / (2 * m.sum())
    w = torch.tensor(w / w[tr].mean()); yt = torch.tensor(y, dtype=torch.float32)
    pairs = np.where(tr)[0].reshape(-1, 2)
    for cfg_text in a.config or ['hidden=0,lr=2e-5,epochs=12']:
        c = dict(hidden=0, lr=1e-4, wd=1e-2, epochs=20, point=1.0, pair=0.0, dropout=0.0, seed=0)
        c.update({k: float(v) for k, v in (kv.split('=') for kv in cfg_text.split(','))})
        torch.manual_seed(int(c['seed'])); d, H = Z.shape[1], int(c['hidden'])
        net = torch.nn.Linear(d, 1) if H == 0 else torch.nn.Sequential(
            torch.nn.Linear(d, H), torch.nn.ReLU(), torch.nn.Dropout(c['dropout']), torch.nn.Linear(H, 1))
        opt = torch.optim.AdamW(net.parameters(), lr=c['lr'], weight_decay=c['wd'])
        rng = np.random.default_rng(int(c['seed'])); best = (-1, None, 0)
        for ep in range(int(c['epochs'])):
            net.train()
            for p in np.array_split(rng.permutation(len(pairs)), max(1, len(pairs) // 32)):
                idx = torch.tensor(pairs[p].reshape(-1)); out = net(Z[idx]).squeeze(1); ww = w[idx]; loss = 0
                if c['point'] > 0:
                    bce = torch.nn.functional.binary_cross_entropy_with_logits(out, yt[idx], reduction='none')
                    loss = loss + c['point'] * (bce * ww).sum() / ww.sum()
                if c['pair'] > 0:
                    o = out.reshape(-1, 2); pw = ww.reshape(-1, 2).mean(1)
                    loss = loss + c['pair'] * (torch.nn.functional.softplus(o[:, 1] - o[:, 0]) * pw).sum() / pw.sum()
                opt.zero_grad(); loss.backward(); opt.step()
            net.eval()
            with torch.no_grad(): s = net(Z).squeeze(1).numpy()
            if auc(s[va], y[va]) > best[0] + 1e-4: best = (auc(s[va], y[va]), s, ep + 1)
        s = best[1]; out = []
        for sp in ['train', 'valid'] + (['test'] if a.test else []):
            m = split == sp
            out.append(f'{sp} {auc(s[m], y[m]):.3f} (' + ', '.join(f'{so} {auc(s[m & (src == so)], y[m & (src == so)]):.3f}' for so in sorted(set(src))) + ')')
        print(f'{a.views} [{d} dims] {cfg_text} epochs {best[2]}: ' + '; '.join(out), flush=True)

if __name__ == '__main__':
    main()
