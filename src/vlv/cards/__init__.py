"""Architecture cards: JSON files in src/vlv/cards/ that describe a model's parts.

A card builds real diffusers/transformers classes with random weights: the tiny parts
of the shapes world (trained by ``pretrain``) and the paper-size parts (SD-2.1-base,
Florence-2-large, Qwen2.5-3B) for timing on a GPU without downloading anything.

Card format::

    {"name": "...", "kind": "t2i" | "vision" | "llm" | "classifier", "source": "where the numbers come from",
     "parts": {"<part>": {"class": "UNet2DConditionModel", "config": {...},
                          "init": {"<parameter-name glob>": std, ...}}, ...},
     ...extra keys a kind needs (e.g. the vision prompt, image size, normalisation)}

A part's optional ``init`` redraws the matching random parameters from N(0, std) after the
class's own initialisation (a pattern that matches nothing is an error). The tiny Florence-2
uses it: at the library's std 0.02 its position embeddings are tiny next to the token contents,
so attention barely tells positions apart and the query decoder cannot learn where objects are
(docs/NOTES.md, 2026-11-29, the position bottleneck was the tiny Florence-2's initialisation).
"""

from __future__ import annotations

import fnmatch
import json
from importlib import resources
from typing import Any

import torch

from ..errors import VLVError

# The classes a card may name, and the library that owns each.
DIFFUSERS_CLASSES = {"UNet2DConditionModel", "AutoencoderKL", "DDPMScheduler", "DDIMScheduler", "PNDMScheduler"}
TRANSFORMERS_CLASSES = {
    "CLIPTextModel": "CLIPTextConfig",
    "CLIPVisionModel": "CLIPVisionConfig",
    "Florence2ForConditionalGeneration": "Florence2Config",
    "Qwen2ForCausalLM": "Qwen2Config",
    "ResNetModel": "ResNetConfig",
}


def available() -> list[str]:
    return sorted(p.name.removesuffix(".json") for p in resources.files("vlv.cards").iterdir() if p.name.endswith(".json"))


def load_card(name: str) -> dict[str, Any]:
    path = resources.files("vlv.cards") / f"{name}.json"
    if not path.is_file():
        raise VLVError(f"architecture card {name!r} not found; cards are: {', '.join(available())}")
    card = json.loads(path.read_text())
    for key in ("name", "kind", "parts"):
        if key not in card:
            raise VLVError(f"architecture card {name!r} has no {key!r}")
    return card


def build(card: dict[str, Any] | str, part: str, **overrides: Any):
    """A random-weight instance of ``part`` of ``card`` (a scheduler for scheduler parts).

    ``overrides`` replace top-level config keys (e.g. ``vocab_size`` from a tokenizer).
    """
    card = load_card(card) if isinstance(card, str) else card
    spec = card["parts"].get(part)
    if spec is None:
        raise VLVError(f"architecture card {card['name']!r} has no part {part!r}; parts: {', '.join(card['parts'])}")
    cls_name, cfg = spec["class"], {**spec["config"], **overrides}
    if cls_name in DIFFUSERS_CLASSES:
        import diffusers

        cls = getattr(diffusers, cls_name)
        return _redraw(cls.from_config(cfg), spec.get("init") or {}, card["name"], part)
    if cls_name in TRANSFORMERS_CLASSES:
        import transformers

        config = getattr(transformers, TRANSFORMERS_CLASSES[cls_name])(**cfg)
        return _redraw(getattr(transformers, cls_name)(config), spec.get("init") or {}, card["name"], part)
    raise VLVError(f"architecture card {card['name']!r}: class {cls_name!r} is not one of {sorted(DIFFUSERS_CLASSES | set(TRANSFORMERS_CLASSES))}")


def _redraw(model, init: dict[str, float], card: str, part: str):
    """Redraw the parameters whose names match each glob of the card's ``init`` from N(0, std)."""
    if not init:
        return model
    if not isinstance(model, torch.nn.Module):
        raise VLVError(f"architecture card {card!r}, part {part!r}: init needs a model with weights, not a {type(model).__name__}")
    params = dict(model.named_parameters())
    for pattern, std in init.items():
        hits = [name for name in params if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            raise VLVError(f"architecture card {card!r}, part {part!r}: init pattern {pattern!r} matches no parameter; names look like {next(iter(params))!r}")
        with torch.no_grad():
            for name in hits:
                params[name].normal_(0.0, float(std))
    return model
