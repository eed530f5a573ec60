"""Evaluation of a captioner on the test split, with the paper's protocol in miniature.

- caption metrics: BLEU-1..4, ROUGE-L, CIDEr (pycocoevalcap scorers; METEOR and the PTB
  tokenizer need Java: without it METEOR is reported as skipped and captions are
  tokenised by lower-casing and splitting on non-letters);
- shapes world: per-field attribute accuracy and exact match (``world.score``) and every
  test image's hits (``world.hits``);
- regeneration (the paper's headline): caption -> frozen T2I decoder -> image, scored by
  the world's attribute classifier (``vlv.classifier``): its attribute accuracy on the
  regenerations and the Fréchet distance of their features to the originals', for the
  generated captions and, as the paper does for COCO's own captions, for the references.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import world
from .data import to_tensor


# ------------------------------------------------------------------------- caption metrics
def _simple_tokens(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def caption_scores(predictions: Sequence[str], references: Sequence[str | Sequence[str]], meteor: bool = True) -> dict:
    """BLEU-1..4, ROUGE-L, CIDEr (and METEOR with Java, unless ``meteor`` is off) of predictions
    vs references (one or several references per image)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    gts = {i: [{"caption": c} for c in rs] for i, rs in enumerate(refs)}
    res = {i: [{"caption": p}] for i, p in enumerate(predictions)}
    java = shutil.which("java")
    if java:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tok = PTBTokenizer()
        gts, res = tok.tokenize(gts), tok.tokenize(res)
    else:
        gts = {i: [_simple_tokens(c["caption"]) for c in v] for i, v in gts.items()}
        res = {i: [_simple_tokens(c["caption"]) for c in v] for i, v in res.items()}
    # an empty prediction is a legitimate (bad) caption; the scorers need one token
    res = {i: [v[0] if v and v[0].strip() else "<empty>"] for i, v in res.items()}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"bleu_{n + 1}": float(b) for n, b in enumerate(bleu)}
    out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    out["cider"] = float(Cider().compute_score(gts, res)[0])
    out["tokenizer"] = "ptb" if java else "simple (PTBTokenizer needs Java)"
    if not meteor:
        out["meteor"] = None
        out["meteor_skipped"] = "evaluate.meteor is false"
    elif java:
        from pycocoevalcap.meteor.meteor import Meteor

        try:
            out["meteor"] = float(Meteor().compute_score(gts, res)[0])
        except (OSError, ValueError) as err:  # the Java process died (e.g. cannot reserve its 2 GB heap)
            out["meteor"] = None
            out["meteor_skipped"] = f"the METEOR Java process failed ({type(err).__name__}: {err})"
    else:
        out["meteor"] = None
        out["meteor_skipped"] = "no java on PATH (METEOR is a Java program); install a JRE to report it"
    return out


# ----------------------------------------------------------------------------- regeneration
@torch.no_grad()
def regenerate(t2i_folder: str | Path, captions: Sequence[str], size: int, steps: int, guidance_scale: float,
               seed: int, batch_size: int = 32, desc: str = "regenerate") -> np.ndarray:
    """Images (N x S x S x 3 uint8) drawn by the frozen T2I folder from ``captions``, loaded
    as a standard StableDiffusionPipeline with DDIM. Image i's starting noise depends only
    on (seed, i), so two caption lists are compared on the same noise."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from tqdm.auto import tqdm

    diffusers_logging.disable_progress_bar()  # "Loading pipeline components...": clutter (vlv/__init__.py)
    pipe = StableDiffusionPipeline.from_pretrained(t2i_folder, use_safetensors=True, local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out = []
    for i in tqdm(range(0, len(captions), batch_size), desc=desc, unit="batch"):
        chunk = list(captions[i : i + batch_size])
        gens = [torch.Generator().manual_seed(seed * 1_000_003 + i + j) for j in range(len(chunk))]
        images = pipe(chunk, height=size, width=size, num_inference_steps=steps, guidance_scale=guidance_scale,
                      generator=gens, output_type="np").images
        out.append((images * 255).round().astype(np.uint8))
    return np.concatenate(out)


def regeneration_scores(classifier, originals: torch.Tensor, references: Sequence[str],
                        regenerated: dict[str, np.ndarray], batch_size: int = 64) -> dict:
    """Attribute accuracy (classifier reading vs the original's reference) of the originals
    and of each set of regenerations, and the Fréchet distance of each set to the originals
    in the classifier's feature space."""
    from .classifier import frechet_distance

    def read(x: torch.Tensor) -> tuple[list[str], np.ndarray]:
        captions, feats = [], []
        for i in range(0, len(x), batch_size):
            captions += classifier.predict(x[i : i + batch_size])
            feats.append(classifier.features(x[i : i + batch_size]).double().numpy())
        return captions, np.concatenate(feats)

    refs = list(references)
    seen, real_feats = read(originals)
    out = {"classifier_accuracy_originals": world.score(seen, refs)["mean"]}
    for name, images in regenerated.items():
        seen, feats = read(to_tensor(images))
        scored = world.score(seen, refs)
        out[f"{name}_attribute_accuracy"] = scored["mean"]
        out[f"{name}_exact"] = scored["exact"]
        out[f"{name}_frechet"] = frechet_distance(real_feats, feats)
    out["feature_dim"] = int(real_feats.shape[1])
    out["images"] = len(refs)
    return out


def inception_scores(net, originals: np.ndarray, regenerated: dict[str, np.ndarray]) -> dict:
    """FID: the Fréchet distance of each set of regenerations to the originals (all N x S x S x 3
    uint8) in the 2048-d pool features of the FID Inception network (vlv.inception)."""
    from tqdm.auto import tqdm

    from .classifier import frechet_distance

    real = net.features(originals)
    out = {"images": len(originals), "feature_dim": int(real.shape[1])}
    for name, images in tqdm(regenerated.items(), desc="FID Inception", unit="set"):
        out[f"{name}_fid"] = frechet_distance(real, net.features(images))
    return out
