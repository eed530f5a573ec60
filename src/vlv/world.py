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

    def boxes(self) -> list[tuple[float, float, float, float]]:
        """Each object's box (x0, y0, x1, y1) in pixels, in reading order: what a detection
        annotation says of the scene (where, how big), without its colour or shape (every
        shape of one size fills the same box)."""
        return [object_box(o, j, self.size) for o, j in zip(self.attributes.objects, self.jitter)]


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


WEB_STREAM = 0x3EB  # names the web split's scene stream: seed sequences [seed, WEB_STREAM, i], never [seed, i]


def web_scene_at(seed: int, index: int, size: int = 32) -> Scene:
    """Scene ``index`` of the web stream: the corpus of the parts the paper downloads (the
    ``web`` split), drawn from its own seed sequence so that it is not the main stream's
    scene ``index``; ``prepare`` rejects any web picture equal to a main one (sha256)."""
    return sample_scene(np.random.default_rng([seed, WEB_STREAM, index]), size)


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


def object_box(obj: Obj, jitter: Sequence[float], size: int) -> tuple[float, float, float, float]:
    """The box (x0, y0, x1, y1), in pixels, that ``object_mask``'s shape is drawn in: centred on
    the cell centre plus jitter, side ``SIZES[obj.size] * size`` (the triangle's base and height
    fill it too)."""
    row, col = divmod(obj.cell, 3)
    cx = CELL_CENTRES[col] * size + jitter[0]
    cy = CELL_CENTRES[row] * size + jitter[1]
    half = SIZES[obj.size] * size / 2
    return (cx - half, cy - half, cx + half, cy + half)


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


# ------------------------------------------------------------------------------ reading
# An analytic reader of the spec: pixels -> Attributes, no learning. It reads any picture of
# the world (this renderer's, an anti-aliased or blurred one, another library's, a generated
# sample) and is what "the teacher paints the caption" and "the reconstruction shows the scene"
# are measured with, beside the learnt attribute classifier.
_PALETTE = np.array([*BACKGROUNDS.values(), *COLOURS.values()], dtype=np.float32)
_N_BG = len(BACKGROUNDS)
READ_FIELDS = ("background", "count", "colour", "shape", "size", "position")


def _shape_masks(shape: str, dx: np.ndarray, dy: np.ndarray, extents: np.ndarray) -> np.ndarray:
    """Masks (one per extent) of a spec shape centred at the origin of the offsets dx, dy."""
    half = extents[:, None, None] / 2
    if shape == "circle":
        return dx * dx + dy * dy <= half * half
    if shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    depth = dy + half
    return (depth >= 0) & (depth <= 2 * half) & (np.abs(dx) <= depth / 2)


def _split_by_cells(mask: np.ndarray, size: int) -> list[np.ndarray]:
    """A component spanning more than one cell's width is two touching objects: split it along
    the grid lines, one part per cell it covers."""
    ys, xs = np.nonzero(mask)
    if xs.max() - xs.min() + 1 <= 0.4 * size and ys.max() - ys.min() + 1 <= 0.4 * size:
        return [mask]
    third = size / 3
    cells = (np.floor((ys + 0.5) / third).clip(0, 2) * 3 + np.floor((xs + 0.5) / third).clip(0, 2)).astype(int)
    parts = []
    for c in np.unique(cells):
        part = np.zeros_like(mask)
        part[ys[cells == c], xs[cells == c]] = True
        parts.append(part)
    return parts


def read_image(image: np.ndarray, min_area: float = 0.008) -> Attributes:
    """Read a picture of the world back into Attributes (objects in reading order).

    Background: the spec background nearest to the image border's median colour. Objects: the
    pixels nearer to an object colour than to that background, split into 8-connected parts of
    one colour (parts under ``min_area`` x S^2 pixels are noise); each part's colour is the spec
    colour nearest to its median pixel, its cell the grid cell of its bounding-box centre (the
    centre of every spec shape), and its shape and size those of the spec shape, drawn at that
    centre, that overlaps it best (intersection over union).
    """
    from scipy import ndimage

    img = np.asarray(image, dtype=np.float32)[..., :3]
    s = img.shape[0]
    if img.ndim != 3 or img.shape[1] != s:
        raise ValueError(f"expected an S x S x 3 image, got shape {image.shape}")
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    bg_index = int(np.argmin(((_PALETTE[:_N_BG] - np.median(border, axis=0)) ** 2).sum(-1)))
    background = list(BACKGROUNDS)[bg_index]
    candidates = np.concatenate([_PALETTE[bg_index : bg_index + 1], _PALETTE[_N_BG:]])
    nearest = np.argmin(((img[:, :, None, :] - candidates[None, None]) ** 2).sum(-1), axis=-1)  # 0 = background
    found: list[tuple[int, Obj]] = []
    for colour_index in range(1, len(candidates)):
        labels, n = ndimage.label(nearest == colour_index, structure=np.ones((3, 3)))
        for k in range(1, n + 1):
            for part in _split_by_cells(labels == k, s):
                area = int(part.sum())
                if area < min_area * s * s:
                    continue
                found.append((area, _read_part(img, part, candidates, s)))
    # one object per cell: a cell's largest part wins (the rest is spill of the same object)
    by_cell: dict[int, tuple[int, Obj]] = {}
    for area, obj in found:
        if obj.cell not in by_cell or area > by_cell[obj.cell][0]:
            by_cell[obj.cell] = (area, obj)
    objects = tuple(by_cell[c][1] for c in sorted(by_cell))
    return Attributes(objects, background)


def _read_part(img: np.ndarray, part: np.ndarray, candidates: np.ndarray, s: int) -> Obj:
    ys, xs = np.nonzero(part)
    cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    col, row = int(np.clip(cx // (s / 3), 0, 2)), int(np.clip(cy // (s / 3), 0, 2))
    median = np.median(img[ys, xs], axis=0)
    colour = list(COLOURS)[int(np.argmin(((candidates[1:] - median) ** 2).sum(-1)))]
    # each spec shape drawn at the part's box centre over a range of extents: the best overlap
    # names the shape, its extent the size (the threshold halfway between small and large)
    pad = int(np.ceil(0.12 * s))  # a window around the part, wide enough for the largest extent tried
    y0, x0 = max(0, ys.min() - pad), max(0, xs.min() - pad)
    part = part[y0 : ys.max() + pad + 1, x0 : xs.max() + pad + 1]
    gy, gx = np.mgrid[y0 : y0 + part.shape[0], x0 : x0 + part.shape[1]].astype(np.float64) + 0.5
    extents = np.linspace(0.12, 0.42, 31) * s
    best_shape, best_iou, best_extent = SHAPES[0], -1.0, 0.0
    for shape in SHAPES:
        for ox in (-0.5, 0.0, 0.5):  # the box centre is off by up to a pixel where edges are thin
            for oy in (-1.0, -0.5, 0.0, 0.5, 1.0):
                masks = _shape_masks(shape, gx - cx - ox, gy - cy - oy, extents)
                iou = (masks & part).sum((1, 2)) / np.maximum(1, (masks | part).sum((1, 2)))
                i = int(iou.argmax())
                if iou[i] > best_iou:
                    best_shape, best_iou, best_extent = shape, float(iou[i]), float(extents[i])
    size = "small" if best_extent < (SIZES["small"] + SIZES["large"]) / 2 * s else "large"
    return Obj(best_shape, colour, size, POSITIONS[row * 3 + col])


def agreement(read: Attributes, truth: Attributes) -> dict[str, float]:
    """Per-field agreement of a picture read back (``read_image``) with what it should show.

    ``background`` and ``count`` are 0 or 1; the object fields are the share of the truth's
    objects whose field the matched read object has (objects matched one to one so that the
    fewest fields differ; an unmatched truth object misses all four). ``mean`` averages the six.
    """
    from itertools import permutations

    fields = ("colour", "shape", "size", "position")
    truth_objs, read_objs = list(truth.objects), list(read.objects)
    best = [0.0] * len(fields)
    k = min(len(truth_objs), len(read_objs))
    for chosen in permutations(range(len(read_objs)), k):
        for order in permutations(range(len(truth_objs)), k):
            got = [sum(getattr(truth_objs[t], f) == getattr(read_objs[r], f) for t, r in zip(order, chosen)) for f in fields]
            if sum(got) > sum(best):
                best = got
    out = {"background": float(read.background == truth.background), "count": float(len(read_objs) == len(truth_objs))}
    out |= {f: v / len(truth_objs) for f, v in zip(fields, best)}
    out["mean"] = sum(out[f] for f in READ_FIELDS) / len(READ_FIELDS)
    return out


def agreement_scores(reads: Sequence[Attributes], truths: Sequence[Attributes]) -> dict[str, float]:
    """``agreement`` aggregated: object fields over all truth objects, the rest over images."""
    if len(reads) != len(truths):
        raise ValueError(f"{len(reads)} reads for {len(truths)} truths")
    totals = dict.fromkeys(READ_FIELDS, 0.0)
    n_obj = sum(len(t.objects) for t in truths)
    for r, t in zip(reads, truths):
        a = agreement(r, t)
        for f in READ_FIELDS:
            totals[f] += a[f] * (len(t.objects) if f in ("colour", "shape", "size", "position") else 1)
    out = {f: totals[f] / (n_obj if f in ("colour", "shape", "size", "position") else max(1, len(truths))) for f in READ_FIELDS}
    out["mean"] = sum(out[f] for f in READ_FIELDS) / len(READ_FIELDS)
    return out
