"""Probe (issue 4): is the object colour (and shape, cell) linearly readable from what stage 2
reads, i.e. the frozen CLIP's output for the VLV embedding? Compares the committed stage-1
encoder (models/stage1) with a random encoder of the same card. A logistic read-out
(a torch linear layer, full batch, L2) trained on the first N pairs and
scored on the val split. From the repo root after `dvc repro stage1`:
    .venv/bin/python scripts/probes/colour_readout.py [--n 2000]
"""
import argparse, sys
sys.path.insert(0, "src")
import torch
from vlv import components, config, data, world
from vlv.autoencoder import CLIPConditioner, VLVEncoder

ap = argparse.ArgumentParser(); ap.add_argument("--n", type=int, default=2000); ap.add_argument("--steps", type=int, default=300)
a = ap.parse_args()
params = config.load("params.yaml")
te, tok = components.load_text_encoder(params.components.t2i)
clip = CLIPConditioner(te, tok).eval()
train = data.ShardDataset("data/prepared", "pairs", captions=True, limit=a.n)
val = data.ShardDataset("data/prepared", "val", captions=True)


@torch.no_grad()
def feats(encoder, ds, where):
    out = []
    for i in range(0, len(ds), 64):
        x = torch.stack([ds[j]["pixel_values"] for j in range(i, min(i + 64, len(ds)))])
        e = encoder(x)
        h = clip.from_embeddings(e) if where == "clip" else e
        out.append(h[:, : e.shape[1]].flatten(1))
    return torch.cat(out)


def readout(xtr, ytr, xva, yva):
    classes = sorted(set(ytr.tolist()) | set(yva.tolist()))
    idx = {c: i for i, c in enumerate(classes)}
    ytr_, yva_ = torch.tensor([idx[c] for c in ytr.tolist()]), torch.tensor([idx[c] for c in yva.tolist()])
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    lin = torch.nn.Linear(xtr.shape[1], len(classes))
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(a.steps):
        loss = torch.nn.functional.cross_entropy(lin(xtr), ytr_); opt.zero_grad(); loss.backward(); opt.step()
    return float((lin(xva).argmax(1) == yva_).float().mean()), 1 / len(classes)


def label_map(ds):
    scenes = [world.parse(c) for c in ds.rows["caption"]]
    return {"colour": [s.objects[0].colour for s in scenes], "shape": [s.objects[0].shape for s in scenes],
            "position": [s.objects[0].position for s in scenes]}


ltr, lva = label_map(train), label_map(val)
enc = {"stage-1 encoder": VLVEncoder.load("models/stage1")}
torch.manual_seed(0)
enc["random encoder"] = VLVEncoder(components.vision(params.components.vision, params.components.vision_card),
                                   params.stage1.num_queries, int(te.config.hidden_size))
for name, e in enc.items():
    e.eval()
    for where in ("queries", "clip"):
        xtr, xva = feats(e, train, where), feats(e, val, where)
        res = []
        for f in ("colour", "shape", "position"):
            vocab = sorted(set(ltr[f]) | set(lva[f]))
            ytr = torch.tensor([vocab.index(v) for v in ltr[f]]); yva = torch.tensor([vocab.index(v) for v in lva[f]])
            acc, chance = readout(xtr, ytr, xva, yva)
            res.append(f"{f} {acc:.0%} (chance {chance:.0%})")
        print(f"{name:16s} {where:8s} " + ", ".join(res), flush=True)
