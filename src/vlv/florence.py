"""Florence-2's own tasks for the embedded vision encoder, and what its features carry.

The paper starts from a Florence-2-large pretrained on web-scale data; in the shapes world the
vision encoder must learn to see without reading a single world caption outside ``pairs``
(the captioning side's budget). Its pretext is Florence-2's own region task, <OD>: the decoder
writes every object as a generic label and its box in Florence-2's location tokens,
``object<loc_x0><loc_y0><loc_x1><loc_y1>`` per object, in reading order. The boxes are the
scene's geometry, annotated by the renderer as a detection dataset annotates photographs; they
say where each object is and how large, and nothing of its colour or shape: every shape of one
size fills the same box. So the tower learns to find and measure objects, and whatever it keeps
of colour and shape is a by-product, measured here by a linear probe per field.

- ``FlorenceObjective``: image + task prompt -> target text (teacher forcing, end-of-text
  target), through the class's own forward; ``generate`` decodes greedily.
- ``od_text`` / ``parse_od``: boxes <-> Florence-2's <OD> answer; ``detection_scores`` reads
  generated answers against the true boxes (count, cell, size, IoU).
- ``linear_probe``: ridge regression per field from the frozen image features (the tower and
  its projector, the part stage 1 keeps frozen) to one-hot attributes, fit on one set of
  images and scored on another.
"""

from __future__ import annotations

import json
import re
from typing import Sequence

import numpy as np
import torch
from torch import nn

from . import world
from .components import VisionParts
from .vocab import LOC_BINS

PRETEXT_TASK = "<OD>"  # Florence-2's object detection task: "Locate the objects with category name in the image."
LABEL = "object"  # the one generic label: the pretext names no colour and no shape
_OD_RE = re.compile(r"([^<]*?)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>")


def od_text(boxes: Sequence[Sequence[float]], size: int, label: str = LABEL) -> str:
    """Florence-2's <OD> answer for ``boxes`` (x0, y0, x1, y1 in pixels of a ``size`` side):
    each coordinate quantised to one of LOC_BINS bins, as Florence-2's box quantiser does."""
    def loc(v: float) -> str:
        return f"<loc_{min(LOC_BINS - 1, max(0, int(v / size * LOC_BINS)))}>"

    return "".join(label + "".join(loc(v) for v in box) for box in boxes)


def parse_od(text: str, size: int) -> list[tuple[float, float, float, float]]:
    """The boxes of an <OD> answer, in pixels (each bin's centre); text between boxes is the label."""
    return [tuple((int(g) + 0.5) * size / LOC_BINS for g in m.groups()[1:]) for m in _OD_RE.finditer(text)]


def _cell(box: Sequence[float], size: int) -> int:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    col, row = (min(2, max(0, int(c / size * 3))) for c in (cx, cy))
    return row * 3 + col


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def detection_scores(answers: Sequence[str], truths: Sequence[Sequence[Sequence[float]]], size: int) -> dict[str, float]:
    """Generated <OD> answers against the true boxes: ``count`` (as many boxes as objects), and
    per true object, paired in reading order with the i-th predicted box: ``cell`` (its centre in
    the right third of each axis), ``size`` (its side nearer the true size class's side) and
    ``iou``; a missing box misses all three."""
    small, large = (world.SIZES[k] * size for k in ("small", "large"))
    count, cell, side, iou, n = 0.0, 0.0, 0.0, 0.0, 0
    for answer, truth in zip(answers, truths):
        pred = parse_od(answer, size)
        count += float(len(pred) == len(truth))
        for t, p in zip(truth, pred):
            cell += float(_cell(t, size) == _cell(p, size))
            true_large = (t[2] - t[0]) > (small + large) / 2
            side += float((((p[2] - p[0]) + (p[3] - p[1])) / 2 > (small + large) / 2) == true_large)
            iou += _iou(t, p)
        n += len(truth)
    return {"count": count / len(truths), "cell": cell / n, "size": side / n, "iou": iou / n}


def processed(x: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> Florence-2's input: the processor's size, mean and std (N x 3 x 1 x 1)."""
    if x.shape[-1] != size or x.shape[-2] != size:
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return ((x + 1) / 2 - mean) / std


class FlorenceObjective(nn.Module):
    """Florence-2's own training: image tokens + task prompt -> its encoder; the decoder learns
    the target text (teacher forcing, with an end-of-text target). ``target`` names what the
    batch supplies: ``"boxes"`` (the <OD> pretext, the embedded default) or ``"caption"``."""

    def __init__(self, vision: VisionParts, tokenizer, target: str = "boxes", max_tokens: int = 64):
        super().__init__()
        if target not in ("boxes", "caption"):
            raise ValueError(f"target {target!r}: boxes or caption")
        self.model, self.tokenizer, self.target, self.max_tokens = vision.model, tokenizer, target, max_tokens
        self.image_size = vision.image_size
        self.register_buffer("mean", torch.tensor(vision.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(vision.image_std).view(1, 3, 1, 1), persistent=False)
        with torch.no_grad():
            self.n_image = self.model.model.get_image_features(torch.zeros(1, 3, vision.image_size, vision.image_size)).pooler_output.shape[1]
        self.register_buffer("input_ids", self.prompt(vision.prompt_ids), persistent=False)

    def prompt(self, prompt_ids: Sequence[int]) -> torch.Tensor:
        return torch.tensor([[int(self.model.config.image_token_id)] * self.n_image + list(prompt_ids)], dtype=torch.long)

    def pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return processed(pixel_values, self.image_size, self.mean, self.std)

    def inputs(self, pixel_values: torch.Tensor, input_ids: torch.Tensor | None = None) -> dict:
        ids = (self.input_ids if input_ids is None else input_ids).to(pixel_values.device).expand(pixel_values.shape[0], -1)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": self.pixels(pixel_values)}

    def targets(self, batch: dict) -> list[str]:
        if self.target == "caption":
            return list(batch["caption"])
        side = batch["pixel_values"].shape[-1]
        return [od_text(json.loads(b), side) for b in batch["boxes"]]

    def forward(self, batch: dict) -> torch.Tensor:
        eos = self.tokenizer.eos_token
        enc = self.tokenizer([t + eos for t in self.targets(batch)], padding=True, truncation=True,
                             max_length=self.max_tokens, return_tensors="pt")
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100).to(self.input_ids.device)
        return self.model(**self.inputs(batch["pixel_values"].to(self.input_ids.device)), labels=labels).loss

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, prompt_ids: Sequence[int] | None = None, max_new_tokens: int = 48,
                 batch_size: int = 64) -> list[str]:
        """Greedy answers (Florence-2's ``generate``) to the training task, or to ``prompt_ids``'s."""
        was_training = self.training
        self.eval()
        ids = None if prompt_ids is None else self.prompt(prompt_ids)
        out: list[str] = []
        for i in range(0, len(pixel_values), batch_size):
            gen = self.model.generate(**self.inputs(pixel_values[i : i + batch_size], ids), max_new_tokens=max_new_tokens,
                                      num_beams=1, do_sample=False)
            out += [t.strip() for t in self.tokenizer.batch_decode(gen, skip_special_tokens=True)]
        self.train(was_training)
        return out


# --------------------------------------------------------------------------- linear probe
@torch.no_grad()
def image_features(vision: VisionParts, pixel_values: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """The frozen part's output per image (DaViT + its projector: every image token), flattened."""
    mean = torch.tensor(vision.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(vision.image_std).view(1, 3, 1, 1)
    was_training = vision.model.training
    vision.model.eval()
    feats = []
    for i in range(0, len(pixel_values), batch_size):
        x = processed(pixel_values[i : i + batch_size], vision.image_size, mean, std)
        feats.append(vision.model.model.get_image_features(x).pooler_output.flatten(1).float())
    vision.model.train(was_training)
    return torch.cat(feats)


PROBE_FIELDS = {"background": len(world.BACKGROUNDS), "count": 2, "colour": len(world.COLOURS), "shape": len(world.SHAPES),
                "size": len(world.SIZES), "cell": len(world.POSITIONS)}  # field -> classes


def probe_labels(attrs: world.Attributes) -> dict[str, int]:
    """One class per field: background, count, and the first object's (reading order) colour,
    shape, size and cell."""
    first = attrs.objects[0]
    return {"background": list(world.BACKGROUNDS).index(attrs.background), "count": len(attrs.objects) - 1,
            "colour": list(world.COLOURS).index(first.colour), "shape": world.SHAPES.index(first.shape),
            "size": list(world.SIZES).index(first.size), "cell": first.cell}


def linear_probe(train_x: torch.Tensor, train_captions: Sequence[str], test_x: torch.Tensor, test_captions: Sequence[str],
                 ridge: float = 1e-2) -> dict[str, float]:
    """Per field, a ridge-regression classifier (one-hot targets, features standardised on the
    training set; solved in the dual, as there are more features than images) fit on
    ``train_x`` and scored on ``test_x``: the share of test images whose field it reads right."""
    mu, sd = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    a, b = ((train_x - mu) / sd).double(), ((test_x - mu) / sd).double()
    gram = a @ a.T
    solve = torch.linalg.cholesky(gram + ridge * gram.diagonal().mean() * torch.eye(len(a), dtype=gram.dtype))
    cross = b @ a.T
    train_labels = [probe_labels(world.parse(c)) for c in train_captions]
    test_labels = [probe_labels(world.parse(c)) for c in test_captions]
    out = {}
    for field, classes in PROBE_FIELDS.items():
        onehot = nn.functional.one_hot(torch.tensor([t[field] for t in train_labels]), classes).double()
        pred = (cross @ torch.cholesky_solve(onehot, solve)).argmax(1)
        out[field] = float((pred == torch.tensor([t[field] for t in test_labels])).double().mean())
    out["mean"] = float(np.mean([out[f] for f in PROBE_FIELDS]))
    return out
