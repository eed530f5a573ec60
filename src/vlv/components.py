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
from typing import Any, Sequence

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
VISION_DESCRIPTION = ("a transformers Florence-2 folder (config.json with model_type florence2, *.safetensors, tokenizer files, "
                      "preprocessor_config.json or processor_config.json)")
DEFAULT_TASK = "<MORE_DETAILED_CAPTION>"  # the paper's Florence-2 task (components.vision_task)


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


def check_written(folder: str | Path, required: Sequence[str], what: str, stage: str) -> Path:
    """A folder the ``stage`` stage writes (a ``what`` folder): every pattern in ``required`` present
    and every JSON and safetensors file under it readable (a safetensors header must cover its file:
    a truncated one fails here), before any model loads; else one line naming the folder or file."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    missing = [p for p in required if not any(folder.glob(p))]
    if missing:
        found = "no such folder" if not folder.is_dir() else f"missing {', '.join(missing)}"
        raise VLVError(f"{folder}: not a {what} folder ({found}); run the {stage} stage (dvc repro {stage}) to write it")
    for file in sorted([*folder.rglob("*.json"), *folder.rglob("*.safetensors")]):
        try:
            if file.suffix == ".json":
                json.loads(file.read_text(encoding="utf-8"))
            else:
                with safe_open(str(file), framework="pt"):
                    pass
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, SafetensorError) as err:
            raise VLVError(f"{file}: cannot be read ({type(err).__name__}: {' '.join(str(err).split())[:200]}); "
                           f"run the {stage} stage again (dvc repro {stage}) to rewrite it") from None
    return folder


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


def load_t2i(folder: str | Path, param: str = "components.t2i", dtype: torch.dtype = torch.float32) -> T2IParts:
    """The T2I parts in ``dtype`` whatever their files store (SD ships fp32 and fp16 variants)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    path = _check_folder(folder, param, T2I_LAYOUT, T2I_DESCRIPTION)
    for sub in ("vae", "text_encoder", "unet"):
        _check_safetensors(path / sub, param, T2I_DESCRIPTION)
    kw = dict(param=param, folder=path, description=T2I_DESCRIPTION)
    st = dict(use_safetensors=True, local_files_only=True)
    return T2IParts(
        vae=_quiet(AutoencoderKL.from_pretrained, path, subfolder="vae", torch_dtype=dtype, **st, **kw),
        text_encoder=_quiet(CLIPTextModel.from_pretrained, path / "text_encoder", dtype=dtype, **st, **kw),
        tokenizer=_quiet(AutoTokenizer.from_pretrained, path / "tokenizer", local_files_only=True, **kw),
        unet=_quiet(UNet2DConditionModel.from_pretrained, path, subfolder="unet", torch_dtype=dtype, **st, **kw),
        scheduler=_quiet(DDPMScheduler.from_pretrained, path, subfolder="scheduler", local_files_only=True, **kw),
    )


def load_text_encoder(folder: str | Path, param: str = "components.t2i", dtype: torch.dtype = torch.float32):
    """Only the CLIP text encoder and tokenizer of a T2I folder (what stage 2 needs)."""
    from transformers import AutoTokenizer, CLIPTextModel

    path = _check_folder(folder, param, T2I_LAYOUT, T2I_DESCRIPTION)
    _check_safetensors(path / "text_encoder", param, T2I_DESCRIPTION)
    kw = dict(param=param, folder=path, description=T2I_DESCRIPTION)
    return (_quiet(CLIPTextModel.from_pretrained, path / "text_encoder", use_safetensors=True, local_files_only=True, dtype=dtype, **kw),
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
    prompt_ids: list[int]  # the task prompt's token ids, as Florence-2's processor makes them (image tokens left out)
    image_size: int
    image_mean: list[float]
    image_std: list[float]
    source: str  # folder path or "card:<name>"
    task: str = DEFAULT_TASK
    processor: Any = None  # the Florence2Processor (None for a card without a tokenizer)


PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def florence_processor(tokenizer, image_size: int, mean: Sequence[float], std: Sequence[float]):
    """A real Florence2Processor from a tokenizer (which must name Florence's image token) and
    the image settings: what ``save_vision`` writes and ``load_vision`` reads back."""
    from transformers import Florence2Processor
    from transformers.utils import logging as hf_logging

    size = {"height": int(image_size), "width": int(image_size)}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "CLIPImageProcessor requires torchvision ... falling back": the PIL one is used
    try:
        from transformers import CLIPImageProcessor

        images = CLIPImageProcessor(size=size, crop_size=size, do_center_crop=False, image_mean=list(mean),
                                    image_std=list(std), image_seq_length=1)
    finally:
        hf_logging.set_verbosity(verbosity)
    return Florence2Processor(image_processor=images, tokenizer=tokenizer)


def task_prompt_ids(processor, task: str, where: str) -> list[int]:
    """The token ids Florence-2's own processor makes of a task token (its table turns e.g.
    <MORE_DETAILED_CAPTION> into "Describe with a paragraph what is shown in the image."),
    without the image tokens that the encoder puts in front itself."""
    from PIL import Image

    table = getattr(processor, "task_prompts_without_inputs", {})
    if task not in table:
        raise VLVError(f"{where}: task {task!r} is not one of the processor's tasks without inputs: {', '.join(table)}; "
                       f"set components.vision_task")
    ids = processor(text=task, images=Image.new("RGB", (8, 8)), return_tensors="pt")["input_ids"][0].tolist()
    image_id = processor.tokenizer.image_token_id
    return [i for i in ids if i != image_id]


def _image_settings(processor) -> tuple[int, list[float], list[float]]:
    ip = processor.image_processor
    size = ip.crop_size if getattr(ip, "do_center_crop", False) and getattr(ip, "crop_size", None) else ip.size
    get = size.get if isinstance(size, dict) else (lambda k, d=None: getattr(size, k, d))
    side = get("height") or get("shortest_edge")
    return int(side), [float(v) for v in ip.image_mean], [float(v) for v in ip.image_std]


def build_vision(card: str | dict, tokenizer=None, task: str = DEFAULT_TASK) -> VisionParts:
    """Random-weight Florence-2 from ``card``. With ``tokenizer`` (which must name Florence's
    image token; the embedded pretrain makes one with ``vocab.florence_tokenizer``) the text
    vocabulary and special ids come from it, and the task prompt from a real Florence2Processor;
    without, the card's own vocabulary and ``prompt_ids`` (timing only)."""
    c = cards.load_card(card) if isinstance(card, str) else card
    if c["kind"] != "vision":
        raise VLVError(f"architecture card {c['name']!r} is a {c['kind']} card, not a vision card")
    settings = dict(image_size=int(c["image_size"]), image_mean=list(c["image_mean"]), image_std=list(c["image_std"]))
    if tokenizer is None:
        if "prompt_ids" not in c:
            raise VLVError(f"architecture card {c['name']!r} has no prompt_ids; load a Florence-2 folder for its tokenizer instead")
        return VisionParts(model=cards.build(c, "model"), prompt_ids=list(c["prompt_ids"]), source=f"card:{c['name']}", **settings)
    eos = int(tokenizer.eos_token_id)
    pad = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else eos
    bos = int(tokenizer.bos_token_id) if tokenizer.bos_token_id is not None else eos
    special = dict(pad_token_id=pad, bos_token_id=bos, eos_token_id=eos, decoder_start_token_id=eos, forced_eos_token_id=eos)
    text = {**c["parts"]["model"]["config"]["text_config"], "vocab_size": len(tokenizer), **special}
    model = cards.build(c, "model", text_config=text, image_token_id=int(tokenizer.image_token_id))
    model.generation_config.update(**special)
    processor = florence_processor(tokenizer, settings["image_size"], settings["image_mean"], settings["image_std"])
    return VisionParts(model=model, prompt_ids=task_prompt_ids(processor, task, f"card {c['name']}"), source=f"card:{c['name']}",
                       task=task, processor=processor, **settings)


def save_vision(parts: VisionParts, folder: str | Path) -> Path:
    """Write a transformers Florence-2 folder that ``load_vision`` reads: config + safetensors
    weights, and the processor as transformers 5 saves it (processor_config.json with the image
    settings, and the tokenizer)."""
    folder = Path(folder)
    parts.model.save_pretrained(folder, safe_serialization=True)
    parts.processor.save_pretrained(folder)
    return folder


def load_vision(folder: str | Path, param: str = "components.vision", task: str = DEFAULT_TASK,
                dtype: torch.dtype = torch.float32) -> VisionParts:
    """A Florence-2 folder: the model in ``dtype`` (whatever dtype its weights are stored in), its
    processor (image size, mean and std from preprocessor_config.json or processor_config.json)
    and the ids its processor makes of ``task``."""
    from transformers import AutoProcessor, AutoTokenizer, Florence2ForConditionalGeneration

    path = _check_folder(folder, param, {"config.json": "file"}, VISION_DESCRIPTION)
    _check_safetensors(path, param, VISION_DESCRIPTION)
    if not any((path / f).is_file() for f in PROCESSOR_FILES):
        raise VLVError(f"{param}={path}: no image-processor settings (looked for {' and '.join(PROCESSOR_FILES)}); "
                       f"copy the processor files that came with the Florence-2 folder")
    kw = dict(param=param, folder=path, description=VISION_DESCRIPTION)
    tokenizer = _quiet(AutoTokenizer.from_pretrained, path, local_files_only=True, **kw)
    if getattr(tokenizer, "image_token", None) is None:
        raise VLVError(f"{param}={path}: the tokenizer names no image token (Florence-2's names \"<image>\" as "
                       f"extra_special_tokens image_token); it must be {VISION_DESCRIPTION}")
    processor = _quiet(AutoProcessor.from_pretrained, path, local_files_only=True, **kw)
    model = _quiet(Florence2ForConditionalGeneration.from_pretrained, path, use_safetensors=True, local_files_only=True,
                   dtype=dtype, **kw)
    size, mean, std = _image_settings(processor)
    return VisionParts(model=model, prompt_ids=task_prompt_ids(processor, task, f"{param}={path}"), image_size=size,
                       image_mean=mean, image_std=std, source=str(path), task=task, processor=processor)


def vision(folder: str | Path | None, card: str, task: str = DEFAULT_TASK, dtype: torch.dtype = torch.float32) -> VisionParts:
    """The vision encoder the params name: a folder when given, else built from the card."""
    if folder:
        return load_vision(folder, task=task, dtype=dtype)
    parts = build_vision(card)
    parts.model.to(dtype)
    return parts


# -------------------------------------------------------------------------------- llm
@dataclass
class LLMParts:
    model: Any
    tokenizer: Any


def load_llm(folder: str | Path, param: str = "components.llm", dtype: torch.dtype = torch.float32) -> LLMParts:
    """The LM in ``dtype`` (transformers 5 would keep the stored dtype: Qwen2.5 ships bf16)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _check_folder(folder, param, {"config.json": "file"}, LLM_DESCRIPTION)
    _check_safetensors(path, param, LLM_DESCRIPTION)
    kw = dict(param=param, folder=path, description=LLM_DESCRIPTION)
    model = _quiet(AutoModelForCausalLM.from_pretrained, path, use_safetensors=True, local_files_only=True, dtype=dtype, **kw)
    tokenizer = _quiet(AutoTokenizer.from_pretrained, path, local_files_only=True, **kw)
    return LLMParts(model=model, tokenizer=tokenizer)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def param_count(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
