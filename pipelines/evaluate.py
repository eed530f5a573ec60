"""DVC stage `evaluate`: the captioner on the test split, with the paper's protocol.

Writes metrics/evaluate.json (caption metrics, world attribute accuracy, regeneration
scores), metrics/test_captions.csv (every test image: reference, prediction, per-field
hits) and plots/evaluate/worst.png (the worst-captioned images with their regenerations).
"""

from pathlib import Path

import numpy as np
import pandas as pd

from vlv import config, cost, data, evaluation, inception, plots, tracking, world
from vlv.captioner import Captioner, caption_batches
from vlv.classifier import AttributeClassifier
from vlv.entry import stage

DATA = Path("data/prepared")
MODEL = Path("models/captioner")
METRICS = Path("metrics/evaluate.json")
TABLE = Path("metrics/test_captions.csv")
PLOTS = Path("plots/evaluate")


@stage("evaluate", main_only=True)
def main(params: config.Params) -> None:
    """Caption the test split; score captions and their regenerations."""
    e = params.evaluate
    fid_net = inception.load(e.inception) if e.inception else None  # a bad file fails before any compute
    with tracking.stage_run("evaluate", params):
        model = Captioner.load(MODEL)
        test = data.ShardDataset(DATA, "test", captions=True, limit=e.images)
        x = test.pixel_values()
        refs = test.rows["caption"].tolist()
        cfg = model.config
        predicted = caption_batches(model, x, cfg["num_beams"], cfg["max_new_tokens"], e.batch_size, desc="caption test")
        metrics: dict = {"images": len(test), "num_beams": cfg["num_beams"], "caption": evaluation.caption_scores(predicted, refs, e.meteor),
                         "reads": {"eval": data.reads(test)}}  # test captions as references: evaluation, nothing trained
        table = pd.DataFrame({"id": test.rows["id"], "reference": refs, "prediction": predicted})

        is_world = all(world.try_parse(r) is not None for r in refs)
        if is_world:
            metrics["attributes"] = world.score(predicted, refs)
            hits = pd.DataFrame([world.hits(p, r) for p, r in zip(predicted, refs)])
            table = pd.concat([table, hits], axis=1)
        else:
            print("evaluate: the test captions are not shapes-world captions; attribute accuracy skipped")
        TABLE.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(TABLE, index=False)

        regenerated: dict[str, np.ndarray] = {}
        clf_dir = params.components.classifier
        use_classifier = bool(is_world and clf_dir and Path(clf_dir).is_dir())
        if use_classifier or fid_net is not None:
            args = dict(size=params.prepare.image_size, steps=e.regen_steps, guidance_scale=e.guidance_scale,
                        seed=params.seed, batch_size=e.batch_size)
            regenerated = {
                "regen_generated": evaluation.regenerate(params.components.t2i, predicted, desc="regenerate (generated)", **args),
                "regen_reference": evaluation.regenerate(params.components.t2i, refs, desc="regenerate (reference)", **args),
            }
        if use_classifier:
            metrics["regeneration"] = evaluation.regeneration_scores(AttributeClassifier.load(clf_dir), x, refs, regenerated)
        if fid_net is not None:  # the paper's headline: FID of regenerations from generated vs reference captions
            metrics["fid"] = evaluation.inception_scores(fid_net, plots.to_uint8(x), regenerated)
        if not regenerated:
            print("evaluate: no attribute classifier (components.classifier) and no evaluate.inception; regeneration scores skipped")

        PLOTS.mkdir(parents=True, exist_ok=True)
        order = np.argsort(table["mean"].to_numpy(), kind="stable")[: e.gallery] if is_world else np.arange(min(e.gallery, len(test)))
        originals = plots.to_uint8(x)
        rows = [[originals[i]] + [regenerated[k][i] for k in regenerated] for i in order]
        titles = [f"ref: {refs[i]}\npred: {predicted[i]}" for i in order]
        cols = ["original"] + [{"regen_generated": "from prediction", "regen_reference": "from reference"}[k] for k in regenerated]
        plots.image_grid(rows, PLOTS / "worst.png", row_titles=titles, col_titles=cols,
                         title=f"the {len(order)} worst-captioned test images" if is_world else "test images")
        cost.add_samples(len(test) * (1 + len(regenerated)))  # captioned + regenerated images
        tracking.record("evaluate", metrics, METRICS, [PLOTS / "worst.png", TABLE], prefix="evaluate")
        c = metrics["caption"]
        line = f"evaluate: BLEU-4 {c['bleu_4']:.3f} CIDEr {c['cider']:.3f}"
        if is_world:
            a = metrics["attributes"]
            line += f" | attribute accuracy {a['mean']:.1%}, exact {a['exact']:.1%}"
        if "regeneration" in metrics:
            r = metrics["regeneration"]
            line += (f" | regenerations: accuracy {r['regen_generated_attribute_accuracy']:.1%} (references "
                     f"{r['regen_reference_attribute_accuracy']:.1%}), FD {r['regen_generated_frechet']:.2f} "
                     f"(references {r['regen_reference_frechet']:.2f})")
        if "fid" in metrics:
            f = metrics["fid"]
            line += f" | FID {f['regen_generated_fid']:.2f} (references {f['regen_reference_fid']:.2f})"
        print(line)


if __name__ == "__main__":
    main()
