"""Issue 7.3: what the training loop costs on top of the model's own step, in one run.

    python scripts/bench_overhead.py [--steps 100] [--rounds 2] [--out benchmarks/overhead.json]

Two ways to take the same stage-1 steps with the same model (the embedded world's parts from
the architecture cards, stage 1's loop settings from params.yaml, batch 32):
- loop: the shared loop (vlv.train.train) as the stage1 stage runs it: prepared shards read by
  its DataLoader with cached latents, tqdm, loss/lr/grad-norm to MLflow every log_every steps,
  the budget guard, MLflow system metrics, and the checkpoint at the end;
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

from vlv import autoencoder, components, config, data, latents, throughput, tracking, vocab, world  # noqa: E402
from vlv.train import spec_from, train  # noqa: E402


def build(params: config.Params) -> autoencoder.VLVAutoencoder:
    captions = [s.caption() for s in world.sample_scenes(0, 2000)]
    torch.manual_seed(0)
    t2i = components.build_t2i("t2i-tiny", vocab.clip_tokenizer(captions))
    vision = components.build_vision(params.components.vision_card)
    enc = autoencoder.VLVEncoder(vision, params.stage1.num_queries, int(t2i.text_encoder.config.hidden_size))
    enc.set_trainable(params.stage1.trainable)
    return autoencoder.VLVAutoencoder(enc, t2i, seed=params.seed)


def bare(model, batch: dict, steps: int) -> float:
    step = throughput.make_step(model)  # the loop's step, nothing else
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step(batch)
    float(loss)
    return (time.perf_counter() - t0) / steps


def loop(model, dataset, params: config.Params, steps: int, ckpt: Path, r: int) -> float:
    spec = spec_from(params.stage1.model_copy(update={"steps": steps}), "stage1", params.seed)
    with tracking.stage_run("overhead", params):
        t0 = time.perf_counter()
        train(model, dataset, spec, ckpt / f"round-{r}", f"overhead-{r}", log=tracking.metric_logger("stage1"))
        return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/overhead.json"))
    a = ap.parse_args()
    params = config.load(ROOT / "params.yaml")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    with tempfile.TemporaryDirectory(prefix="vlv-overhead-") as tmp:
        tmp = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        data.prepare(config.validate({"seed": 0, "prepare": {"num_images": 2000, "web_images": 0}}), tmp / "prepared", progress=False)
        template = build(params)
        images = data.ShardDataset(tmp / "prepared", "images")
        dataset = latents.WithLatents(images, *latents.encode(template.vae, images, desc="latents"))
        g = params.stage1.global_batch
        items = [dataset[i] for i in range(g)]
        batch = {"pixel_values": torch.stack([it["pixel_values"] for it in items]), "sample_id": torch.arange(g),
                 "latent_mean": torch.stack([it["latent_mean"] for it in items]),
                 "latent_std": torch.stack([it["latent_std"] for it in items])}
        times: dict[str, list[float]] = {"loop": [], "bare": []}
        for r in range(a.rounds):
            times["loop"].append(loop(copy.deepcopy(template), dataset, params, a.steps, tmp / "ckpt", r))
            times["bare"].append(bare(copy.deepcopy(template), batch, a.steps))
            print(f"round {r}: loop {times['loop'][-1]:.4f} s/step, bare {times['bare'][-1]:.4f} s/step", flush=True)
    best = {k: min(v) for k, v in times.items()}
    share = (best["loop"] - best["bare"]) / best["loop"]
    record = {"steps": a.steps, "rounds": a.rounds, "global_batch": g, "log_every": params.stage1.log_every,
              "checkpoint_every": params.stage1.checkpoint_every, "system_metrics": params.tracking.system_metrics,
              "seconds_per_step": times, "best": best, "overhead_share": share,
              "date": time.strftime("%Y-%m-%d"), "commit": tracking.git_commit(ROOT)[0]}
    Path(a.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"| | s/step (best of {a.rounds}) |\n| --- | --- |\n| loop (loader, MLflow, guard, checkpoint) | {best['loop']:.4f} |\n"
          f"| bare (in-memory batch, no logging) | {best['bare']:.4f} |\n\noverhead share {share:.1%} (goal <= 5%); "
          f"written to {a.out}")


if __name__ == "__main__":
    main()
