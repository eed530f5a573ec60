"""Probe (issues 3/4): what do stage-1 embeddings know? Logistic-regression probes from the
VLV conditioning (encoder -> frozen CLIP, mean over tokens + flattened) to each attribute of
the first object and the background, on the pairs split (train) and the val split (test);
against the same probe on a randomly initialised encoder. From the repo root, after stage1:
    .venv/bin/python scripts/probes/linear_probe.py
"""
import sys; sys.path.insert(0, "src")
import numpy as np, torch
from sklearn.linear_model import LogisticRegression
from vlv import components, config, data, world
from vlv.autoencoder import CLIPConditioner, VLVEncoder

p = config.load("params.yaml")
t2i = components.load_t2i(p.components.t2i)
clip = CLIPConditioner(t2i.text_encoder, t2i.tokenizer).eval()
trained = VLVEncoder.load("models/stage1").eval()
torch.manual_seed(p.seed)
random = VLVEncoder(components.vision(p.components.vision, p.components.vision_card), p.stage1.num_queries,
                    int(t2i.text_encoder.config.hidden_size)).eval()


def feats(enc, split, n):
    ds = data.ShardDataset("data/prepared", split, captions=True, limit=n)
    out = []
    with torch.no_grad():
        for i in range(0, len(ds), 64):
            x = torch.stack([ds[j]["pixel_values"] for j in range(i, min(i + 64, len(ds)))])
            e = clip.from_embeddings(enc(x))
            out.append(e.flatten(1).numpy())
    attrs = [world.parse(c) for c in ds.rows["caption"]]
    return np.concatenate(out), attrs


fields = {"background": lambda a: a.background, "colour": lambda a: a.objects[0].colour, "shape": lambda a: a.objects[0].shape,
          "size": lambda a: a.objects[0].size, "position": lambda a: a.objects[0].position, "count": lambda a: len(a.objects)}
for name, enc in (("stage1", trained), ("random", random)):
    xtr, atr = feats(enc, "pairs", 2000)
    xte, ate = feats(enc, "val", 300)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    res = {}
    for f, get in fields.items():
        clf = LogisticRegression(max_iter=300, C=0.1).fit(xtr, [get(a) for a in atr])
        res[f] = clf.score(xte, [get(a) for a in ate])
    print(name, " ".join(f"{k} {v:.2f}" for k, v in res.items()), flush=True)
