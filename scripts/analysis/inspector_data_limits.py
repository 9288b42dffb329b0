#!/usr/bin/env python3
"""What the inspector data allows, measured without our models (issue 12's targets).

1. Factuality: the best pooled test ROC-AUC any scorer can reach while disambiguated BBQ stays at
   chance. With a fraction f of the pairs disambiguated and everything else ranked perfectly, only the
   f^2 share of (good, bad) comparisons inside that source is left to chance: AUC <= 1 - f^2 (1 - a).
2. A model of a different kind on the same labels: TF-IDF (word 1-2-grams) + logistic regression on
   the answer alone, own pairs only, test ROC-AUC per source; and on ethical its learning curve
   (1/8 ... all of the train pairs, 3 draws each), which says how much more data would buy.
3. With --scores FILE (`aligners score` output for every valid/test answer, each line carrying
   "meta": {"id", "label"}): the shipped inspector, the lexical model, and the two blended by a
   logistic fit on valid, on test.

Needs numpy, scipy and scikit-learn (`.venv-ref/bin/pip install scikit-learn`). Data: ../shared/data.
Usage: .venv-ref/bin/python scripts/analysis/inspector_data_limits.py [--data DIR] [--scores FILE]
"""
import argparse, json, random
import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

ap = argparse.ArgumentParser()
ap.add_argument("--data", default="../shared/data")
ap.add_argument("--scores")
args = ap.parse_args()


def rows(criterion):
    return [json.loads(l) for l in open(f"{args.data}/{criterion}.jsonl")]


def source(r):
    return r["source"] + ("-" + r["context_condition"] if r.get("context_condition") else "")


def answers(rs):
    """Each pair as two answers: (text, label, source, id)."""
    return [(a, y, source(r), r["id"]) for r in rs for a, y in ((r["chosen"], 1), (r["rejected"], 0))]


def auc_by_source(items, scores):
    y = np.array([i[1] for i in items]); s = np.array(scores); src = np.array([i[2] for i in items])
    per = {str(k): round(roc_auc_score(y[src == k], s[src == k]), 3) for k in sorted(set(src))}
    return round(roc_auc_score(y, s), 3), per


def logit(p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def lexical(train):
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    model = LogisticRegression(C=1, max_iter=5000).fit(vec.fit_transform([a for a, *_ in train]), [y for _, y, *_ in train])
    return lambda items: model.decision_function(vec.transform([a for a, *_ in items]))


print("1. Factuality ceiling with disambiguated BBQ at chance")
fact = rows("factuality")
for split in ("valid", "test"):
    part = [r for r in fact if r["split"] == split]
    f = sum(source(r) == "bbq-disambig" for r in part) / len(part)
    print(f"   {split}: disambiguated share f = {f:.3f}; best pooled AUC = {1 - f * f / 2:.3f}; "
          f"0.92 needs disambiguated AUC >= {1 - 0.08 / (f * f):.3f}")

print("2. TF-IDF + logistic regression on the answer alone (test ROC-AUC)")
scorers = {}
for criterion in ("ethical", "factuality", "helpful"):
    rs = rows(criterion)
    score = lexical(answers([r for r in rs if r["split"] == "train"]))
    scorers[criterion] = score
    test = answers([r for r in rs if r["split"] == "test"])
    print(f"   {criterion}: {auc_by_source(test, score(test))}")
eth = rows("ethical")
train = [r for r in eth if r["split"] == "train"]
held = answers([r for r in eth if r["split"] != "train"])
print("   ethical learning curve (valid + test):")
for frac in (0.125, 0.25, 0.5, 1.0):
    aucs = []
    for seed in range(3):
        sub = random.Random(seed).sample(train, int(len(train) * frac))
        aucs.append(auc_by_source(held, lexical(answers(sub))(held))[0])
    print(f"     {len(sub):5d} train pairs: {np.mean(aucs):.3f}")

if args.scores:
    print("3. Shipped inspector, lexical model, and both blended (fit on valid), test ROC-AUC")
    shipped = {}
    for line in open(args.scores):
        s = json.loads(line)
        shipped[(s["meta"]["id"], s["meta"]["label"])] = s["scores"]
    for criterion in ("ethical", "factuality", "helpful"):
        rs = rows(criterion)
        parts = {sp: answers([r for r in rs if r["split"] == sp]) for sp in ("valid", "test")}
        feats = {sp: np.c_[logit(np.array([shipped[(i[3], i[1])][criterion] for i in items])), scorers[criterion](items)]
                 for sp, items in parts.items()}
        blend = LogisticRegression(C=1e4).fit(feats["valid"], [i[1] for i in parts["valid"]])
        test = parts["test"]
        print(f"   {criterion}: shipped {auc_by_source(test, feats['test'][:, 0])}")
        print(f"   {' ' * len(criterion)}  lexical {auc_by_source(test, feats['test'][:, 1])}")
        print(f"   {' ' * len(criterion)}  blend   {auc_by_source(test, blend.decision_function(feats['test']))}")
