"""Probe (issue 4): can the stage-2 path learn where the objects are? Trains the VLV encoder
(random init, every part trainable) with a linear head on the first object's position
(9 cells), supervised, either on the encoder's output (--via encoder) or after the frozen CLIP
text encoder (--via clip), and prints train-batch and val accuracy. From the repo root:
    .venv/bin/python scripts/probes/position_probe.py --via clip --steps 300
"""
import sys, time, argparse; sys.path.insert(0, "src")
import numpy as np, torch
from vlv import components, data, world
from vlv.autoencoder import CLIPConditioner, VLVEncoder
ap = argparse.ArgumentParser(); ap.add_argument("--via", default="clip"); ap.add_argument("--steps", type=int, default=300)
ap.add_argument("--lr", type=float, default=3e-4); ap.add_argument("--nq", type=int, default=24); ap.add_argument("--init_std", type=float, default=None)
a = ap.parse_args()
torch.manual_seed(0)
t2i = components.load_t2i("models/pretrained/t2i")
clip = CLIPConditioner(t2i.text_encoder, t2i.tokenizer).eval().requires_grad_(False)
from vlv import cards
card = cards.load_card("florence2-tiny")
if a.init_std: card["parts"]["model"]["config"]["text_config"]["init_std"] = a.init_std
enc = VLVEncoder(components.build_vision(card), a.nq, clip.width)
head = torch.nn.Linear(a.nq * clip.width, 9)
def load(split, n):
    ds = data.ShardDataset("data/prepared", split, captions=True, limit=n)
    x = torch.stack([ds[i]["pixel_values"] for i in range(len(ds))])
    y = torch.tensor([world.parse(c).objects[0].cell for c in ds.rows["caption"]])
    return x, y
xt, yt = load("pairs", 2000); xv, yv = load("val", 300)
def logits(x):
    e = enc(x)
    if a.via == "clip": e = clip.from_embeddings(e)
    return head(e.flatten(1))
opt = torch.optim.AdamW(list(enc.parameters()) + list(head.parameters()), lr=a.lr)
g = torch.Generator().manual_seed(0); t0 = time.time(); acc = []
for step in range(a.steps):
    idx = torch.randint(0, len(xt), (32,), generator=g)
    out = logits(xt[idx]); loss = torch.nn.functional.cross_entropy(out, yt[idx])
    opt.zero_grad(); loss.backward(); opt.step()
    acc.append(float((out.argmax(1) == yt[idx]).float().mean()))
    if step % 50 == 49:
        with torch.no_grad(): va = float((logits(xv).argmax(1) == yv).float().mean())
        print(a.via, step + 1, "train", round(np.mean(acc[-50:]), 3), "val", round(va, 3), f"{time.time() - t0:.0f}s", flush=True)
