"""DVC stage `stage2`: caption tuning on the `pairs` split.

The stage-1 encoder (or, for the no-stage-1 ablation `stage2.init: random`, components.vision's
Florence-2 with fresh queries and projection)
-> frozen CLIP -> MLP -> LLM prefix, trained on captioned pairs only. Writes the captioner
folder (models/captioner, loadable in one call), its attribute accuracy on val, the loss
curve, and logs it to MLflow as a pyfunc model registered under `tracking.model_name`.
"""

from pathlib import Path

import mlflow

from vlv import components, config, cost, data, plots, runner, tracking, world
from vlv.captioner import caption_batches
from vlv.entry import stage
from vlv.serving import log_captioner
from vlv.train import clear_checkpoints

OUT = Path("models/captioner")
CKPT = Path("checkpoints/stage2")
METRICS = Path("metrics/stage2.json")
PLOTS = Path("plots/stage2")


def open_data(params: config.Params) -> dict[str, data.ShardDataset]:
    """What stage 2 reads: "stage2", the pairs it trains on (the captioning side's only
    captions); "eval", the val images whose captions score it (references, never trained on)."""
    return {"stage2": runner.open_pairs(params),
            "eval": data.ShardDataset(runner.DATA, "val", captions=True, limit=params.stage2.val_images)}


@stage("stage2")
def main(params: config.Params) -> None:
    """Train the captioner (VLV encoder -> CLIP -> MLP -> LLM) on the pairs split."""
    s = params.stage2
    with tracking.stage_run("stage2", params):
        opened = open_data(params)  # fails before any compute when num_pairs is too large
        train_set = opened["stage2"]
        # build (from models/stage1, or a fresh encoder under stage2.init: random), train
        model, run = runner.stage2(params, CKPT, pairs=train_set, log=tracking.metric_logger("stage2"))
        if not tracking.is_main():  # accelerate launch: the main process saves, evaluates and logs
            return
        mlflow.log_params({"stage2.trainable_params": components.param_count(model, trainable_only=True),
                           "stage2.pairs_used": len(train_set)})
        tmp = OUT.with_name(OUT.name + ".partial")
        model.save(tmp, num_beams=s.num_beams, max_new_tokens=s.max_new_tokens, resolution=params.prepare.image_size,
                   trainable=s.trainable, init=s.init, pairs=len(train_set), t2i=params.components.t2i)
        data.replace_folder(tmp, OUT)

        val = opened["eval"]
        x = val.pixel_values()
        predicted = caption_batches(model, x, s.num_beams, s.max_new_tokens, desc="stage2 val")
        refs = val.rows["caption"].tolist()
        metrics: dict = {"final_train_loss": run.final_loss, "seconds": run.seconds, "steps": run.steps,
                         "samples": run.samples, "pairs": len(train_set),
                         "reads": {part: data.reads(ds) for part, ds in opened.items()},
                         "samples_per_second": run.samples / run.seconds if run.seconds else 0.0}
        if all(world.try_parse(r) is not None for r in refs):
            metrics["val"] = world.score(predicted, refs)
        metrics["val_examples"] = [{"reference": r, "predicted": p} for r, p in list(zip(refs, predicted))[:5]]
        PLOTS.mkdir(parents=True, exist_ok=True)
        plots.loss_curves({"stage 2 caption loss": run.losses}, PLOTS / "loss.png", title="stage 2")
        uri = log_captioner(OUT, params.tracking.model_name, Path(__file__).resolve().parents[1] / "src" / "vlv")
        cost.add_samples(len(val))
        tracking.record("stage2", metrics, METRICS, [PLOTS / "loss.png"], prefix="stage2")
        clear_checkpoints(CKPT)
        acc = metrics.get("val", {})
        print(f"stage2: final loss {run.final_loss:.4f}" + (
            f"; val attribute accuracy {acc['mean']:.1%}, exact {acc['exact']:.1%}" if acc else "") + f"; model {uri}")


if __name__ == "__main__":
    main()
