"""Probe (issue 3): does the committed VAE (models/pretrained/t2i/vae) keep object colours? Encodes
the single-object val images (posterior mean), decodes them, and counts per colour how often the
reconstruction's dominant object colour (nearest spec colour, pretrain.dominant_colour) is the
true one. From the repo root after `dvc repro pretrain`:
    .venv/bin/python scripts/probes/vae_recon_colour.py
"""
import sys; sys.path.insert(0, "src")
import collections
import numpy as np, torch
from diffusers import AutoencoderKL
from vlv import data, pretrain, world
vae = AutoencoderKL.from_pretrained("models/pretrained/t2i/vae", use_safetensors=True, local_files_only=True)
val = data.ShardDataset("data/prepared", "val", captions=True)
x = torch.stack([val[i]["pixel_values"] for i in range(len(val))])
single = [i for i, c in enumerate(val.rows["caption"]) if len(world.parse(c).objects) == 1]
truth = [world.parse(val.rows["caption"][i]).objects[0].colour for i in single]
with torch.no_grad():
    recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
u8 = ((recon + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
pred = [pretrain.dominant_colour(u8[i]) for i in single]
print(f"val MSE {float(((recon - x) ** 2).mean()):.4f}; colour kept in {np.mean([p == t for p, t in zip(pred, truth)]):.1%} of {len(single)} single-object val images")
for colour in world.COLOURS:
    got = collections.Counter(p for p, t in zip(pred, truth) if t == colour)
    print(f"  {colour:7s} {got[colour]:3d}/{sum(got.values()):3d} kept; became {dict(got)}")
