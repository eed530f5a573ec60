"""Probe (issue 4): where does a randomly initialised VLV encoder (Florence-2 card + 24 queries)
lose the objects' positions? (1) Spread of each stage's output across 64 val images, against its
overall spread; (2) logistic-regression read-outs of the first object's cell (9 classes; 1,500
pairs to fit, 300 val to score) from the pixels, the vision tower, the projector, the BART
encoder's tokens and their mean. From the repo root after `dvc repro prepare`:
    .venv/bin/python scripts/probes/position_stages.py
"""
import sys; sys.path.insert(0, "src")
import warnings; warnings.filterwarnings("ignore")
import numpy as np, torch
from sklearn.linear_model import LogisticRegression
from vlv import components, data, world
from vlv.autoencoder import VLVEncoder
torch.manual_seed(0)
enc = VLVEncoder(components.vision(None, "florence2-tiny"), 24, 128).eval()
m = enc.florence.model
def load(split, n):
    ds = data.ShardDataset("data/prepared", split, captions=True, limit=n)
    return torch.stack([ds[i]["pixel_values"] for i in range(len(ds))]), np.array([world.parse(c).objects[0].cell for c in ds.rows["caption"]])
def stages(x):
    with torch.no_grad():
        xn = ((x + 1) / 2 - enc.mean) / enc.std
        tower = m.vision_tower(xn)
        tower = getattr(tower, "last_hidden_state", tower)
        proj = m.get_image_features(xn).pooler_output
        prompt = m.get_input_embeddings()(enc.prompt_ids).unsqueeze(0).expand(x.shape[0], -1, -1)
        bart = m.language_model.encoder(inputs_embeds=torch.cat([proj, prompt], 1)).last_hidden_state
        queries = enc.queries.unsqueeze(0).expand(x.shape[0], -1, -1)
        dec = m.language_model.decoder(inputs_embeds=queries, encoder_hidden_states=bart).last_hidden_state
        out = enc.projection(dec)
    return {"pixels": x, "vision tower": tower, "projector": proj, "BART encoder": bart, "BART encoder (mean)": bart.mean(1),
            "BART decoder (queries)": dec, "encoder output": out}
x64, _ = load("val", 64)
print("spread across images / overall spread:")
for k, v in stages(x64).items():
    print(f"  {k:24s} {float(v.std(0).mean() / v.std()):.3f}")
xt, yt = load("pairs", 1500); xv, yv = load("val", 300)
ft, fv = stages(xt), stages(xv)
print("first object's cell (9 classes), logistic regression, val accuracy:")
for k in ft:
    clf = LogisticRegression(max_iter=300).fit(ft[k].flatten(1).numpy(), yt)
    print(f"  {k:24s} {clf.score(fv[k].flatten(1).numpy(), yv):.3f}")
