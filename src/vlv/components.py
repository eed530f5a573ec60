"""The one factory for model parts: local Hugging Face folders, or architecture cards.

- ``load_t2i(folder)``: the frozen text-to-image decoder from a diffusers folder in the
  stable-diffusion-2-1-base layout (VAE, CLIP text encoder, tokenizer, UNet, scheduler).
- ``load_vision(folder)`` / ``build_vision(card)``: native transformers Florence-2.
- ``load_llm(folder)``: any transformers causal LM folder with its tokenizer.

Weights load with safetensors only, from local files only; a hub id is never resolved
(``HF_HUB_OFFLINE`` is set when vlv is imported) and no remote code runs. A missing or
malformed folder raises one line naming the param, the path and the layout expected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import cards
from .errors import VLVError

T2I_LAYOUT = {
    "model_index.json": "file",
    "vae/config.json": "file",
    "text_encoder/config.json": "file",
    "tokenizer": "dir",
    "unet/config.json": "file",
    "scheduler/scheduler_config.json": "file",
}
T2I_DESCRIPTION = "a diffusers folder in the stable-diffusion-2-1-base layout (model_index.json, vae/, text_encoder/, tokenizer/, unet/, scheduler/)"
LLM_DESCRIPTION = "a transformers causal-LM folder (config.json, *.safetensors, tokenizer files)"
VISION_DESCRIPTION = "a transformers Florence-2 folder (config.json with model_type florence2, *.safetensors, tokenizer files)"


def _check_folder(path: str | Path | None, param: str, layout: dict[str, str], description: str) -> Path:
    if not path:
        raise VLVError(f"{param} is not set; point it at {description}")
    folder = Path(path)
    if not folder.is_dir():
        raise VLVError(f"{param}={folder}: folder not found; it must be {description}")
    for rel, kind in layout.items():
        p = folder / rel
        if not (p.is_dir() if kind == "dir" else p.is_file()):
            raise VLVError(f"{param}={folder}: {rel} is missing; it must be {description}")
    return folder


def _check_safetensors(folder: Path, param: str, description: str) -> None:
    if not any(folder.glob("*.safetensors")):
        found = sorted(p.name for p in folder.iterdir())[:6]
        raise VLVError(f"{param}={folder}: no *.safetensors weights (found {found}); only safetensors are loaded, it must be {description}")


def _quiet(fn, *args, param: str, folder: Path, description: str, **kwargs):
    """Call a from_pretrained; turn its errors into one line."""
    try:
        return fn(*args, **kwargs)
    except VLVError:
        raise
    except Exception as err:  # the libraries raise many types for a bad folder
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise VLVError(f"{param}={folder}: cannot load ({type(err).__name__}: {first[:300]}); it must be {description}") from None


# ------------------------------------------------------------------------------- t2i
@dataclass
class T2IParts:
    vae: Any
    text_encoder: Any
    tokenizer: Any
    unet: Any
    scheduler: Any  # the training noise schedule (DDPM form of the folder's scheduler config)

    def frozen(self) -> "T2IParts":
        for m in (self.vae, self.text_encoder, self.unet):
            m.requires_grad_(False)
            m.eval()
        return self


def load_t2i(folder: str | Path, param: str = "components.t2i") -> T2IParts:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    path = _check_folder(folder, param, T2I_LAYOUT, T2I_DESCRIPTION)
    for sub in ("vae", "text_encoder", "unet"):
        _check_safetensors(path / sub, param, T2I_DESCRIPTION)
    kw = dict(param=param, folder=path, description=T2I_DESCRIPTION)
    st = dict(use_safetensors=True, local_files_only=True)
    return T2IParts(
        vae=_quiet(AutoencoderKL.from_pretrained, path, subfolder="vae", **st, **kw),
        text_encoder=_quiet(CLIPTextModel.from_pretrained, path / "text_encoder", **st, **kw),
        tokenizer=_quiet(AutoTokenizer.from_pretrained, path / "tokenizer", local_files_only=True, **kw),
        unet=_quiet(UNet2DConditionModel.from_pretrained, path, subfolder="unet", **st, **kw),
        scheduler=_quiet(DDPMScheduler.from_pretrained, path, subfolder="scheduler", local_files_only=True, **kw),
    )


def load_text_encoder(folder: str | Path, param: str = "components.t2i"):
    """Only the CLIP text encoder and tokenizer of a T2I folder (what stage 2 needs)."""
    from transformers import AutoTokenizer, CLIPTextModel

    path = _check_folder(folder, param, T2I_LAYOUT, T2I_DESCRIPTION)
    _check_safetensors(path / "text_encoder", param, T2I_DESCRIPTION)
    kw = dict(param=param, folder=path, description=T2I_DESCRIPTION)
    return (_quiet(CLIPTextModel.from_pretrained, path / "text_encoder", use_safetensors=True, local_files_only=True, **kw),
            _quiet(AutoTokenizer.from_pretrained, path / "tokenizer", local_files_only=True, **kw))


def build_t2i(card: str | dict, tokenizer=None) -> T2IParts:
    """Random-weight T2I parts from an architecture card (text vocab from ``tokenizer``)."""
    extra = {"vocab_size": len(tokenizer)} if tokenizer is not None else {}
    return T2IParts(
        vae=cards.build(card, "vae"),
        text_encoder=cards.build(card, "text_encoder", **extra),
        tokenizer=tokenizer,
        unet=cards.build(card, "unet"),
        scheduler=cards.build(card, "scheduler"),
    )


def save_t2i(parts: T2IParts, folder: str | Path) -> Path:
    """Write parts as a standard diffusers folder (StableDiffusionPipeline layout). Conv weights
    trained in channels-last layout go back to the default one first: safetensors stores only
    contiguous tensors."""
    from diffusers import StableDiffusionPipeline

    for module in (parts.vae, parts.unet):
        module.to(memory_format=torch.contiguous_format)

    pipe = StableDiffusionPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
        scheduler=parts.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


# ---------------------------------------------------------------------------- vision
@dataclass
class VisionParts:
    model: Any  # Florence2ForConditionalGeneration
    prompt_ids: list[int]  # the task prompt's token ids (image tokens are put before them)
    image_size: int
    image_mean: list[float]
    image_std: list[float]
    source: str  # folder path or "card:<name>"


TASK_PROMPT = "Describe in detail what is shown in the image."  # what Florence-2's processor makes of <MORE_DETAILED_CAPTION>


def build_vision(card: str | dict, tokenizer=None) -> VisionParts:
    """Random-weight Florence-2 from ``card``. With ``tokenizer`` (what the embedded pretrain
    trains and ``save_vision`` writes) the text vocabulary, special ids and task prompt come from
    it; without, the card's own vocabulary and ``prompt_ids``."""
    c = cards.load_card(card) if isinstance(card, str) else card
    if c["kind"] != "vision":
        raise VLVError(f"architecture card {c['name']!r} is a {c['kind']} card, not a vision card")
    if tokenizer is None:
        if "prompt_ids" not in c:
            raise VLVError(f"architecture card {c['name']!r} has no prompt_ids; load a Florence-2 folder for its tokenizer instead")
        model, prompt_ids = cards.build(c, "model"), list(c["prompt_ids"])
    else:
        eos = int(tokenizer.eos_token_id)
        pad = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else eos
        special = dict(pad_token_id=pad, bos_token_id=eos, eos_token_id=eos, decoder_start_token_id=eos, forced_eos_token_id=eos)
        text = {**c["parts"]["model"]["config"]["text_config"], "vocab_size": len(tokenizer) + 1, **special}  # + 1: the image token
        model = cards.build(c, "model", text_config=text, image_token_id=len(tokenizer))
        model.generation_config.update(**special)
        prompt_ids = list(tokenizer(TASK_PROMPT).input_ids)
    return VisionParts(model=model, prompt_ids=prompt_ids, image_size=int(c["image_size"]), image_mean=list(c["image_mean"]),
                       image_std=list(c["image_std"]), source=f"card:{c['name']}")


def save_vision(parts: VisionParts, tokenizer, folder: str | Path) -> Path:
    """Write a transformers Florence-2 folder that ``load_vision`` reads: config + safetensors
    weights, the tokenizer, and a preprocessor_config.json with the input size and normalisation."""
    folder = Path(folder)
    parts.model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    size = {"height": parts.image_size, "width": parts.image_size}
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": size, "size": size, "image_mean": parts.image_mean, "image_std": parts.image_std}, indent=2) + "\n")
    return folder


def load_vision(folder: str | Path, param: str = "components.vision", task_prompt: str | None = None) -> VisionParts:
    from transformers import AutoTokenizer, Florence2ForConditionalGeneration

    path = _check_folder(folder, param, {"config.json": "file"}, VISION_DESCRIPTION)
    _check_safetensors(path, param, VISION_DESCRIPTION)
    kw = dict(param=param, folder=path, description=VISION_DESCRIPTION)
    model = _quiet(Florence2ForConditionalGeneration.from_pretrained, path, use_safetensors=True, local_files_only=True, **kw)
    tok = _quiet(AutoTokenizer.from_pretrained, path, local_files_only=True, **kw)
    pre = json.loads((path / "preprocessor_config.json").read_text()) if (path / "preprocessor_config.json").is_file() else {}
    size = pre.get("crop_size") or pre.get("size") or {"height": 768}
    size = size.get("height", size.get("shortest_edge", 768)) if isinstance(size, dict) else int(size)
    prompt = task_prompt or TASK_PROMPT
    return VisionParts(
        model=model, prompt_ids=list(tok(prompt).input_ids), image_size=int(size),
        image_mean=list(pre.get("image_mean", [0.485, 0.456, 0.406])), image_std=list(pre.get("image_std", [0.229, 0.224, 0.225])),
        source=str(path),
    )


def vision(folder: str | Path | None, card: str) -> VisionParts:
    """The vision encoder the params name: a folder when given, else built from the card."""
    return load_vision(folder) if folder else build_vision(card)


# -------------------------------------------------------------------------------- llm
@dataclass
class LLMParts:
    model: Any
    tokenizer: Any


def load_llm(folder: str | Path, param: str = "components.llm") -> LLMParts:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _check_folder(folder, param, {"config.json": "file"}, LLM_DESCRIPTION)
    _check_safetensors(path, param, LLM_DESCRIPTION)
    kw = dict(param=param, folder=path, description=LLM_DESCRIPTION)
    model = _quiet(AutoModelForCausalLM.from_pretrained, path, use_safetensors=True, local_files_only=True, **kw)
    tokenizer = _quiet(AutoTokenizer.from_pretrained, path, local_files_only=True, **kw)
    return LLMParts(model=model, tokenizer=tokenizer)


def param_count(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
