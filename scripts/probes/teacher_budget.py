"""Probe (issue 3): what teacher budget draws the prompted colour in a clear majority?

Retrains only the teacher's UNet, exactly as `pretrain` does (same card, seed, objective and
loop; the committed VAE and frozen contrastive text encoder from models/pretrained/t2i), for
each budget in --steps, saves the folder and runs `pretrain.colour_check` on it twice: the
pipeline's 60 prompts (seed+1) and --more prompts of another seed (less noisy rate).
From the repo root, after `dvc repro pretrain`:
    .venv/bin/python scripts/probes/teacher_budget.py --steps 3000 1500 --out /tmp/teacher_budget
Prints one JSON line per budget.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, "src")
from vlv import cards, components, config, data, latents, pretrain  # noqa: E402
from vlv.train import spec_from, train  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, nargs="+", default=[3000])
ap.add_argument("--more", type=int, default=240, help="prompts of the second, larger check")
ap.add_argument("--out", default="/tmp/teacher_budget")
a = ap.parse_args()

params = config.load("params.yaml")
p, seed = params.pretrain, params.seed
dataset = data.ShardDataset("data/prepared", "images", captions=True)
card = cards.load_card("t2i-tiny")
saved = components.load_t2i("models/pretrained/t2i")
mean, std = latents.encode_cached(saved.vae, dataset, "cache/latents", desc="probe: latents")
cached = latents.WithLatents(dataset, mean, std)

for steps in a.steps:
    torch.manual_seed(seed)  # as pretrain: the same UNet init (built after the same seed)
    t2i = components.build_t2i(card, saved.tokenizer)
    t2i.vae, t2i.text_encoder = saved.vae, saved.text_encoder
    teacher = pretrain.TeacherObjective(t2i, p.teacher.caption_dropout, seed, p.teacher.snr_gamma,
                                        p.teacher.high_noise_share, p.teacher.high_noise_from, p.teacher.train_text_encoder)
    spec = spec_from(p.teacher.model_copy(update={"steps": steps, "checkpoint_every": 0}), "probe.teacher", seed)
    out = Path(a.out) / f"steps-{steps}"
    t0 = time.time()
    run = train(teacher, cached, spec, out / "ckpt", f"probe-{steps}")
    seconds = time.time() - t0
    components.save_t2i(t2i, out / "t2i")
    size = params.prepare.image_size
    c60 = pretrain.colour_check(out / "t2i", p.eval.prompts, p.eval.steps, p.eval.guidance_scale, size, seed=seed + 1)
    cmore = pretrain.colour_check(out / "t2i", a.more, p.eval.steps, p.eval.guidance_scale, size, seed=seed + 7)
    print(json.dumps({"steps": steps, "train_s": round(seconds, 1), "final_loss": round(run.final_loss, 4),
                      "colour_60": c60.rate, "colour_more": cmore.rate, "more_prompts": a.more,
                      "background_60": c60.background_rate}), flush=True)
