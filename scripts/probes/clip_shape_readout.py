"""Probe (issue 4): does the frozen CLIP text encoder of the committed T2I folder keep shape?
A linear head reads the first object's shape from its output for the true caption (flattened
tokens, or the pooled output), trained on the 2000 pairs' captions, scored on val.
From the repo root, after `dvc repro pretrain`:
    .venv/bin/python scripts/probes/clip_shape_readout.py
"""
import sys; sys.path.insert(0, "src")
import torch, torch.nn.functional as F
from vlv import components, data, world
t2i = components.load_t2i("models/pretrained/t2i")
te, tok = t2i.text_encoder.eval(), t2i.tokenizer
def load(split, n):
    ds = data.ShardDataset("data/prepared", split, captions=True, limit=n)
    caps = ds.rows["caption"].tolist(); objs = [world.parse(c).objects[0] for c in caps]
    return caps, torch.tensor([world.SHAPES.index(o.shape) for o in objs])
def feats(caps, pooled):
    ids = tok(caps, padding="max_length", max_length=32, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad(): out = te(input_ids=ids)
    return out.pooler_output if pooled else out.last_hidden_state.flatten(1)
for pooled in (False, True):
    ct, yt = load("pairs", 2000); cv, yv = load("val", 300)
    xt, xv = feats(ct, pooled), feats(cv, pooled)
    head = torch.nn.Linear(xt.shape[1], 3); opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    for _ in range(300):
        loss = F.cross_entropy(head(xt), yt); opt.zero_grad(); loss.backward(); opt.step()
    print("pooled" if pooled else "tokens", "shape read-out from frozen CLIP of the true caption: train %.2f val %.2f" % (
        (head(xt).argmax(1) == yt).float().mean(), (head(xv).argmax(1) == yv).float().mean()))
