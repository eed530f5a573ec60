"""Probe (issue 3): train the teacher (CLIP text encoder + UNet) on cached latents of the
trained VAE in models/pretrained/t2i, with variants (--objw object-pixel loss weight, --xattn
both, --batch, --lr, --addtext HEADS: pooled caption added to the time embedding), then run pretrain.colour_check on the saved folder. From the repo root:
    .venv/bin/python scripts/probes/teacher_colour.py --steps 1200 --objw 4 --out /tmp/t2i_objw4
"""
import sys, time, json, argparse, copy
import numpy as np, torch
sys.path.insert(0, "src")
from vlv import cards, components, data, vocab, pretrain
ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=1500); ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--lr", type=float, default=2e-3); ap.add_argument("--xattn", default="low")
ap.add_argument("--objw", type=float, default=0.0); ap.add_argument("--high", type=float, default=0.5)
ap.add_argument("--ch", default="32,64"); ap.add_argument("--te_layers", type=int, default=2)
ap.add_argument("--pred", default="v_prediction"); ap.add_argument("--addtext", type=int, default=0); ap.add_argument("--freeze_te", type=int, default=0); ap.add_argument("--out", default="/tmp/probe/t2i")
a = ap.parse_args()
torch.manual_seed(0)
ds = data.ShardDataset("data/prepared", "images", captions=True)
N = len(ds)
px = torch.from_numpy(np.stack([ds.pixels(i) for i in range(N)])).permute(0,3,1,2).float().div(127.5).sub(1)
caps = list(ds._caption)
old = components.load_t2i("models/pretrained/t2i")
vae = old.vae.eval()
t0 = time.time()
with torch.no_grad():
    mu, sd = [], []
    for i in range(0, N, 512):
        d = vae.encode(px[i:i+512]).latent_dist; mu.append(d.mean); sd.append(d.std)
mu, sd = torch.cat(mu), torch.cat(sd)
print("cache", time.time()-t0, mu.shape, flush=True)
# object mask: pixel far from the image's background (mode of corners)
bg = px[:, :, 0, 0][:, :, None, None]
mask = ((px - bg).abs().amax(1, keepdim=True) > 0.1).float()
mask16 = torch.nn.functional.max_pool2d(mask, 2)
card = copy.deepcopy(cards.load_card("t2i-tiny"))
u = card["parts"]["unet"]["config"]
ch = [int(c) for c in a.ch.split(",")]; u["block_out_channels"] = ch
if len(ch) == 3:  # a third level (4x4), cross-attention at 8x8 and 4x4: zero padding tells a 4x4 map its cells apart
    u["down_block_types"] = ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    u["up_block_types"] = ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
if a.xattn == "both":
    u["down_block_types"] = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]; u["up_block_types"] = ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
card["parts"]["text_encoder"]["config"]["num_hidden_layers"] = a.te_layers
if a.addtext:  # pooled text -> time embedding: every ResNet block sees the caption (diffusers "text" addition)
    u["addition_embed_type"] = "text"; u["addition_embed_type_num_heads"] = a.addtext
card["parts"]["scheduler"]["config"]["prediction_type"] = a.pred
tok = old.tokenizer
parts = components.build_t2i(card, tok)
parts.vae = vae
te, unet, sch = parts.text_encoder, parts.unet, parts.scheduler
print("unet params", sum(p.numel() for p in unet.parameters())/1e6, flush=True)
ids_all = tok(caps, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
empty = tok([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
te.requires_grad_(not a.freeze_te)  # --freeze_te 1: a random, never-trained text encoder (does joint training collapse it?)
params = ([] if a.freeze_te else list(te.parameters())) + list(unet.parameters())
opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s+1)/50) * 0.5*(1+np.cos(np.pi*min(s, a.steps)/a.steps)))
scale = float(vae.config.scaling_factor)
g = torch.Generator().manual_seed(0)
t0 = time.time(); losses=[]
for step in range(a.steps):
    idx = torch.randint(0, N, (a.batch,), generator=g)
    z = (mu[idx] + sd[idx]*torch.randn(mu[idx].shape, generator=g)) * scale
    ids = ids_all[idx].clone()
    drop = torch.rand(a.batch, generator=g) < 0.1
    ids[drop] = empty
    n = 1000; hi = torch.rand(a.batch, generator=g) < a.high
    t = torch.where(hi, torch.randint(700, n, (a.batch,), generator=g), torch.randint(0, n, (a.batch,), generator=g))
    noise = torch.randn(z.shape, generator=g)
    noisy = sch.add_noise(z, noise, t)
    target = noise if a.pred == "epsilon" else sch.get_velocity(z, noise, t)
    cond = te(ids).last_hidden_state
    pred = unet(noisy, t, encoder_hidden_states=cond).sample
    w = 1 + a.objw * mask16[idx]
    loss = (((pred - target) ** 2) * w).mean() / w.mean()
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step(); sched.step()
    losses.append(loss.item())
    if step % 100 == 0: print(step, np.mean(losses[-100:]), f"{(time.time()-t0)/(step+1):.3f}s/step", flush=True)
print("train s", time.time()-t0, flush=True)
components.save_t2i(parts, a.out)
c = pretrain.colour_check(a.out, 60, 20, 4.0, 32, seed=1)
print("RESULT", json.dumps(vars(a)), "colour", c.rate, "bg", c.background_rate, "secs", time.time()-t0, flush=True)
from vlv import plots
plots.image_grid([list(c.images[i:i+8]) for i in range(0, 24, 8)], a.out + "_samples.png", title=f"{c.rate:.0%}")
