"""The shapes world, spec v1 (docs/SHAPES_WORLD.md): render, caption, parse, score.

A scene is 1 or 2 coloured shapes in distinct cells of a 3x3 grid on a uniform
background. Everything here is pure numpy and deterministic given a
``numpy.random.Generator``; other tools can render the same world from the spec text.

Rendering is crisp (no anti-aliasing): a pixel belongs to a shape when its centre
(x + 0.5, y + 0.5) lies inside it, so every pixel is exactly the background colour or
one object's spec colour. The spec's jitter (up to +-0.03*S per axis) lets two large
shapes in adjacent cells touch; when their pixels would overlap, the jitter of that
scene is drawn again, so objects never overlap and the jitter stays within the spec.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

SPEC_VERSION = 1

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (140, 60, 180),
    "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
SIZES: dict[str, float] = {"small": 0.2, "large": 0.3}
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
CELL_CENTRES = (1 / 6, 1 / 2, 5 / 6)
JITTER = 0.03
FIELDS = ("shape", "colour", "size", "position", "background", "count")
_MAX_REDRAWS = 1000


class CaptionError(ValueError):
    """A caption that the spec-v1 grammar does not produce."""


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    position: str  # one of POSITIONS; the cell is POSITIONS.index(position)

    @property
    def cell(self) -> int:
        return POSITIONS.index(self.position)


@dataclass(frozen=True)
class Attributes:
    """What a caption says: the objects in reading order and the background."""

    objects: tuple[Obj, ...]
    background: str

    def to_dict(self) -> dict:
        return {"background": self.background, "objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> "Attributes":
        return cls(tuple(Obj(**o) for o in d["objects"]), d["background"])


@dataclass(frozen=True)
class Scene:
    """Attributes plus the exact geometry: one (x, y) jitter per object, in pixels."""

    attributes: Attributes
    jitter: tuple[tuple[float, float], ...]
    size: int

    def render(self) -> np.ndarray:
        return render(self)

    def caption(self) -> str:
        return caption(self.attributes)


# ----------------------------------------------------------------------------- sampling
def sample_scene(rng: np.random.Generator, size: int = 32) -> Scene:
    """Draw one scene of an S x S canvas from the spec's distribution."""
    background = str(rng.choice(list(BACKGROUNDS)))
    count = int(rng.integers(1, 3))
    cells = sorted(int(c) for c in rng.choice(9, size=count, replace=False))
    objects = tuple(
        Obj(
            shape=str(rng.choice(SHAPES)),
            colour=str(rng.choice(list(COLOURS))),
            size=str(rng.choice(list(SIZES))),
            position=POSITIONS[c],
        )
        for c in cells
    )
    attrs = Attributes(objects, background)
    for _ in range(_MAX_REDRAWS):
        jitter = tuple(
            (float(rng.uniform(-JITTER, JITTER) * size), float(rng.uniform(-JITTER, JITTER) * size))
            for _ in objects
        )
        scene = Scene(attrs, jitter, size)
        masks = [object_mask(o, j, size) for o, j in zip(objects, jitter)]
        if len(masks) < 2 or not np.any(masks[0] & masks[1]):
            return scene
    raise RuntimeError("could not place non-overlapping objects")  # unreachable for S >= 8


def sample_scenes(seed: int, n: int, size: int = 32) -> list[Scene]:
    """``n`` scenes, deterministic by ``seed``; scene i depends only on (seed, i)."""
    return [scene_at(seed, i, size) for i in range(n)]


def scene_at(seed: int, index: int, size: int = 32) -> Scene:
    return sample_scene(np.random.default_rng([seed, index]), size)


# ---------------------------------------------------------------------------- rendering
def object_mask(obj: Obj, jitter: Sequence[float], size: int) -> np.ndarray:
    """Boolean S x S mask of the pixels whose centres lie inside the object."""
    row, col = divmod(obj.cell, 3)
    cx = CELL_CENTRES[col] * size + jitter[0]
    cy = CELL_CENTRES[row] * size + jitter[1]
    extent = SIZES[obj.size] * size
    half = extent / 2
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = xs - cx, ys - cy
    if obj.shape == "circle":
        return dx * dx + dy * dy <= half * half
    if obj.shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if obj.shape == "triangle":  # apex up, base = height = size
        depth = dy + half  # 0 at the apex, `extent` at the base
        return (depth >= 0) & (depth <= extent) & (np.abs(dx) <= depth / 2)
    raise ValueError(f"unknown shape {obj.shape!r}")


def render(scene: Scene) -> np.ndarray:
    """S x S x 3 uint8 RGB image of the scene."""
    s = scene.size
    img = np.empty((s, s, 3), dtype=np.uint8)
    img[:] = BACKGROUNDS[scene.attributes.background]
    for obj, jit in zip(scene.attributes.objects, scene.jitter):
        img[object_mask(obj, jit, s)] = COLOURS[obj.colour]
    return img


# ------------------------------------------------------------------ caption and parsing
def caption(attrs: Attributes) -> str:
    objs = sorted(attrs.objects, key=lambda o: o.cell)  # reading order: row, then column
    parts = [f"a {o.size} {o.colour} {o.shape} at the {o.position}" for o in objs]
    return " and ".join(parts) + f" on a {attrs.background} background"


def _alt(words: Iterable[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_OBJ_RE = re.compile(
    rf"a ({_alt(SIZES)}) ({_alt(COLOURS)}) ({_alt(SHAPES)}) at the ({_alt(POSITIONS)})"
)
_CAPTION_RE = re.compile(
    rf"^(?P<objs>{_OBJ_RE.pattern}(?: and {_OBJ_RE.pattern})*) on a (?P<bg>{_alt(BACKGROUNDS)}) background$"
)


def parse(text: str) -> Attributes:
    """Parse a spec-v1 caption; raise CaptionError naming what is wrong.

    Whitespace and case are normalised; anything else must follow the grammar. Two
    objects in one cell, or objects out of reading order, are rejected: the spec never
    produces them.
    """
    norm = " ".join(str(text).lower().split()).rstrip(".")
    m = _CAPTION_RE.match(norm)
    if not m:
        raise CaptionError(f"not a shapes-world caption: {text!r}")
    objects = tuple(Obj(size=s, colour=c, shape=sh, position=p) for s, c, sh, p in _OBJ_RE.findall(m["objs"]))
    cells = [o.cell for o in objects]
    if len(objects) > 2:
        raise CaptionError(f"{len(objects)} objects; the world has 1 or 2: {text!r}")
    if len(set(cells)) != len(cells):
        raise CaptionError(f"two objects in one cell: {text!r}")
    if cells != sorted(cells):
        raise CaptionError(f"objects not in reading order: {text!r}")
    return Attributes(objects, m["bg"])


def try_parse(text: str) -> Attributes | None:
    """``parse`` that returns None ("unparseable") instead of raising."""
    try:
        return parse(text)
    except CaptionError:
        return None


# ------------------------------------------------------------------------------ scoring
def hits(prediction: str, reference: str) -> dict[str, float]:
    """Per-field hits of one predicted caption against its reference.

    Objects are paired in reading order (i-th with i-th). Object fields (shape, colour,
    size, position) are the share of reference objects whose field the paired predicted
    object gets right: a missing predicted object, or an unparseable prediction, misses
    every field. ``background``, ``count``, ``exact`` and ``parsed`` are 0 or 1; ``mean``
    is the mean of the six fields.
    """
    ref = parse(reference)
    pred = try_parse(prediction)
    out = dict.fromkeys((*FIELDS, "exact", "parsed"), 0.0)
    if pred is not None:
        out["parsed"] = 1.0
        out["exact"] = float(pred == ref)
        out["background"] = float(pred.background == ref.background)
        out["count"] = float(len(pred.objects) == len(ref.objects))
        for field in ("shape", "colour", "size", "position"):
            out[field] = sum(getattr(r, field) == getattr(p, field) for r, p in zip(ref.objects, pred.objects)) / len(ref.objects)
    out["mean"] = sum(out[f] for f in FIELDS) / len(FIELDS)
    return out


def score(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Per-field accuracy and exact match of predicted captions against references.

    As ``hits``, aggregated: object fields are averaged over all reference objects,
    ``background`` and ``count`` over images. ``mean`` is the mean of the six fields;
    ``exact`` compares parsed attributes; ``parsed`` is the share of predictions that parse.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    total = dict.fromkeys((*FIELDS, "exact", "parsed"), 0.0)
    n_objects = 0
    for pred_text, ref_text in zip(predictions, references):
        k = len(parse(ref_text).objects)
        n_objects += k
        for field, v in hits(pred_text, ref_text).items():
            if field in total:
                total[field] += v * k if field in ("shape", "colour", "size", "position") else v
    n = len(references)
    out = {}
    for field in FIELDS:
        denom = n if field in ("background", "count") else n_objects
        out[field] = total[field] / denom if denom else 0.0
    out["mean"] = sum(out[f] for f in FIELDS) / len(FIELDS)
    out["exact"] = total["exact"] / n if n else 0.0
    out["parsed"] = total["parsed"] / n if n else 0.0
    return out
