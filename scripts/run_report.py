"""Write the tables of the committed default run into docs/RESULTS.md from its metrics, so no
number in them is typed by hand. Reads metrics/{prepare,pretrain,stage1,stage2,evaluate,cost}.json
(the outputs of the last `dvc repro`) and replaces the block between `<!-- run:start ... -->` and
`<!-- run:end -->`. pretrain's table follows its mode: the checks of the loaded parts (verify,
the default) or the parts it trained (train).

    python scripts/run_report.py            # rewrite the block
    python scripts/run_report.py --check    # exit 1 if the block is not what the metrics say (the tests run this)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import doc_block

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- run:start (scripts/run_report.py) -->", "<!-- run:end -->"
FIELDS = [("background", 1 / 3), ("count", 1 / 2), ("size", 1 / 2), ("colour", 1 / 6), ("shape", 1 / 3), ("position", 1 / 9)]


def load(stage: str) -> dict:
    return json.loads((ROOT / "metrics" / f"{stage}.json").read_text())


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {round(seconds % 60):02d} s"


def report() -> str:
    m = {s: load(s) for s in ("prepare", "pretrain", "stage1", "stage2", "evaluate", "cost")}
    pre, s1, s2, ev = m["pretrain"], m["stage1"], m["stage2"], m["evaluate"]
    secs = {s: m[s]["cost"]["seconds"] for s in ("prepare", "pretrain", "stage1", "stage2", "evaluate")}
    trained = isinstance(pre.get("seconds"), dict)  # mode train: per-part loop seconds; verify: the checks only
    if trained:
        p = pre["seconds"]
        pretrain_row = (f"VAE {p['vae']:.0f} s, text encoder {p.get('clip', 0):.0f} s, teacher UNet {p['teacher']:.0f} s, "
                        f"LM {p['llm']:.0f} s, Florence-2 {p.get('vision', 0):.0f} s, attribute classifier "
                        f"{pre.get('classifier_seconds', 0):.0f} s; the rest: encoding the latents once and the checks")
    else:
        pretrain_row = (f"loads the shipped parts: one batch through every part ({pre['verify_seconds']:.0f} s), then the "
                        f"teacher paints {pre['teacher_prompts']} world captions and the checks read them back")
    lines = [
        f"Stage times are each stage's `cost.seconds` (the whole stage process); they sum to "
        f"**{minutes(sum(secs.values()))}** (`dvc repro`'s own overhead and `cost_report` come on top). "
        f"Loop times are the `seconds` of the training loops.",
        "",
        "| stage | time | of which |",
        "| --- | ---: | --- |",
        f"| prepare | {secs['prepare']:.0f} s | {m['prepare'].get('accepted', '')} images rendered, checked and sharded |",
        f"| pretrain | {secs['pretrain']:.0f} s | {pretrain_row} |",
        f"| stage1 | {secs['stage1']:.0f} s | {s1['steps']} steps in {s1['seconds']:.0f} s ({s1['samples_per_second']:.0f} samples/s), "
        "then the val metrics |",
        f"| stage2 | {secs['stage2']:.0f} s | {s2['steps']} steps in {s2['seconds']:.0f} s ({s2['samples_per_second']:.0f} samples/s), "
        "then captioning the val images |",
        f"| evaluate | {secs['evaluate']:.0f} s | captioning {ev['images']} test images"
        + (f", then 2 x {ev['images']} regenerations |" if "regeneration" in ev else " |"),
        "",
        f"Pretrained parts (`metrics/pretrain.json`, {'trained by this run' if trained else 'the shipped parts as loaded'}):",
        "",
        "| check | value | chance |",
        "| --- | ---: | ---: |",
        f"| VAE: val MSE | {pre['vae_val_mse']:.4f} | |",
        f"| VAE: val reconstructions read back by the analytic reader (mean of six fields; shape) | "
        f"{pct(pre['vae_val_reader_mean'])} ({pct(pre['vae_val_reader_shape'])}) | |",
        *([f"| text encoder: own image ranked first among the val images | {pct(pre['clip_val_retrieval'])} | "
           f"{pct(pre['clip_val_retrieval_chance'])} |"] if "clip_val_retrieval" in pre else []),
        f"| teacher: its pictures of {pre['teacher_prompts']} world captions read back by the analytic reader "
        f"(mean of six fields) | **{pct(pre['teacher_reader_mean'])}** | |",
        *[f"| teacher, reader: {f} | {pct(pre[f'teacher_reader_{f}'])} | {chance} |" for f, chance in
          (("background", "33%"), ("count", "50%"), ("colour", "17%"), ("shape", "33%"), ("size", "50%"), ("position", "11%"))],
        *([f"| teacher: read back by the attribute classifier (mean) | {pct(pre['teacher_classifier_mean'])} | |"]
          if "teacher_classifier_mean" in pre else []),
        f"| caption LM: grammatical continuations | {pct(pre['lm_grammatical_rate'])} | |",
        f"| attribute classifier: val accuracy | {pct(pre['classifier_val_accuracy'])} | |",
        *([f"| Florence-2 (the vision encoder) captioning {pre['vision_val_images']} val images itself: attribute accuracy "
           f"(exact match) | {pct(pre['vision_val_mean'])} ({pct(pre['vision_val_exact'])}) | |"] if "vision_val_mean" in pre else []),
        "",
        f"Stage 1 (`metrics/stage1.json`): {s1['images']} val images x {s1['draws']} noise draws, the same noise and "
        "timesteps for every conditioning:",
        "",
        "| conditioning | denoising loss |",
        "| --- | ---: |",
        f"| (a) the image's VLV embedding | {s1['loss_vlv']:.4f} |",
        f"| (b) the empty caption | {s1['loss_uncond']:.4f} |",
        f"| (c) the true caption | {s1['loss_caption']:.4f} |",
        f"| (d) another image's VLV embedding | {s1['loss_shuffled']:.4f} |",
        "",
        f"(a) beats (b) by {s1['gain_vlv']:.4f} ± {s1['gain_vlv_se']:.4f} (z = {s1['gain_vlv_z']:.1f}); (c) beats (b) by "
        f"{s1['gain_caption']:.4f} ± {s1['gain_caption_se']:.4f} (z = {s1['gain_caption_z']:.1f}); (d) is worse than (b) by "
        f"{s1['shuffled_minus_uncond']:.3f} ± {s1['shuffled_minus_uncond_se']:.3f}. Distillation gap (b-a)/(b-c) = "
        f"**{s1['distillation_gap']:.2f}**.",
        "",
    ]
    if "recon_reader_mean" in s1:
        import yaml  # the guidance and steps the committed run used: its stage1 params in dvc.lock

        used = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]["stage1"]["params"]["params.yaml"]["stage1"]["eval"]
        guidance, steps = used["guidance_scale"], used["recon_steps"]
        fields = ("mean", "background", "count", "colour", "shape", "size", "position")
        row = lambda name, kind: " | ".join(pct(s1[f"{name}_{kind}_{f}"]) if f"{name}_{kind}_{f}" in s1 else "-" for f in fields)  # noqa: E731
        lines += [
            f"The same val images painted back by the frozen teacher (CFG {guidance:g}, "
            f"{steps} DDIM steps) and read back per field, by the analytic reader of the spec and "
            "by the attribute classifier (grid: `plots/stage1/reconstructions.png`):",
            "",
            "| painted from | read by | " + " | ".join(fields) + " |",
            "| --- | --- | " + " | ".join("---:" for _ in fields) + " |",
            f"| the VLV embedding | reader | {row('recon', 'reader')} |",
            f"| the VLV embedding | classifier | {row('recon', 'classifier')} |",
            f"| the true caption | reader | {row('caption', 'reader')} |",
            f"| the true caption | classifier | {row('caption', 'classifier')} |",
            "",
        ]
    a, c = ev["attributes"], ev["caption"]
    val = s2["val"]
    lines += [
        f"Stage 2 and evaluate (`metrics/stage2.json` on {s2.get('pairs', '')} pairs; `metrics/evaluate.json` on "
        f"{ev['images']} test images, {ev['num_beams']} beam): mean attribute accuracy **{pct(a['mean'])}** on test "
        f"({pct(val['mean'])} on val), exact match {pct(a['exact'])}.",
        "",
        "| field | test | val | chance |",
        "| --- | ---: | ---: | ---: |",
        *[f"| {f} | {pct(a[f])} | {pct(val[f])} | {pct(ch)} |" for f, ch in FIELDS],
        "",
        f"Caption metrics: BLEU-4 {c['bleu_4']:.3f}, CIDEr {c['cider']:.2f}, ROUGE-L {c['rouge_l']:.3f}, METEOR "
        + (f"{c['meteor']:.3f}" if c.get("meteor") is not None else f"skipped ({c.get('meteor_skipped')})") + ".",
    ]
    if "regeneration" in ev:
        r = ev["regeneration"]
        lines += [
            "",
            f"Regeneration through the frozen teacher, read by the attribute classifier (which reads the originals at "
            f"{pct(r['classifier_accuracy_originals'])}):",
            "",
            "| regenerated from | attribute accuracy | Fréchet distance to the originals |",
            "| --- | ---: | ---: |",
            f"| generated captions | {pct(r['regen_generated_attribute_accuracy'])} | {r['regen_generated_frechet']:.2f} |",
            f"| true captions | {pct(r['regen_reference_attribute_accuracy'])} | {r['regen_reference_frechet']:.2f} |",
        ]
    cost = m["cost"]
    lines += ["", f"Cost (`reports/cost.md`): {cost['device_hours']:.3f} core-hours, ${cost['total_usd']:.3f} of the "
                  f"${cost['budget_usd']:,.0f} budget."]
    shipped = cost.get("shipped_pretraining") or {}
    if shipped:
        lines[-1] += (" The shipped parts' one-off pretraining (`pretrained/shapes-world/RECORD.json`): "
                      + "; ".join(f"{', '.join(v['parts'])}: {v['device_hours']:.2f} {v['device_kind']} device-hours, "
                                  f"${v['usd']:.3f}" for v in shipped.values()) + ".")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/RESULTS.md's block differs from the metrics")
    args = ap.parse_args()
    return doc_block.write(START, END, report(), args.check, "run_report", "run tables (from metrics/*.json)")

if __name__ == "__main__":
    raise SystemExit(main())
