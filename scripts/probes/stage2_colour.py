"""Probe (issue 4): when does the captioner learn colour, shape and position, and does a
higher learning rate for the MLP + LLM (the prototype's 1e-3, encoder 3e-4) change it?
Stage 2 as the pipeline builds it (captioner.build, the committed stage-1 encoder or a random
one), trained with AdamW at a constant lr after 50 warm-up steps on the 2000 pairs, batch 32;
val attribute accuracy of greedy captions (200 images) every --every steps. From the repo root:
    .venv/bin/python scripts/probes/stage2_colour.py --head-lr 1e-3 --steps 1200
"""
import sys, time, argparse; sys.path.insert(0, "src")
import torch
from vlv import captioner, config, data, world
ap = argparse.ArgumentParser()
ap.add_argument("--init", choices=["stage1", "random"], default="stage1")
ap.add_argument("--lr", type=float, default=3e-4, help="encoder lr (and MLP + LLM unless --head-lr)")
ap.add_argument("--head-lr", type=float, default=None)
ap.add_argument("--steps", type=int, default=1200); ap.add_argument("--every", type=int, default=300)
a = ap.parse_args()
params = config.load("params.yaml")
params = params.model_copy(update={"stage2": params.stage2.model_copy(update={"init": a.init})})
model = captioner.build(params)
enc = [p for p in model.encoder.parameters() if p.requires_grad]
head = [p for p in list(model.mlp.parameters()) + list(model.llm.parameters()) if p.requires_grad]
opt = torch.optim.AdamW([{"params": enc, "lr": a.lr}, {"params": head, "lr": a.head_lr or a.lr}], weight_decay=0.01)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
ds = data.ShardDataset("data/prepared", "pairs", captions=True)
xt = torch.stack([ds[i]["pixel_values"] for i in range(len(ds))]); ct = ds.rows["caption"].tolist()
val = data.ShardDataset("data/prepared", "val", captions=True, limit=200)
xv = torch.stack([val[i]["pixel_values"] for i in range(len(val))]); cv = val.rows["caption"].tolist()
g = torch.Generator().manual_seed(0); t0 = time.time()
for step in range(a.steps):
    model.train()
    idx = torch.randint(0, len(xt), (32,), generator=g)
    loss = model({"pixel_values": xt[idx], "caption": [ct[i] for i in idx]})
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(enc + head, 1.0); opt.step(); sched.step()
    if (step + 1) % a.every == 0:
        model.eval()
        with torch.no_grad(): pred = [c for i in range(0, len(xv), 50) for c in model.generate(xv[i:i + 50], 1, 32)]
        s = world.score(pred, cv)
        print(f"init={a.init} lr={a.lr} head_lr={a.head_lr} step {step + 1}: loss {float(loss):.3f} mean {s['mean']:.3f} colour {s['colour']:.3f} "
              f"shape {s['shape']:.3f} size {s['size']:.3f} position {s['position']:.3f} exact {s['exact']:.3f} ({time.time() - t0:.0f}s)", flush=True)
