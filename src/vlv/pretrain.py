"""The embedded world's "pretrained" parts: what the paper downloads, trained here.

- the text-to-image decoder: AutoencoderKL (first, on images), then a CLIP-architecture
  text encoder + UNet2DConditionModel on (latents, captions) with caption dropout for
  classifier-free guidance; saved as one standard diffusers folder;
- the caption LM: a Qwen2-architecture causal LM on the caption corpus; saved as a
  standard transformers folder with its tokenizer;
- the world's attribute classifier (its "Inception", used by evaluate);
- the vision encoder: Florence-2 (from ``components.vision_card``) trained on Florence-2's own
  region task <OD> with one generic label (florence.py): it learns where objects are and how
  large, and never reads a caption (the paper starts from a pretrained Florence-2-large).
Each is trained by the shared loop (vlv.train) on the ``web`` split (``prepare.web_images``, its
own images, disjoint from images / pairs / val / test): in the paper these parts were pretrained
on web-scale data before VLV ever saw them. The default run does not train them: it loads the
shipped folders (pretrained/shapes-world/, trained by profiles/pretrain.yaml) and checks them
(``check_parts``), as the paper profile loads SD-2.1. ``pretrain.mode: train`` trains the parts
whose component folder is models/pretrained/<part> (``config.MADE_HERE``). Each part's record
says what it read (``open_data``, ``data.reads``: metrics "reads").
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from . import cards, components, data, florence, latents, plots, teacher, tracking, vocab, world
from .classifier import AttributeClassifier
from .config import T2I_CARD, Params
from .errors import VLVError
from .train import fingerprint, per_sample_randn, sample_generators, spec_from, train


class VAEObjective(nn.Module):
    """AutoencoderKL: reconstruction MSE + kl_weight * KL to the unit Gaussian."""

    def __init__(self, vae, kl_weight: float, seed: int):
        super().__init__()
        self.vae, self.kl_weight, self.seed = vae, kl_weight, seed

    def forward(self, batch: dict) -> torch.Tensor:
        x = batch["pixel_values"]
        dist = self.vae.encode(x).latent_dist
        eps = per_sample_randn(tuple(dist.mean.shape[1:]), sample_generators(batch["sample_id"], self.seed, salt=1)).to(x)
        recon = self.vae.decode(dist.mean + dist.std * eps).sample
        return ((recon - x) ** 2).mean() + self.kl_weight * dist.kl().mean()


@torch.no_grad()
def latent_scaling(vae, images: torch.Tensor) -> float:
    """1 / std of the latents, as SD's 0.18215 was chosen: unit-variance diffusion space."""
    vae.eval()
    z = torch.cat([vae.encode(images[i : i + 64]).latent_dist.mean for i in range(0, len(images), 64)])
    return float(1.0 / z.std())


class ContrastiveTextObjective(nn.Module):
    """CLIP's own pretraining, on the world's (image, caption) pairs: the T2I text encoder
    (trained in place) and a tiny ViT (the card's ``clip_vision``), each projected to a shared
    space; symmetric InfoNCE over the batch with a learnt temperature. Afterwards only the
    text encoder is kept, and the teacher's UNet learns on it frozen, as SD's did on CLIP's.

    Why: on a short teacher budget, a text encoder trained jointly with the UNet from scratch
    learnt little beyond the background; pretrained contrastively and frozen, as SD's CLIP is,
    it gives the UNet captions whose colours differ from the start (measured: docs/NOTES.md,
    2026-11-29, the VAE schedule, the text encoder and the teacher's budget)."""

    def __init__(self, text_encoder, tokenizer, card: dict):
        from transformers import CLIPConfig, CLIPModel

        super().__init__()
        vision = cards.build(card, "clip_vision")
        config = CLIPConfig(text_config=text_encoder.config.to_dict(), vision_config=vision.config.to_dict(),
                            projection_dim=int(text_encoder.config.projection_dim))
        self.clip = CLIPModel(config)
        self.clip.text_model, self.clip.vision_model = text_encoder, vision
        self.tokenizer = tokenizer

    def logits(self, pixel_values: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        """Caption x image similarity logits (row i = caption i)."""
        ids = self.tokenizer(list(captions), padding=True, truncation=True, return_tensors="pt").input_ids
        return self.clip(input_ids=ids.to(pixel_values.device), pixel_values=pixel_values).logits_per_text

    def forward(self, batch: dict) -> torch.Tensor:
        logits = self.logits(batch["pixel_values"], batch["caption"])
        target = torch.arange(logits.shape[0], device=logits.device)
        return (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.t(), target)) / 2

    @torch.no_grad()
    def retrieval_accuracy(self, pixel_values: torch.Tensor, captions: Sequence[str]) -> float:
        """Share of captions whose own image scores highest among ``pixel_values`` (chance 1/N)."""
        self.eval()
        logits = self.logits(pixel_values, captions)
        return float((logits.argmax(1) == torch.arange(len(captions), device=logits.device)).float().mean())


class LMObjective(nn.Module):
    """Causal LM on captions, each followed by end-of-text so the model learns to stop."""

    def __init__(self, model, tokenizer, max_tokens: int = 48):
        super().__init__()
        self.model, self.tokenizer, self.max_tokens = model, tokenizer, max_tokens

    def forward(self, batch: dict) -> torch.Tensor:
        eos = self.tokenizer.eos_token
        enc = self.tokenizer([c + eos for c in batch["caption"]], padding=True, truncation=True,
                             max_length=self.max_tokens, return_tensors="pt")
        ids, mask = enc.input_ids.to(self.model.device), enc.attention_mask.to(self.model.device)
        labels = ids.masked_fill(mask == 0, -100)
        return self.model(input_ids=ids, attention_mask=mask, labels=labels).loss


# ---------------------------------------------------------------------------- checks
@torch.no_grad()
def vae_check(vae, images: torch.Tensor, captions: Sequence[str]) -> dict:
    """Val MSE of the VAE's reconstructions (posterior mean), and, for shapes-world captions, the
    analytic reader's agreement of the reconstructions with the captions, per field: the teacher
    can only paint what its VAE decodes."""
    was_training = vae.training
    vae.eval()
    recon = torch.cat([vae.decode(vae.encode(images[i : i + 64]).latent_dist.mean).sample for i in range(0, len(images), 64)])
    vae.train(was_training)
    report = {"vae_val_mse": float(((recon.clamp(-1, 1) - images) ** 2).mean())}
    truths = [world.try_parse(c) for c in captions]
    if all(t is not None for t in truths):
        reads = [world.read_image(im) for im in plots.to_uint8(recon)]
        report |= {f"vae_val_reader_{k}": v for k, v in world.agreement_scores(reads, truths).items()}
    return report


def lm_check(model, tokenizer, starts: Sequence[str] = ("a small red", "a large blue", "a small green circle at the")) -> dict:
    """Greedy continuations of caption starts; share that parse as shapes-world captions."""
    model.eval()
    samples = []
    with torch.no_grad():
        for s in starts:
            ids = tokenizer(s, return_tensors="pt").input_ids.to(model.device)
            out = model.generate(ids, max_new_tokens=40, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
            samples.append(tokenizer.decode(out[0], skip_special_tokens=True).strip())
    ok = [world.try_parse(t) is not None for t in samples]
    return {"grammatical_rate": float(np.mean(ok)), "samples": samples}


# ------------------------------------------------------------------------------ stage
# What each part trains on: (split, what it reads besides the images). The parts the paper
# downloads (T2I, LM, attribute classifier) learn from the web split with its captions (the LM
# reads them as text only). The vision encoder is the captioning side's: it reads the web
# split's images with their object boxes and never a caption (florence.py, the <OD> pretext).
PART_READS = {"vae": ("web", ""), "clip": ("web", "captions"), "teacher": ("web", "captions"),
              "llm": ("web", "captions"), "classifier": ("web", "captions"), "vision": ("web", "boxes")}
FOLDER_PARTS = {"t2i": ("vae", "clip", "teacher"), "llm": ("llm",), "vision": ("vision",), "classifier": ("classifier",)}


def open_data(params: Params, data_root: Path, parts: Sequence[str] = tuple(PART_READS)) -> dict[str, data.ShardDataset]:
    """The dataset each of ``parts`` trains on (one ShardDataset per (split, reads), shared)."""
    opened: dict[tuple[str, str], data.ShardDataset] = {}
    for split, extra in dict.fromkeys(PART_READS[part] for part in parts):
        opened[split, extra] = ds = data.ShardDataset(data_root, split, captions=extra == "captions", boxes=extra == "boxes")
        if not len(ds):
            raise VLVError(f"{data_root}: the {split} split is empty, and pretrain.mode train trains the parts the paper "
                           f"downloads on it; set prepare.web_images (synthetic source) above 0 and run prepare again")
    return {part: opened[PART_READS[part]] for part in parts}


def part_reads(part: str, dataset) -> dict:
    """``data.reads`` of one part (the LM reads captions only)."""
    return data.reads(dataset, images=part != "llm")


def train_parts(params: Params, data_root: Path, out: Path, ckpt: Path, plots_dir: Path,
                latent_cache: Path | None = None) -> dict:
    """``pretrain.mode: train``: train the parts whose component folder is this stage's own
    (``config.MADE_HERE``: models/pretrained/<part>), save them there as standard HF folders,
    and check every component folder the run will use (``check_parts``)."""
    p, seed = params.pretrain, params.seed
    made = params.made_here()
    names = [n for f in made for n in FOLDER_PARTS[f] if n != "clip" or p.clip.steps]
    parts = open_data(params, data_root, names)
    data_hash = data.manifest_hash(data_root)
    main = tracking.is_main()  # under accelerate launch every process trains; the main one writes and checks
    tmp = out.with_name(out.name + ".partial")
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    runs, report = {}, {}
    corpus = next((parts[n].rows["caption"].tolist() for n in ("teacher", "llm", "classifier") if n in parts), None)

    if "t2i" in made:
        card = cards.load_card(T2I_CARD)
        torch.manual_seed(seed)
        t2i = components.build_t2i(card, vocab.clip_tokenizer(corpus))
        # Conv weights in channels-last (NHWC) layout while the VAE and the UNet train and encode:
        # oneDNN's fast layout on CPU; save_t2i writes them back in the default layout.
        t2i.vae.to(memory_format=torch.channels_last)
        t2i.unet.to(memory_format=torch.channels_last)
        runs["vae"] = train(VAEObjective(t2i.vae, p.vae.kl_weight, seed), parts["vae"], spec_from(p.vae, "pretrain.vae", seed),
                            ckpt / "vae", fingerprint(card, p.vae, data_hash, seed), log=tracking.metric_logger("pretrain/vae"))
        web = parts["teacher"]
        sample = web.pixel_values(1024)
        t2i.vae.register_to_config(scaling_factor=latent_scaling(t2i.vae, sample))
        if p.clip.steps:
            torch.manual_seed(seed)
            contrastive = ContrastiveTextObjective(t2i.text_encoder, t2i.tokenizer, card)
            runs["clip"] = train(contrastive, web, spec_from(p.clip, "pretrain.clip", seed), ckpt / "clip",
                                 fingerprint(card, p.clip, data_hash, seed), log=tracking.metric_logger("pretrain/clip"))
            val = data.ShardDataset(data_root, "val", captions=True)
            report["clip_val_retrieval"] = contrastive.retrieval_accuracy(
                val.pixel_values(), val.rows["caption"].tolist())
            report["clip_val_retrieval_chance"] = 1 / max(1, len(val))
        objective = teacher.TeacherObjective(t2i, p.teacher.caption_dropout, seed, p.teacher.snr_gamma,
                                             p.teacher.high_noise_share, p.teacher.high_noise_from, p.teacher.train_text_encoder)
        cached = latents.WithLatents(web, *latents.encode_cached(t2i.vae, web, latent_cache, desc="pretrain: encode latents"))
        runs["teacher"] = train(objective, cached, spec_from(p.teacher, "pretrain.teacher", seed), ckpt / "teacher",
                                fingerprint(card, p.vae, p.clip, p.teacher, data_hash, seed), log=tracking.metric_logger("pretrain/teacher"))
        report |= {"vae_scaling_factor": float(t2i.vae.config.scaling_factor)}
        if main:
            components.save_t2i(t2i, tmp / "t2i")

    if "llm" in made:
        tok = vocab.qwen2_tokenizer(corpus)
        lm = cards.build("llm-tiny", "model", vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        runs["llm"] = train(LMObjective(lm, tok), parts["llm"], spec_from(p.llm, "pretrain.llm", seed), ckpt / "llm",
                            fingerprint("llm-tiny", p.llm, data_hash, seed), log=tracking.metric_logger("pretrain/llm"))
        lm.generation_config.eos_token_id = tok.eos_token_id
        lm.generation_config.pad_token_id = tok.pad_token_id
        if main:
            lm.save_pretrained(tmp / "llm", safe_serialization=True)
            tok.save_pretrained(tmp / "llm")

    if "vision" in made:  # the captioning side's encoder: Florence-2's <OD> pretext on web boxes, no caption
        lm_tok = tok if "llm" in made else components.load_llm(params.components.llm).tokenizer
        vision_tok = vocab.florence_tokenizer(lm_tok)
        torch.manual_seed(seed)
        fl = components.build_vision(params.components.vision_card, vision_tok, florence.PRETEXT_TASK)
        objective = florence.FlorenceObjective(fl, vision_tok, target="boxes")
        runs["vision"] = train(objective, parts["vision"], spec_from(p.vision, "pretrain.vision", seed), ckpt / "vision",
                               fingerprint(params.components.vision_card, p.vision, data_hash, seed, florence.PRETEXT_TASK),
                               log=tracking.metric_logger("pretrain/vision"))
        if main:
            components.save_vision(fl, tmp / "vision")
            report |= vision_report(params, data_root, fl, objective, vision_tok)

    if "classifier" in made:
        torch.manual_seed(seed)
        clf = AttributeClassifier.from_card("classifier-tiny")
        runs["classifier"] = train(clf, parts["classifier"], spec_from(p.classifier, "pretrain.classifier", seed), ckpt / "classifier",
                                   fingerprint("classifier-tiny", p.classifier, data_hash, seed), log=tracking.metric_logger("pretrain/classifier"))
        if main:
            clf.save(tmp / "classifier")
    if not main:
        return {}
    for folder in made:
        shutil.rmtree(out / folder, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    for child in tmp.iterdir():
        child.rename(out / child.name)
    tmp.rmdir()
    (out / "TRAINED.json").write_text(json.dumps({"trained": made, "loaded": {
        f: getattr(params.components, f) for f in FOLDER_PARTS if f not in made}}, indent=2) + "\n")
    names = {"vae": "vae", "clip": "text encoder (contrastive)", "teacher": "teacher (UNet + CLIP)" if p.teacher.train_text_encoder
             else "teacher (UNet)", "llm": "caption LM", "vision": "Florence-2 <OD> pretext", "classifier": "attribute classifier"}
    plots.loss_curves({names[k]: r.losses for k, r in runs.items()}, plots_dir / "losses.png", title="pretrain losses")
    return {
        **report,
        **{f"{k}_final_loss": r.final_loss for k, r in runs.items()},
        "seconds": {k: r.seconds for k, r in runs.items()},
        "reads": {k: part_reads(k, parts[k]) for k in runs},
        **check_parts(params, data_root, plots_dir),
    }


def vision_report(params: Params, data_root: Path, fl: components.VisionParts, objective, tokenizer) -> dict:
    """What the pretext taught the vision encoder, on val (never trained on): its <OD> answers
    against the true boxes; what it answers when asked for the paper's caption (it has never
    read one: expected to parse as no world caption); and a linear probe per field on its frozen
    features, fit on the pairs' images + labels (the captioning side's budget), beside the same
    probe on the untrained tower of the same card and seed."""
    n = params.pretrain.vision.val_images
    val = data.ShardDataset(data_root, "val", captions=True, boxes=True, limit=n)
    val_x = val.pixel_values()
    size = val_x.shape[-1]
    answers = objective.generate(val_x)
    det = florence.detection_scores(answers, [json.loads(b) for b in val.rows["boxes"]], size)
    caption_ids = components.task_prompt_ids(fl.processor, params.components.vision_task, "vision report")
    captions = objective.generate(val_x, prompt_ids=caption_ids)
    said = world.score(captions, val.rows["caption"].tolist())
    pairs = data.ShardDataset(data_root, "pairs", captions=True)
    pairs_x = pairs.pixel_values()
    probe = florence.linear_probe(florence.image_features(fl, pairs_x), pairs.rows["caption"].tolist(),
                                  florence.image_features(fl, val_x), val.rows["caption"].tolist())
    torch.manual_seed(params.seed)
    untrained = components.build_vision(params.components.vision_card, tokenizer, florence.PRETEXT_TASK)
    probe0 = florence.linear_probe(florence.image_features(untrained, pairs_x), pairs.rows["caption"].tolist(),
                                   florence.image_features(untrained, val_x), val.rows["caption"].tolist())
    return {"vision_val_images": len(val), **{f"vision_od_{k}": v for k, v in det.items()}, "vision_od_samples": answers[:3],
            **{f"vision_caption_{k}": said[k] for k in ("mean", "parsed")}, "vision_caption_samples": captions[:3],
            **{f"vision_probe_{k}": v for k, v in probe.items()}, **{f"vision_probe_untrained_{k}": v for k, v in probe0.items()},
            "vision_probe_pairs": len(pairs)}


def check_parts(params: Params, data_root: Path, plots_dir: Path) -> dict:
    """Read back every shapes-world component folder the run will use, trained here or shipped:
    the VAE's val reconstructions and the teacher's paintings of world captions by the analytic
    reader (and by the attribute classifier), the caption LM's continuations, the classifier's
    val accuracy; the prompt | sample grid in plots_dir. Nothing when the val captions are not
    shapes-world captions (the paper profile: its own verify covers its folders)."""
    c, ev = params.components, params.pretrain.eval
    val = data.ShardDataset(data_root, "val", captions=True)
    refs = val.rows["caption"].tolist()
    if not len(val) or any(world.try_parse(r) is None for r in refs):
        return {}
    val_x = val.pixel_values()
    report = vae_check(components.load_t2i(c.t2i).vae, val_x, refs)
    clf = AttributeClassifier.load(Path(c.classifier)) if c.classifier else None
    if clf is not None:
        report["classifier_val_accuracy"] = world.score(clf.predict(val_x), refs)["mean"]
    llm = components.load_llm(c.llm)
    lm = lm_check(llm.model, llm.tokenizer)
    check = teacher.paint_check(c.t2i, ev.prompts, ev.steps, ev.guidance_scale, params.prepare.image_size,
                                seed=params.seed + 1, classifier=clf)
    plots_dir.mkdir(parents=True, exist_ok=True)
    check.grid(plots_dir / "teacher_samples.png")
    (plots_dir / "teacher_prompts.json").write_text(json.dumps(
        [{"prompt": pr, "read": world.caption(world.read_image(im))} for pr, im in zip(check.prompts, check.images)], indent=2) + "\n")
    return {**{f"teacher_{k}": v for k, v in check.metrics().items()}, **report,
            "lm_grammatical_rate": lm["grammatical_rate"], "lm_samples": lm["samples"]}


def shipped(params: Params) -> dict:
    """The records of the shipped folders the components name (RECORD.json beside them, as
    scripts/ship_pretrained.py writes it): per record, which parts, what their training read
    and cost. The cost report lists it as "pretraining (shipped)"."""
    out = {}
    for part in FOLDER_PARTS:
        folder = getattr(params.components, part)
        record = Path(folder).parent / "RECORD.json" if folder else None
        if record is None or not record.is_file():
            continue
        runs = json.loads(record.read_text()).get("runs", [])
        for run in runs:
            if part in run.get("parts", ()):
                entry = out.setdefault(f"{record.parent.name}/{run['name']}", {"record": str(record), "parts": [], "cost": run.get("cost"),
                                                                             "reads": run.get("reads")})
                entry["parts"].append(part)
    return out
