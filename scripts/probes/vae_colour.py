"""Probe (issue 3): train only the tiny AutoencoderKL on the prepared images and report, every
100 steps, val MSE and the share of single-object val images whose reconstruction keeps the
object colour dominant. Run from the repo root after `dvc repro prepare`:
    .venv/bin/python scripts/probes/vae_colour.py --lr 3e-3 --steps 600
    .venv/bin/python scripts/probes/vae_colour.py --lr 3e-3 --steps 400 --floor 0.25
    .venv/bin/python scripts/probes/vae_colour.py --lr 3e-3 --steps 400 --floor 0.25 --ch 16,32 --channels-last
"""
import sys, time, argparse; sys.path.insert(0,'src')
import torch, numpy as np
from vlv import cards, data, pretrain, world
ap=argparse.ArgumentParser(); ap.add_argument('--lr',type=float,default=3e-3); ap.add_argument('--steps',type=int,default=600)
ap.add_argument('--batch',type=int,default=32); ap.add_argument('--loss',default='mse'); ap.add_argument('--ch',default='32,64')
ap.add_argument('--lpb',type=int,default=1); ap.add_argument('--lat',type=int,default=4)
ap.add_argument('--channels-last',action='store_true')  # conv weights NHWC (oneDNN's fast layout)
ap.add_argument('--floor',type=float,default=0.0)  # cosine decays to floor x lr (pretrain.vae.optim.min_lr_ratio)
a=ap.parse_args()
torch.manual_seed(0)
card=cards.load_card('t2i-tiny'); cfg=card['parts']['vae']['config']; cfg['block_out_channels']=[int(c) for c in a.ch.split(',')]; cfg['layers_per_block']=a.lpb; cfg['latent_channels']=a.lat
vae=cards.build(card,'vae')
if a.channels_last: vae=vae.to(memory_format=torch.channels_last)
ds=data.ShardDataset('data/prepared','images',captions=False)
N=len(ds)
val=data.ShardDataset('data/prepared','val',captions=True)
xv=torch.stack([val[i]['pixel_values'] for i in range(len(val))])
single=[i for i,c in enumerate(val.rows['caption']) if len(world.parse(c).objects)==1]
cols=[world.parse(val.rows['caption'][i]).objects[0].colour for i in single]
opt=torch.optim.AdamW(vae.parameters(),lr=a.lr,weight_decay=0.01)
sch=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1,(s+1)/20)*(a.floor+(1-a.floor)*0.5*(1+np.cos(np.pi*s/a.steps))))
g=torch.Generator().manual_seed(0); t0=time.time()
for step in range(1,a.steps+1):
    idx=torch.randint(0,N,(a.batch,),generator=g)
    x=torch.stack([ds[int(i)]['pixel_values'] for i in idx])
    d=vae.encode(x).latent_dist; r=vae.decode(d.sample()).sample
    rec=((r-x)**2).mean() if a.loss=='mse' else (r-x).abs().mean()
    loss=rec+1e-6*d.kl().mean()
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(vae.parameters(),1.0); opt.step(); sch.step()
    if step%100==0:
        with torch.no_grad():
            rv=vae.decode(vae.encode(xv).latent_dist.mean).sample.clamp(-1,1)
        ims=((rv+1)*127.5).round().clamp(0,255).byte().permute(0,2,3,1).numpy()
        rate=np.mean([pretrain.dominant_colour(ims[i])==c for i,c in zip(single,cols)])
        print(step, f"val mse {float(((rv-xv)**2).mean()):.4f} colour {rate:.2f} {(time.time()-t0)/step:.3f}s/step", flush=True)
