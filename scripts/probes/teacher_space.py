"""Probe (issue 3): does the teacher learn colour when the latent space is lossless? Trains the
tiny CLIP text encoder + UNet of the t2i-tiny card either on the trained VAE's latents
(--space vae, models/pretrained/t2i) or on a fixed lossless 2x2 space-to-depth of the pixels
(--space s2d, 12x16x16: the DESIGN prototype's space), then samples 60 single-object prompts
(DDIM 20 steps, CFG 4) and reports the share whose dominant object colour is the prompted one.
From the repo root after `dvc repro pretrain`:
    .venv/bin/python scripts/probes/teacher_space.py --space s2d --steps 1500
"""
import sys, time, argparse, copy
import numpy as np, torch
import torch.nn.functional as F
sys.path.insert(0, "src")
from vlv import cards, components, data, pretrain, world, plots
ap = argparse.ArgumentParser()
ap.add_argument("--space", default="s2d"); ap.add_argument("--steps", type=int, default=1500)
ap.add_argument("--batch", type=int, default=16); ap.add_argument("--lr", type=float, default=2e-3)
ap.add_argument("--high", type=float, default=0.5); ap.add_argument("--pred", default="v_prediction")
ap.add_argument("--te", default="joint"); ap.add_argument("--clip_steps", type=int, default=600); ap.add_argument("--clip_batch", type=int, default=128)
ap.add_argument("--seed", type=int, default=0); ap.add_argument("--png", default="/tmp/probe/teacher_space.png")
a = ap.parse_args()
torch.manual_seed(a.seed)
ds = data.ShardDataset("data/prepared", "images", captions=True)
N = len(ds)
px = torch.from_numpy(np.stack([ds.pixels(i) for i in range(N)])).permute(0, 3, 1, 2).float().div(127.5).sub(1)
caps = list(ds._caption)
old = components.load_t2i("models/pretrained/t2i")
tok, vae = old.tokenizer, old.vae.eval()
card = copy.deepcopy(cards.load_card("t2i-tiny"))
u = card["parts"]["unet"]["config"]
if a.space == "s2d":
    z_all = F.pixel_unshuffle(px, 2)
    scale = float(1 / z_all.std()); sd_all = None
    u["in_channels"] = u["out_channels"] = 12
    decode = lambda z: F.pixel_shuffle(z / scale, 2)
else:
    with torch.no_grad():
        mu, sd = [], []
        for i in range(0, N, 512):
            d = vae.encode(px[i:i + 512]).latent_dist; mu.append(d.mean); sd.append(d.std)
    z_all, sd_all = torch.cat(mu), torch.cat(sd)
    scale = float(vae.config.scaling_factor)
    decode = lambda z: vae.decode(z / scale).sample
card["parts"]["scheduler"]["config"]["prediction_type"] = a.pred
parts = components.build_t2i(card, tok)
te, unet, sch = parts.text_encoder, parts.unet, parts.scheduler
ids_all = tok(caps, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
empty = tok([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
g = torch.Generator().manual_seed(a.seed)
if a.te == "contrastive":  # CLIP-style: text encoder pretrained against a tiny ViT on (image, caption), then frozen
    from transformers import CLIPConfig, CLIPModel
    tcfg = te.config.to_dict()
    vcfg = dict(image_size=32, patch_size=4, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, projection_dim=128)
    clip = CLIPModel(CLIPConfig(text_config=tcfg, vision_config=vcfg, projection_dim=128))
    copt = torch.optim.AdamW(clip.parameters(), lr=1e-3, weight_decay=0.01)
    csched = torch.optim.lr_scheduler.LambdaLR(copt, lambda s: min(1, (s + 1) / 30) * 0.5 * (1 + np.cos(np.pi * min(s, a.clip_steps) / a.clip_steps)))
    t0 = time.time(); acc = []
    for step in range(a.clip_steps):
        idx = torch.randperm(N, generator=g)[: a.clip_batch]
        out = clip(input_ids=ids_all[idx], pixel_values=px[idx], return_loss=True)
        copt.zero_grad(); out.loss.backward(); torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0); copt.step(); csched.step()
        acc.append(float((out.logits_per_text.argmax(1) == torch.arange(len(idx))).float().mean()))
        if step % 100 == 0 or step == a.clip_steps - 1:
            print("clip", step, round(out.loss.item(), 3), "in-batch text->image acc", round(float(np.mean(acc[-50:])), 3), f"{(time.time() - t0) / (step + 1):.3f}s/step", flush=True)
    te.load_state_dict(clip.text_model.state_dict())
    te.requires_grad_(False)
params = [p for p in te.parameters() if p.requires_grad] + list(unet.parameters())
opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / 50) * 0.5 * (1 + np.cos(np.pi * min(s, a.steps) / a.steps)))
t0 = time.time(); losses = []
for step in range(a.steps):
    idx = torch.randint(0, N, (a.batch,), generator=g)
    z = z_all[idx] * scale if sd_all is None else (z_all[idx] + sd_all[idx] * torch.randn(z_all[idx].shape, generator=g)) * scale
    ids = ids_all[idx].clone(); ids[torch.rand(a.batch, generator=g) < 0.1] = empty
    hi = torch.rand(a.batch, generator=g) < a.high
    t = torch.where(hi, torch.randint(700, 1000, (a.batch,), generator=g), torch.randint(0, 1000, (a.batch,), generator=g))
    noise = torch.randn(z.shape, generator=g)
    target = noise if a.pred == "epsilon" else sch.get_velocity(z, noise, t)
    pred = unet(sch.add_noise(z, noise, t), t, encoder_hidden_states=te(ids).last_hidden_state).sample
    loss = F.mse_loss(pred, target)
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step(); sched.step()
    losses.append(loss.item())
    if step % 250 == 0: print(step, round(float(np.mean(losses[-250:])), 4), f"{(time.time() - t0) / (step + 1):.3f}s/step", flush=True)
print("train s", round(time.time() - t0, 1), flush=True)
# sample: DDIM 20 steps, CFG 4, the colour check's prompts
from diffusers import DDIMScheduler
ddim = DDIMScheduler.from_config(sch.config); ddim.set_timesteps(20)
attrs = pretrain.single_object_prompts(60, 1234, 32)
prompts = [world.caption(x) for x in attrs]
te.eval(); unet.eval()
with torch.no_grad():
    cond = te(tok(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids).last_hidden_state
    unc = te(empty.repeat(len(prompts), 1)).last_hidden_state
    x = torch.randn((len(prompts),) + tuple(z_all.shape[1:]), generator=torch.Generator().manual_seed(1234))
    for t in ddim.timesteps:
        tt = torch.full((len(prompts),), int(t))
        e = unet(torch.cat([x, x]), torch.cat([tt, tt]), encoder_hidden_states=torch.cat([unc, cond])).sample
        eu, ec = e.chunk(2)
        x = ddim.step(eu + 4.0 * (ec - eu), t, x).prev_sample
    img = decode(x).clamp(-1, 1)
u8 = plots.to_uint8(img)
pred_c = [pretrain.dominant_colour(im) for im in u8]
rate = np.mean([p == x.objects[0].colour for p, x in zip(pred_c, attrs)])
bg = np.mean([pretrain.dominant_background(im) == x.background for im, x in zip(u8, attrs)])
print(f"space {a.space} steps {a.steps} batch {a.batch}: colour {rate:.3f} (chance 0.167) background {bg:.3f}; predicted {pred_c[:12]}")
plots.image_grid([list(u8[i:i + 10]) for i in range(0, 40, 10)], a.png)
