"""DVC stage `stage1`: distil the frozen T2I decoder into the VLV encoder, images only.

Writes the encoder (models/stage1: Florence-2 weights + queries + projection, loadable in
one call), metrics on the val split (denoising loss under four conditionings, with
standard errors), a reconstruction grid and the loss curve.
"""

from pathlib import Path

import mlflow
import torch

from vlv import components, config, data, plots, runner, teacher, tracking, world
from vlv.autoencoder import VLVAutoencoder, conditioning_report
from vlv.classifier import AttributeClassifier
from vlv.entry import stage
from vlv.train import clear_checkpoints

OUT = Path("models/stage1")
CKPT = Path("checkpoints/stage1")
METRICS = Path("metrics/stage1.json")
PLOTS = Path("plots/stage1")


def open_data(params: config.Params) -> dict[str, data.ShardDataset]:
    """What stage 1 reads: "stage1", the images split without captions (it trains on images
    only); "eval", the val images it scores with their captions (the conditioning report's
    caption condition and the reconstruction grid: references, never trained on)."""
    e = params.stage1.eval
    return {"stage1": runner.open_images(),
            "eval": data.ShardDataset(runner.DATA, "val", captions=True, limit=max(e.images, e.recon_images))}


def paint_back(model: VLVAutoencoder, val, params: config.Params, batch_size: int = 64) -> dict:
    """One pass over the first max(eval.images, eval.recon_images) val images: each painted back
    by the frozen decoder from its VLV embedding ("recon") and from its true caption ("caption"),
    CFG against CLIP(""), DDIM; uint8 pictures beside the originals ("x") and captions."""
    from tqdm.auto import tqdm

    e = params.stage1.eval
    items = [val[i] for i in range(min(max(e.images, e.recon_images), len(val)))]
    x = torch.stack([it["pixel_values"] for it in items])
    recon, caption = [], []
    for i in tqdm(range(0, len(items), batch_size), desc="stage1: paint back", unit="batch"):
        xb = x[i : i + batch_size]
        recon.append(model.reconstruct(xb, e.guidance_scale, e.recon_steps, seed=params.seed))
        cond = model.clip.from_text([it["caption"] for it in items[i : i + batch_size]])
        caption.append(model.generate(cond, x.shape[-1], e.guidance_scale, e.recon_steps, seed=params.seed))
    return {"captions": [it["caption"] for it in items], "x": plots.to_uint8(x),
            "recon": plots.to_uint8(torch.cat(recon)), "caption": plots.to_uint8(torch.cat(caption))}


def reconstruction_grid(painted: dict, params: config.Params) -> Path:
    e = params.stage1.eval
    k = min(e.recon_images, len(painted["x"]))
    rows = [[painted[c][i] for c in ("x", "recon", "caption")] for i in range(k)]
    return plots.image_grid(rows, PLOTS / "reconstructions.png", row_titles=painted["captions"][:k],
                            col_titles=["original", "VLV reconstruction", "from caption"],
                            title=f"stage 1: CFG {e.guidance_scale:g}, {e.recon_steps} DDIM steps")


def reconstruction_reads(painted: dict, params: config.Params) -> dict:
    """The first ``stage1.eval.images`` paintings read back per field by the analytic reader of
    the spec and by the world's attribute classifier (components.classifier):
    ``recon_reader_mean`` is how much of the scene the embedding carried through the frozen
    decoder, ``caption_reader_mean`` what the caption carries. Empty when the val captions are
    not shapes-world captions."""
    n = min(params.stage1.eval.images, len(painted["x"]))
    truths = [world.try_parse(c) for c in painted["captions"][:n]]
    if not truths or any(t is None for t in truths):
        return {}
    out = {}
    clf_dir = params.components.classifier
    clf = AttributeClassifier.load(clf_dir) if clf_dir and Path(clf_dir).is_dir() else None
    for name in ("recon", "caption"):
        images = painted[name][:n]
        out |= {f"{name}_reader_{k}": v for k, v in world.agreement_scores([world.read_image(im) for im in images], truths).items()}
        if clf is not None:
            out |= {f"{name}_classifier_{k}": v for k, v in world.agreement_scores(teacher.read_by_classifier(clf, images), truths).items()}
    return out


@stage("stage1")
def main(params: config.Params) -> None:
    """Train the VLV encoder against the frozen diffusion decoder."""
    s = params.stage1
    with tracking.stage_run("stage1", params):
        opened = open_data(params)
        # build, the images with their cached latents (no captions: stage 1 sees images only), train
        model, run = runner.stage1(params, CKPT, images=opened["stage1"], log=tracking.metric_logger("stage1"))
        if not tracking.is_main():  # accelerate launch: the main process saves, evaluates and logs
            return
        mlflow.log_params({"stage1.trainable_params": components.param_count(model, trainable_only=True),
                           "stage1.vision_source": model.encoder.vision_source})
        model.encoder.save(OUT, extra={"t2i": params.components.t2i, "resolution": params.prepare.image_size})

        val = opened["eval"]
        report = conditioning_report(model, val, s.eval.images, s.eval.noise_draws, params.seed)
        PLOTS.mkdir(parents=True, exist_ok=True)
        plots.loss_curves({"stage 1 denoising loss": run.losses}, PLOTS / "loss.png", title="stage 1")
        painted = paint_back(model, val, params)
        reconstruction_grid(painted, params)
        reads = reconstruction_reads(painted, params)
        metrics = {**report, **reads, "final_train_loss": run.final_loss, "seconds": run.seconds, "steps": run.steps,
                   "samples": run.samples, "samples_per_second": run.samples / run.seconds if run.seconds else 0.0,
                   "reads": {part: data.reads(ds) for part, ds in opened.items()}}
        tracking.record("stage1", metrics, METRICS, sorted(PLOTS.glob("*.png")), prefix="stage1/val")
        clear_checkpoints(CKPT)
        print(
            f"stage1: val loss vlv {report['loss_vlv']:.4f} | uncond {report['loss_uncond']:.4f} | caption "
            f"{report['loss_caption']:.4f} | shuffled {report['loss_shuffled']:.4f}; gain vlv {report['gain_vlv']:.4f} "
            f"(z {report['gain_vlv_z']:.1f}), distillation gap {report['distillation_gap']:.2f}"
            + (f"; reconstructions read back {reads['recon_reader_mean']:.1%} (from captions {reads['caption_reader_mean']:.1%})"
               if reads else "")
        )


if __name__ == "__main__":
    main()
