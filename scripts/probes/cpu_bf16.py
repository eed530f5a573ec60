"""Probe (issue 3's 15 minutes): does bf16 autocast speed up the pipeline's training steps on
this CPU (it has AMX-BF16)? Times the teacher (pretrain), stage-1 and stage-2 steps of the
committed parts, fp32 vs bf16 autocast, interleaved in blocks so drift hits both alike.
From the repo root after `dvc repro`:
    .venv/bin/python scripts/probes/cpu_bf16.py [--rounds 4 --block 5]
"""
import argparse, sys, time
sys.path.insert(0, "src"); sys.path.insert(0, "pipelines")
import torch
from torch.utils.data import default_collate
from vlv import components, config, data, latents, pretrain
import stage1 as s1, stage2 as s2

ap = argparse.ArgumentParser(); ap.add_argument("--rounds", type=int, default=4); ap.add_argument("--block", type=int, default=5)
ap.add_argument("--only", default="teacher,stage1,stage2"); a = ap.parse_args()
params = config.load("params.yaml")
print("torch threads", torch.get_num_threads(), "| oneDNN bf16 capable:", torch.backends.mkldnn.is_available())


def batch_of(ds, n, captions=True):
    items = []
    for i in range(n):
        it = dict(ds[i]); it["sample_id"] = i; items.append(it)
    return default_collate(items)


def bench(name, model, batch):
    params_ = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params_, lr=1e-5)
    times = {"fp32": [], "bf16": []}
    for r in range(a.rounds + 1):
        for prec in ("fp32", "bf16"):
            t0 = time.perf_counter()
            for _ in range(a.block):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
                    loss = model(batch)
                loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
            if r:  # round 0 warms up both
                times[prec].append((time.perf_counter() - t0) / a.block)
    f, b = sum(times["fp32"]) / len(times["fp32"]), sum(times["bf16"]) / len(times["bf16"])
    print(f"{name}: fp32 {f:.3f} s/step, bf16 {b:.3f} s/step, speedup x{f / b:.2f}", flush=True)


only = a.only.split(",")
if "teacher" in only:
    t2i = components.load_t2i(params.components.t2i)
    t2i.unet.train()
    teacher = pretrain.TeacherObjective(t2i, 0.1, 0, None, 0.5, 0.7, False)
    ds = data.ShardDataset("data/prepared", "images", captions=True, limit=64)
    cached = latents.WithLatents(ds, *latents.encode(t2i.vae, ds))
    bench("teacher (batch 16)", teacher, batch_of(cached, params.pretrain.teacher.global_batch))
if "stage1" in only:
    model = s1.build(params); model.train()
    ds = data.ShardDataset("data/prepared", "images", limit=64)
    cached = latents.WithLatents(ds, *latents.encode(model.vae, ds))
    bench(f"stage1 (batch {params.stage1.global_batch})", model, batch_of(cached, params.stage1.global_batch))
if "stage2" in only:
    model = s2.build(params); model.train()
    ds = data.ShardDataset("data/prepared", "pairs", captions=True, limit=64)
    bench(f"stage2 (batch {params.stage2.global_batch})", model, batch_of(ds, params.stage2.global_batch))
