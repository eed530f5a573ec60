"""Probe (issue 4): would a vision tower that can read shape lift the captions?

scripts/probes/florence_init.py showed the tiny Florence-2's tower reads shape at 65-77% when
trained on the 2000 pairs, but at 93% (size 95%, colour 97%) when trained on the 17,400
captioned images of the `images` split, the data the other "pretrained" parts learn from. This
probe gives the committed stage-1 encoder such a tower, then runs the default stage 2 on it:
1. the tower (only) trains with linear heads on its flattened output tokens, supervised by the
   first object's cell, colour, shape and size parsed from the `images` split's captions
   (a stand-in for Florence-2's own pretraining; the world's attribute labels, not a method);
2. stage 2 as `pipelines/stage2.py` runs it (captioner.build + the shared loop, params.yaml's
   stage2), the tower frozen (`--tower frozen`, as the paper freezes DaViT) or trainable;
3. val attribute accuracy of the captions (300 images), to compare with metrics/stage2.json.
From the repo root, after `dvc repro stage1`:
    .venv/bin/python scripts/probes/pretrained_tower.py --tower-steps 1500 --tower frozen
"""
import sys, time, argparse, tempfile; sys.path.insert(0, "src")
import torch, torch.nn.functional as F
from vlv import captioner, config, data, world
from vlv.captioner import caption_batches
from vlv.train import spec_from, train

ap = argparse.ArgumentParser()
ap.add_argument("--tower-steps", type=int, default=1500); ap.add_argument("--tower-lr", type=float, default=1e-3)
ap.add_argument("--tower", choices=["frozen", "trainable"], default="frozen")
a = ap.parse_args()
params = config.load("params.yaml")
torch.manual_seed(params.seed)
model = captioner.build(params, stage1_dir="models/stage1")
enc = model.encoder
m = enc.florence.model
FIELDS = {"cell": 9, "colour": 6, "shape": 3, "size": 2}


def tower(x):
    return m.get_image_features(((x + 1) / 2 - enc.mean) / enc.std).pooler_output.flatten(1)


def load(split, n=None):
    ds = data.ShardDataset("data/prepared", split, captions=True, limit=n)
    x = torch.stack([ds[i]["pixel_values"] for i in range(len(ds))])
    objs = [world.parse(c).objects[0] for c in ds.rows["caption"]]
    return x, torch.tensor([[o.cell, list(world.COLOURS).index(o.colour), world.SHAPES.index(o.shape), list(world.SIZES).index(o.size)] for o in objs])


t0 = time.time()
if a.tower_steps:
    xt, yt = load("images"); xv, yv = load("val")
    vision = m.vision_tower
    with torch.no_grad():
        head = torch.nn.Linear(tower(xt[:2]).shape[1], sum(FIELDS.values()))
    opt = torch.optim.AdamW(list(vision.parameters()) + list(head.parameters()), lr=a.tower_lr)
    g = torch.Generator().manual_seed(0)
    for step in range(a.tower_steps):
        idx = torch.randint(0, len(xt), (32,), generator=g)
        outs = torch.split(head(tower(xt[idx])), list(FIELDS.values()), dim=1)
        loss = sum(F.cross_entropy(o, yt[idx, i]) for i, o in enumerate(outs))
        opt.zero_grad(); loss.backward(); opt.step()
    with torch.no_grad():
        outs = torch.split(head(tower(xv)), list(FIELDS.values()), dim=1)
        va = {f: float((o.argmax(1) == yv[:, i]).float().mean()) for i, (f, o) in enumerate(zip(FIELDS, outs))}
    print(f"tower: {a.tower_steps} steps in {time.time() - t0:.0f}s; val read-out " + " ".join(f"{f} {v:.2f}" for f, v in va.items()), flush=True)

parts = [p for p in params.stage1.trainable if a.tower == "trainable" or p != "vision_tower"]
model.set_trainable(params.stage2.trainable, parts)
pairs = data.ShardDataset("data/prepared", "pairs", captions=True)
with tempfile.TemporaryDirectory() as ckpt:
    run = train(model, pairs, spec_from(params.stage2, "stage2", params.seed), ckpt, "probe")
val = data.ShardDataset("data/prepared", "val", captions=True, limit=params.stage2.val_images)
x = torch.stack([val[i]["pixel_values"] for i in range(len(val))])
pred = caption_batches(model, x, params.stage2.num_beams, params.stage2.max_new_tokens, desc="val")
acc = world.score(pred, val.rows["caption"].tolist())
print(f"tower-steps {a.tower_steps} tower {a.tower}: stage 2 {run.steps} steps in {run.seconds:.0f}s; val "
      + " ".join(f"{k} {v:.3f}" for k, v in acc.items()), flush=True)
