"""DVC stage `pretrain`: the parts the paper downloads, trained on the shapes world.

Embedded profile: trains the T2I decoder (VAE, CLIP text encoder + tokenizer, UNet) and
the caption LM, saves them as standard HF folders under models/pretrained/, and checks
them (colour check through StableDiffusionPipeline, LM continuations). Paper profile:
only verifies that the three local folders load.
"""

import json
import shutil
from pathlib import Path

import mlflow
import torch

from vlv import cards, components, config, data, plots, pretrain, tracking, vocab
from vlv.cli import stage
from vlv.train import clear_checkpoints, fingerprint, spec_from, train

DATA = Path("data/prepared")
OUT = Path("models/pretrained")
CKPT = Path("checkpoints/pretrain")
METRICS = Path("metrics/pretrain.json")
PLOTS = Path("plots/pretrain")


def verify_paper_folders(params: config.Params) -> dict:
    c = params.components
    t2i = components.load_t2i(c.t2i)
    vis = components.vision(c.vision, c.vision_card)
    llm = components.load_llm(c.llm)
    sizes = {
        "t2i_unet_params": components.param_count(t2i.unet),
        "vision_params": components.param_count(vis.model),
        "llm_params": components.param_count(llm.model),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "VERIFIED.json").write_text(json.dumps({"t2i": c.t2i, "vision": c.vision, "llm": c.llm, **sizes}, indent=2) + "\n")
    return sizes


def train_embedded(params: config.Params) -> dict:
    p, seed = params.pretrain, params.seed
    dataset = data.ShardDataset(DATA, "images", captions=True)
    corpus = dataset.rows["caption"].tolist()
    data_hash = data.manifest_hash(DATA)
    card = cards.load_card("t2i-tiny")
    tmp = OUT.with_name(OUT.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)

    t2i = components.build_t2i(card, vocab.clip_tokenizer(corpus))
    torch.manual_seed(seed)
    vae_run = train(pretrain.VAEObjective(t2i.vae, p.vae.kl_weight, seed), dataset, spec_from(p.vae, "pretrain.vae", seed),
                    CKPT / "vae", fingerprint(card, p.vae, data_hash, seed), log=tracking.metric_logger("pretrain/vae"))
    sample = torch.stack([dataset[i]["pixel_values"] for i in range(min(1024, len(dataset)))])
    t2i.vae.register_to_config(scaling_factor=pretrain.latent_scaling(t2i.vae, sample))
    teacher = pretrain.TeacherObjective(t2i, p.teacher.caption_dropout, seed, p.teacher.snr_gamma,
                                        p.teacher.high_noise_share, p.teacher.high_noise_from)
    teacher_run = train(teacher, dataset, spec_from(p.teacher, "pretrain.teacher", seed), CKPT / "teacher",
                        fingerprint(card, p.vae, p.teacher, data_hash, seed), log=tracking.metric_logger("pretrain/teacher"))
    components.save_t2i(t2i, tmp / "t2i")

    tok = vocab.qwen2_tokenizer(corpus)
    lm = cards.build("llm-tiny", "model", vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    lm_run = train(pretrain.LMObjective(lm, tok), dataset, spec_from(p.llm, "pretrain.llm", seed), CKPT / "llm",
                   fingerprint("llm-tiny", p.llm, data_hash, seed), log=tracking.metric_logger("pretrain/llm"))
    lm.generation_config.eos_token_id = tok.eos_token_id
    lm.generation_config.pad_token_id = tok.pad_token_id
    lm.save_pretrained(tmp / "llm", safe_serialization=True)
    tok.save_pretrained(tmp / "llm")
    if OUT.exists():
        shutil.rmtree(OUT)
    tmp.rename(OUT)

    # checks, on the saved folders through the standard loaders
    check = pretrain.colour_check(OUT / "t2i", p.eval.prompts, p.eval.steps, p.eval.guidance_scale, params.prepare.image_size, seed=seed + 1)
    llm_parts = components.load_llm(OUT / "llm", param="models/pretrained/llm")
    lm_report = pretrain.lm_check(llm_parts.model, llm_parts.tokenizer)
    n_show = min(24, check.n)
    plots.image_grid([list(check.images[i : i + 8]) for i in range(0, n_show, 8)], PLOTS / "teacher_samples.png",
                     title=f"teacher samples (single-object prompts): prompted colour dominant in {check.rate:.0%}, "
                           f"prompted background in {check.background_rate:.0%}")
    (PLOTS / "teacher_prompts.json").write_text(json.dumps(
        [{"prompt": pr, "dominant": d} for pr, d in zip(check.prompts, check.predicted)], indent=2) + "\n")
    plots.loss_curves({"vae": vae_run.losses, "teacher (UNet + CLIP)": teacher_run.losses, "caption LM": lm_run.losses},
                      PLOTS / "losses.png", title="pretrain losses")
    return {
        "teacher_colour_rate": check.rate, "teacher_colour_chance": 1 / 6, "teacher_colour_prompts": check.n,
        "teacher_background_rate": check.background_rate, "teacher_background_chance": 1 / 3,
        "lm_grammatical_rate": lm_report["grammatical_rate"], "lm_samples": lm_report["samples"],
        "vae_final_loss": vae_run.final_loss, "teacher_final_loss": teacher_run.final_loss, "lm_final_loss": lm_run.final_loss,
        "vae_scaling_factor": float(t2i.vae.config.scaling_factor),
        "seconds": {"vae": vae_run.seconds, "teacher": teacher_run.seconds, "llm": lm_run.seconds},
    }


@stage("pretrain")
def main(params: config.Params) -> None:
    """Train (embedded) or verify (paper) the pretrained parts."""
    PLOTS.mkdir(parents=True, exist_ok=True)
    with tracking.stage_run("pretrain", params):
        if params.profile == "paper":
            metrics = {"verified": 1, **verify_paper_folders(params)}
        else:
            metrics = train_embedded(params)
            for f in sorted(PLOTS.glob("*")):
                mlflow.log_artifact(str(f), "pretrain")
            clear_checkpoints(CKPT)
        METRICS.parent.mkdir(parents=True, exist_ok=True)
        METRICS.write_text(json.dumps(metrics, indent=2) + "\n")
        mlflow.log_metrics({f"pretrain/{k}": float(v) for k, v in config.flatten(metrics).items() if isinstance(v, (int, float))})
        print(f"pretrain: {json.dumps({k: v for k, v in metrics.items() if k != 'lm_samples'})}")


if __name__ == "__main__":
    main()
