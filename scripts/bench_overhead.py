"""Issue 7.3: what the training loop costs on top of the model's own step, in one run.

    python scripts/bench_overhead.py [--steps 100] [--rounds 2] [--out benchmarks/overhead.json]

Two ways to take the same stage-1 steps with the same model (stage 1's model as params.yaml
builds it from the shipped parts, its loop settings, batch 32):
- loop: the stage runner (vlv.runner.stage1) as the stage1 stage calls it: the model built,
  prepared shards read by the shared loop's DataLoader with cached latents, tqdm,
  loss/lr/grad-norm to MLflow every log_every steps, the budget guard, MLflow system metrics,
  and the checkpoint at the end; timed by the loop's own clock (Result.seconds: the build and
  the latents are not in it);
- bare: the same forward/backward/clip/AdamW step on one in-memory batch, nothing logged.
They alternate ``rounds`` times (a shared machine drifts) and the lowest per-step time of each
is kept. overhead share = (loop - bare) / loop. Everything is written under a temp folder and
a temp MLflow store; the numbers go to ``--out`` and are printed as a table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vlv import autoencoder, config, data, latents, runner, throughput, tracking  # noqa: E402


def bare(model, batch: dict, steps: int) -> float:
    step = throughput.make_step(model)  # the loop's step, nothing else
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step(batch)
    float(loss)
    return (time.perf_counter() - t0) / steps


def loop(params: config.Params, images, latents_dir: Path, ckpt: Path, r: int) -> float:
    with tracking.stage_run("overhead", params):
        _, run = runner.stage1(params, ckpt / f"round-{r}", images=images, latents_dir=latents_dir,
                               log=tracking.metric_logger("stage1"))
        return run.seconds / run.steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/overhead.json"))
    a = ap.parse_args()
    out = Path(a.out).resolve()
    os.chdir(ROOT)  # params.yaml names the shipped parts relative to the project root
    params = config.load(ROOT / "params.yaml")
    params = config.override(params, {"stage1.steps": a.steps}, source="--steps")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    with tempfile.TemporaryDirectory(prefix="vlv-overhead-") as tmp:
        tmp = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        data.prepare(config.validate({"seed": 0, "prepare": {"num_images": 2000, "web_images": 0}}), tmp / "prepared", progress=False)
        template = autoencoder.build(params)  # the model runner.stage1 builds, for the bare steps
        images = runner.open_images(tmp / "prepared")
        dataset = latents.WithLatents(images, *latents.encode_cached(template.vae, images, tmp / "latents", desc="latents"))
        g = params.stage1.global_batch
        items = [dataset[i] for i in range(g)]
        batch = {"pixel_values": torch.stack([it["pixel_values"] for it in items]), "sample_id": torch.arange(g),
                 "latent_mean": torch.stack([it["latent_mean"] for it in items]),
                 "latent_std": torch.stack([it["latent_std"] for it in items])}
        times: dict[str, list[float]] = {"loop": [], "bare": []}
        for r in range(a.rounds):
            times["loop"].append(loop(params, images, tmp / "latents", tmp / "ckpt", r))
            times["bare"].append(bare(copy.deepcopy(template), batch, a.steps))
            print(f"round {r}: loop {times['loop'][-1]:.4f} s/step, bare {times['bare'][-1]:.4f} s/step", flush=True)
    best = {k: min(v) for k, v in times.items()}
    share = (best["loop"] - best["bare"]) / best["loop"]
    record = {"steps": a.steps, "rounds": a.rounds, "global_batch": g, "log_every": params.stage1.log_every,
              "checkpoint_every": params.stage1.checkpoint_every, "system_metrics": params.tracking.system_metrics,
              "seconds_per_step": times, "best": best, "overhead_share": share,
              "date": time.strftime("%Y-%m-%d"), "commit": tracking.git_commit(ROOT)[0]}
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"| | s/step (best of {a.rounds}) |\n| --- | --- |\n| loop (loader, MLflow, guard, checkpoint) | {best['loop']:.4f} |\n"
          f"| bare (in-memory batch, no logging) | {best['bare']:.4f} |\n\noverhead share {share:.1%} (goal <= 5%); "
          f"written to {out}")


if __name__ == "__main__":
    main()
