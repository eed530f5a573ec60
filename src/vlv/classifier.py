"""The shapes world's attribute classifier: its "Inception" for the regeneration protocol.

The paper scores a captioner by regenerating images from its captions with the frozen
text-to-image model and comparing them with the originals in Inception's feature space
(FID). Inception knows nothing of red triangles on gray, so the world has its own
instrument: a transformers ResNetModel (card ``classifier-tiny``) with two linear heads,
trained in ``pretrain`` on the captioned images to read every attribute of a scene back:

- logits = 3 background + for each of the 9 cells (reading order) 7 colour (none + 6),
  4 shape (none + 3) and 3 size (none + 2) classes; loss = sum of the groups' cross-entropies;
- ``features``: the globally pooled output map, the space of the Fréchet distance, as
  Inception's pool3 is for FID;
- ``predict``: attributes -> a world caption, so regenerations are scored by the same
  ``world.score`` as captions.

Saved as a transformers folder (backbone/) plus the heads (safetensors) and a JSON config.
"""

from __future__ import annotations

from pathlib import Path

import json

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import world
from .errors import VLVError

COLOURS = ("none", *world.COLOURS)
SHAPES = ("none", *world.SHAPES)
SIZES = ("none", *world.SIZES)
BACKGROUNDS = tuple(world.BACKGROUNDS)
CELLS = len(world.POSITIONS)
GROUPS = [len(BACKGROUNDS)] + [len(COLOURS), len(SHAPES), len(SIZES)] * CELLS  # logits per target
NUM_LOGITS = sum(GROUPS)
CONFIG = "classifier.json"
HEADS = "heads.safetensors"


def targets(attrs: world.Attributes) -> list[int]:
    """Class index of every group: background, then (colour, shape, size) per cell."""
    out = [BACKGROUNDS.index(attrs.background)] + [0] * (3 * CELLS)
    for o in attrs.objects:
        out[1 + 3 * o.cell : 4 + 3 * o.cell] = [COLOURS.index(o.colour), SHAPES.index(o.shape), SIZES.index(o.size)]
    return out


def decode(classes: list[int]) -> world.Attributes:
    """Inverse of ``targets``: a cell is occupied when its colour is not "none"; shape and
    size then take their best non-"none" class."""
    objects = []
    for cell in range(CELLS):
        c, s, z = classes[1 + 3 * cell : 4 + 3 * cell]
        if c:
            objects.append(world.Obj(SHAPES[max(s, 1)], COLOURS[c], SIZES[max(z, 1)], world.POSITIONS[cell]))
    return world.Attributes(tuple(objects), BACKGROUNDS[classes[0]])


def describe(attrs: world.Attributes) -> str:
    """A world caption of predicted attributes ("" when no object is seen: scores as a miss)."""
    return world.caption(attrs) if attrs.objects else ""


class AttributeClassifier(nn.Module):
    """A transformers ResNetModel backbone and two linear heads: the output map pooled to
    the world's 3 x 3 cells -> (colour, shape, size) logits per cell (one 1x1 conv shared by
    the cells), the globally pooled features -> background logits.
    ``forward(batch)`` = summed cross-entropy over the groups (for vlv.train)."""

    def __init__(self, backbone, input_size: int):
        super().__init__()
        self.backbone, self.input_size = backbone, input_size
        width = int(backbone.config.hidden_sizes[-1])
        self.cell_head = nn.Conv2d(width, len(COLOURS) + len(SHAPES) + len(SIZES), kernel_size=1)
        self.background_head = nn.Linear(width, len(BACKGROUNDS))

    @classmethod
    def from_card(cls, name: str = "classifier-tiny") -> "AttributeClassifier":
        from . import cards

        card = cards.load_card(name)
        return cls(cards.build(card, "backbone"), int(card["input_size"]))

    def _maps(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = nn.functional.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True)
        return self.backbone(pixel_values=x).last_hidden_state  # B x C x h x w

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """B x NUM_LOGITS in the order of ``GROUPS``."""
        maps = self._maps(pixel_values)
        side = int(CELLS**0.5)
        cells = self.cell_head(nn.functional.adaptive_avg_pool2d(maps, side)).flatten(2).transpose(1, 2)  # B x 9 x 14
        split = torch.split(cells, [len(COLOURS), len(SHAPES), len(SIZES)], dim=2)
        per_cell = torch.cat([torch.cat([g[:, c] for g in split], dim=1) for c in range(CELLS)], dim=1)
        return torch.cat([self.background_head(maps.mean((2, 3))), per_cell], dim=1)

    def forward(self, batch: dict) -> torch.Tensor:
        logits = self.logits(batch["pixel_values"])
        target = torch.tensor([targets(world.parse(c)) for c in batch["caption"]], device=logits.device)
        loss = logits.new_zeros(())
        for g, chunk in enumerate(logits.split(GROUPS, dim=1)):
            loss = loss + nn.functional.cross_entropy(chunk, target[:, g])
        return loss

    @torch.no_grad()
    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """B x C: the globally pooled output map (as Inception's pool3 is for FID)."""
        return self._maps(pixel_values).mean((2, 3))

    @torch.no_grad()
    def predict(self, pixel_values: torch.Tensor) -> list[str]:
        """The world caption each image shows, as the classifier reads it."""
        groups = self.logits(pixel_values).split(GROUPS, dim=1)
        classes = torch.stack([g.argmax(1) for g in groups], dim=1).tolist()
        return [describe(decode(c)) for c in classes]

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        self.backbone.save_pretrained(folder / "backbone", safe_serialization=True)
        heads = {f"cell_head.{k}": v for k, v in self.cell_head.state_dict().items()}
        heads.update({f"background_head.{k}": v for k, v in self.background_head.state_dict().items()})
        save_file({k: v.contiguous() for k, v in heads.items()}, str(folder / HEADS))
        (folder / CONFIG).write_text(json.dumps({"input_size": self.input_size, "groups": GROUPS}, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "AttributeClassifier":
        from transformers import ResNetModel

        folder = Path(folder)
        if not (folder / CONFIG).is_file() or not (folder / HEADS).is_file() or not (folder / "backbone").is_dir():
            raise VLVError(f"{folder}: no attribute classifier here ({CONFIG}, {HEADS}, backbone/); run the pretrain stage")
        cfg = json.loads((folder / CONFIG).read_text())
        model = cls(ResNetModel.from_pretrained(folder / "backbone", use_safetensors=True, local_files_only=True), cfg["input_size"])
        heads = load_file(str(folder / HEADS))
        model.cell_head.load_state_dict({k.removeprefix("cell_head."): v for k, v in heads.items() if k.startswith("cell_head.")})
        model.background_head.load_state_dict({k.removeprefix("background_head."): v for k, v in heads.items()
                                               if k.startswith("background_head.")})
        return model.eval()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` and ``b`` (N x D):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), with symmetric square
    roots by eigendecomposition (no complex round-off)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)

    def sqrtm(m: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh((m + m.T) / 2)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    ra = sqrtm(sa)
    cross = np.trace(sqrtm(ra @ sb @ ra))
    return float(mu @ mu + np.trace(sa) + np.trace(sb) - 2 * cross)
