"""Probe (issue 3): the frozen teacher's x0 prediction from one pure-noise latent under four captions
(red/blue x top-left/bottom-right, white background) at t = 999, 900, 700: mean darkness of the
corner cells and mean RGB of the decoded prediction, plus a PNG grid. From the repo root:
    .venv/bin/python scripts/probes/teacher_x0.py /tmp/teacher_x0.png
"""
import sys; sys.path.insert(0,'src')
import torch, numpy as np
from vlv import components, plots
t2i = components.load_t2i('models/pretrained/t2i')
te, unet, vae, sch, tok = t2i.text_encoder.eval(), t2i.unet.eval(), t2i.vae.eval(), t2i.scheduler, t2i.tokenizer
caps = ["a large red square at the top left on a white background", "a large red square at the bottom right on a white background",
        "a large blue square at the top left on a white background", "a large blue square at the bottom right on a white background"]
ids = tok(caps, padding="max_length", max_length=77, return_tensors="pt").input_ids
g = torch.Generator().manual_seed(0)
noise = torch.randn(1, 4, 16, 16, generator=g).repeat(4, 1, 1, 1)
rows = []
with torch.no_grad():
    cond = te(ids).last_hidden_state
    for t in (999, 900, 700):
        tt = torch.full((4,), t)
        ab = sch.alphas_cumprod[t]
        v = unet(noise, tt, encoder_hidden_states=cond).sample
        x0 = ab.sqrt() * noise - (1 - ab).sqrt() * v   # v-pred: x0 = sqrt(ab) x_t - sqrt(1-ab) v
        img = vae.decode(x0 / vae.config.scaling_factor).sample.clamp(-1, 1)
        u8 = plots.to_uint8(img)
        rows.append(list(u8))
        # where is the "redness"/"blueness": mean deviation from white in each 3x3 cell
        d = 255 - u8.astype(float).mean(-1)  # darkness
        tl = d[:, :11, :11].mean((1, 2)); br = d[:, -11:, -11:].mean((1, 2)); cen = d[:, 11:21, 11:21].mean((1, 2))
        print(t, "darkness top-left", tl.round(1), "bottom-right", br.round(1), "centre", cen.round(1))
        print("   mean RGB", u8.reshape(4, -1, 3).mean(1).round(1).tolist())
plots.image_grid(rows, sys.argv[1] if len(sys.argv) > 1 else "/tmp/x0probe.png", row_titles=["t=999", "t=900", "t=700"], col_titles=["red TL", "red BR", "blue TL", "blue BR"])
