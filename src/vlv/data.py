"""Dataset preparation and loading: validated image shards + a pandas manifest.

Output of ``prepare`` (one folder)::

    shards/shard-00000.bin   raw RGB uint8 pixels, S*S*3 bytes per image, back to back
    manifest.parquet         one row per accepted image (columns: MANIFEST_COLUMNS)
    rejected.csv             one row per rejected input: source, reason, detail
    summary.json             counts by split, by rejection reason, by converted mode (no
                             timings: the same inputs and params give the same bytes)

Why raw pixel shards: every image is decoded, converted to RGB and resized exactly once,
here; a reader maps a shard with ``numpy.memmap`` and slices ``offset:offset+S*S*3``,
so loading is a copy with no decode, random access (shuffling) is free, and
DataLoader workers share one page cache. The price is disk: 3 KiB per 32 px image,
432 KiB per 384 px image (for paper-scale runs, put the shards on a large local disk).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from . import sources
from .config import Params, Prepare
from .errors import VLVError
from .sources import Item, Rejection

if TYPE_CHECKING:
    import torch

MANIFEST_COLUMNS = [
    "id", "split", "shard", "offset", "width", "height",
    "src_width", "src_height", "src_mode", "sha256", "caption", "attributes", "boxes", "source",
]
SPLIT_NAMES = ("images", "pairs", "val", "test", "web")  # web: prepare.web_images, the downloaded parts' corpus
SHARD_DIR = "shards"


@dataclass
class Summary:
    accepted: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    rejected: Counter = field(default_factory=Counter)
    converted: Counter = field(default_factory=Counter)
    captioned: int = 0
    seconds: float = 0.0

    def line(self, out: Path) -> str:
        splits = ", ".join(f"{k} {v}" for k, v in self.splits.items())
        rej = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items())) or "none"
        conv = ", ".join(f"{k} {v}" for k, v in sorted(self.converted.items())) or "none"
        return (
            f"prepare: {self.accepted} accepted ({splits}), {sum(self.rejected.values())} rejected ({rej}), "
            f"converted to RGB: {conv}; {self.seconds:.1f}s -> {out}"
        )

    def to_dict(self) -> dict:
        return {
            "accepted": self.accepted,
            "captioned": self.captioned,
            "rejected": sum(self.rejected.values()),
            "splits": dict(self.splits),
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "converted_by_mode": dict(sorted(self.converted.items())),
        }

    def metrics(self) -> dict:
        """``to_dict`` plus the run's seconds: the stage's metrics (summary.json has no timings)."""
        return {**self.to_dict(), "seconds": round(self.seconds, 3)}


# ------------------------------------------------------------------------ decode + check
class Reject(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@contextlib.contextmanager
def _no_pil_bomb_guard():
    """We check the pixel count ourselves (prepare.max_megapixels) with a clear reason."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def decode(raw: bytes, p: Prepare, ext: str = "") -> tuple[np.ndarray, tuple[int, int], str]:
    """Bytes -> (S x S x 3 uint8, source (w, h), source mode) or raise Reject."""
    if len(raw) == 0:
        raise Reject("empty", "zero-byte file")
    with _no_pil_bomb_guard():
        try:
            img = Image.open(io.BytesIO(raw))
        except UnidentifiedImageError:
            said = f" although named {ext}" if ext else ""
            raise Reject("not_an_image", f"content is not a known image format{said}") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise Reject("corrupt", f"cannot read image header: {err}") from None
        w, h = img.size
        mp = w * h / 1e6
        if mp > p.max_megapixels:
            raise Reject("too_large", f"{w}x{h} = {mp:.1f} MP is over prepare.max_megapixels={p.max_megapixels:g}")
        if min(w, h) < p.min_side:
            raise Reject("too_small", f"{w}x{h}: short side is under prepare.min_side={p.min_side}")
        if max(w, h) / min(w, h) > p.max_aspect:
            raise Reject("bad_aspect", f"{w}x{h}: aspect {max(w, h) / min(w, h):.2f} is over prepare.max_aspect={p.max_aspect:g}")
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as err:
            raise Reject("truncated", f"image data is truncated or corrupt: {err}") from None
    mode = img.mode
    img = ImageOps.exif_transpose(img) if mode != "P" else img
    rgb = to_rgb(img, p.composite_background)
    return resize_square(rgb, p.image_size), (w, h), mode


def to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any PIL mode -> RGB. Transparency is composited on ``background``; 16-bit scales to 8."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        base = Image.new("RGB", rgba.size, tuple(background))
        base.paste(rgba, mask=rgba.getchannel("A"))
        return base
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if mode == "F":
            top = max(1.0, float(arr.max(initial=1.0)))
        arr8 = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def resize_square(img: Image.Image, size: int) -> np.ndarray:
    """Scale the short side to ``size`` and centre-crop: S x S x 3 uint8."""
    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


# -------------------------------------------------------------------------------- shards
class ShardWriter:
    def __init__(self, root: Path, image_bytes: int, shard_size: int):
        self.dir = root / SHARD_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.image_bytes, self.shard_size = image_bytes, shard_size
        self.index, self.count, self.fh = -1, 0, None

    def add(self, pixels: np.ndarray) -> tuple[str, int]:
        if self.fh is None or self.count == self.shard_size:
            self.close()
            self.index += 1
            self.count = 0
            self.fh = open(self.dir / f"shard-{self.index:05d}.bin", "wb")
        name = f"{SHARD_DIR}/shard-{self.index:05d}.bin"
        offset = self.count * self.image_bytes
        self.fh.write(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
        self.count += 1
        return name, offset

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


# ------------------------------------------------------------------------------- prepare
def scan(p: Prepare, seed: int) -> sources.Scan:
    if p.source == "synthetic":
        # render until num_images are accepted; duplicates (rare) are rejected and replaced
        return sources.synthetic(seed, p.image_size, limit=4 * p.num_images)
    if p.source == "folder":
        return sources.folder(p.path)
    if p.source == "parquet":
        return sources.parquet(p.path, p.image_column, p.caption_column, p.key_column)
    return sources.webdataset(p.path)


def prepare(params: Params, out: str | Path, progress: bool = True) -> Summary:
    """Ingest ``params.prepare.source`` into ``out`` (replaced atomically when done)."""
    p, t0 = params.prepare, time.perf_counter()
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    found = scan(p, params.seed)
    target = p.num_images if p.source == "synthetic" else None
    writer = ShardWriter(tmp, p.image_size * p.image_size * 3, p.shard_size)
    summary = Summary()
    rejected: list[Rejection] = list(found.rejected)
    seen: dict[str, str] = {}  # sha256 -> source of the accepted image
    ids: dict[str, str] = {}  # manifest id -> source of the accepted image
    bar = tqdm(total=(target + p.web_images) if target else found.total, desc="prepare", unit="img", disable=not progress)

    def take(items, target: int | None) -> list[dict]:
        """Accepted rows of ``items`` (up to ``target``), through the one ``seen`` (sha256 dedup)."""
        rows: list[dict] = []
        for item in items:
            if target is not None and len(rows) >= target:
                break
            try:
                row = _accept(item, p, seen, ids)
            except Reject as r:
                rejected.append(Rejection(item.source, r.reason, r.detail))
                if target is None:
                    bar.update()
                continue
            row["shard"], row["offset"] = writer.add(row.pop("pixels"))
            rows.append(row)
            bar.update()
        return rows

    rows = take(found.items, target)
    # the web split: its own scene stream, after the main one, so that a web picture equal to a
    # main one is the duplicate (rejected) and the main splits do not depend on web_images
    web_rows = take(sources.synthetic(params.seed, p.image_size, 4 * p.web_images, stream="web").items, p.web_images) if p.web_images else []
    bar.close()
    writer.close()
    if target is not None and len(rows) < target:
        raise VLVError(f"prepare.num_images={target}: only {len(rows)} distinct scenes were rendered; lower it")
    if len(web_rows) < p.web_images:
        raise VLVError(f"prepare.web_images={p.web_images}: only {len(web_rows)} distinct web scenes were rendered; lower it")
    if not rows:
        shutil.rmtree(tmp, ignore_errors=True)
        reasons = ", ".join(f"{k} {v}" for k, v in Counter(r.reason for r in rejected).most_common()) or "no inputs found"
        raise VLVError(f"prepare: nothing accepted from {p.path or p.source} (rejected: {reasons}); check prepare.path and prepare.source")

    manifest = pd.DataFrame(rows)
    manifest["split"] = assign_splits(manifest, p, params.seed)
    if web_rows:
        manifest = pd.concat([manifest, pd.DataFrame(web_rows).assign(split="web")], ignore_index=True)
    manifest = manifest[MANIFEST_COLUMNS]
    manifest.to_parquet(tmp / "manifest.parquet", index=False)
    pd.DataFrame([[sources.printable(r.source), r.reason, sources.printable(r.detail)] for r in rejected],
                 columns=["source", "reason", "detail"]).to_csv(tmp / "rejected.csv", index=False)
    summary.accepted = len(manifest)
    summary.captioned = int(manifest["caption"].notna().sum())
    summary.splits = {s: int((manifest["split"] == s).sum()) for s in SPLIT_NAMES}
    summary.rejected = Counter(r.reason for r in rejected)
    summary.converted = Counter(manifest.loc[manifest["src_mode"] != "RGB", "src_mode"])
    summary.seconds = time.perf_counter() - t0
    (tmp / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return summary


def _accept(item: Item, p: Prepare, seen: dict[str, str], ids: dict[str, str]) -> dict:
    """Validate one item -> manifest row with its pixels, or raise Reject. ``seen`` (sha256)
    and ``ids`` (manifest id) map to the source of the accepted image that holds them."""
    if item.rejection is not None:
        raise Reject(item.rejection.reason, item.rejection.detail)
    if sources.printable(item.key) != item.key:
        raise Reject("bad_name", f"name {sources.printable(item.key)!r} is not valid UTF-8; rename it")
    if item.key in ids:
        raise Reject("duplicate_id", f"id {item.key!r} is already taken by {ids[item.key]}; the first is kept, give each a unique name")
    if item.pixels is None:
        try:
            raw = item.read()
        except PermissionError as err:
            raise Reject("unreadable", f"permission denied ({err.strerror}); fix the file's permissions") from None
        except OSError as err:
            raise Reject("unreadable", f"cannot read: {err.strerror or err}") from None
        if not raw:
            raise Reject("empty", "zero-byte file")
    else:
        raw = item.pixels.tobytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest in seen:
        raise Reject("duplicate", f"same content (sha256) as {seen[digest]}")
    if item.pixels is None:
        pixels, (w, h), mode = decode(raw, p, item.ext)
    else:
        pixels, (w, h), mode = item.pixels, item.pixels.shape[1::-1], "RGB"
    seen[digest] = ids[item.key] = item.source
    caption = item.caption.strip() if isinstance(item.caption, str) and item.caption.strip() else None
    return {
        "id": item.key,
        "pixels": pixels,
        "width": p.image_size,
        "height": p.image_size,
        "src_width": int(w),
        "src_height": int(h),
        "src_mode": mode,
        "sha256": digest,
        "caption": caption,
        "attributes": json.dumps(item.attributes) if item.attributes else None,
        "boxes": json.dumps(item.boxes) if item.boxes is not None else None,
        "source": sources.printable(item.source),
    }


def assign_splits(manifest: pd.DataFrame, p: Prepare, seed: int) -> pd.Series:
    """Deterministic by seed: val and test from all, pairs from the captioned rest."""
    n = len(manifest)
    rng = np.random.default_rng([seed, 0x5B11])
    order = rng.permutation(n)
    split = np.full(n, "images", dtype=object)
    n_val, n_test = round(p.splits.val * n), round(p.splits.test * n)
    split[order[:n_val]] = "val"
    split[order[n_val : n_val + n_test]] = "test"
    rest = order[n_val + n_test :]
    captioned = manifest["caption"].notna().to_numpy()
    pairs_pool = rest[captioned[rest]]
    n_pairs = min(round(p.splits.pairs * n), len(pairs_pool))
    split[pairs_pool[:n_pairs]] = "pairs"
    return pd.Series(split, index=manifest.index, name="split")


# ------------------------------------------------------------------------------- reading
def read_manifest(root: str | Path) -> pd.DataFrame:
    path = Path(root) / "manifest.parquet"
    if not path.is_file():
        raise VLVError(f"{path} not found; run the prepare stage first (dvc repro prepare)")
    return pd.read_parquet(path)


class ShardDataset:
    """Images of one split as a map-style torch dataset, read from the memory-mapped shards.

    Returns ``{"pixel_values": float32 3xSxS in [-1, 1], "id": str}``, plus ``"caption"``
    when ``captions=True`` and ``"boxes"`` (the objects' boxes as JSON, no words) when ``boxes=True``. Stage 1 reads the ``images`` split with captions off: it never
    sees a caption. ``split`` names what was opened (splits joined by "+"); ``reads`` turns
    it into a part's record.
    """

    def __init__(self, root: str | Path, split: str | tuple[str, ...], captions: bool = False, limit: int | None = None,
                 boxes: bool = False):
        self.root = Path(root)
        manifest = read_manifest(self.root)
        splits = (split,) if isinstance(split, str) else tuple(split)
        unknown = set(splits) - set(SPLIT_NAMES)
        if unknown:
            raise VLVError(f"unknown split {sorted(unknown)}; splits are {list(SPLIT_NAMES)}")
        rows = manifest[manifest["split"].isin(splits)].sort_values("id").reset_index(drop=True)
        if limit is not None:
            rows = rows.iloc[:limit]
        if captions and rows["caption"].isna().any():
            raise VLVError(f"{self.root}: {int(rows['caption'].isna().sum())} images of split {split} have no caption")
        if boxes and ("boxes" not in rows or rows["boxes"].isna().any()):
            missing = len(rows) if "boxes" not in rows else int(rows["boxes"].isna().sum())
            raise VLVError(f"{self.root}: {missing} images of split {split} have no object boxes (only the synthetic source "
                           f"annotates them); run prepare again with prepare.source synthetic")
        self.rows, self.captions, self.boxes, self.split = rows, captions, boxes, "+".join(splits)
        # plain arrays for the per-item hot path (a pandas row lookup per item is slow next to an array index)
        self._shard = rows["shard"].to_numpy()
        self._offset = rows["offset"].to_numpy(dtype=np.int64)
        self._hw = rows[["height", "width"]].to_numpy(dtype=np.int64)
        self._id = rows["id"].to_numpy()
        self._caption = rows["caption"].to_numpy()
        self._boxes = rows["boxes"].to_numpy() if boxes else None
        self._maps: dict[str, np.memmap] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def pixels(self, i: int) -> np.ndarray:
        """H x W x 3 uint8 of row ``i``."""
        shard, offset, (h, w) = self._shard[i], int(self._offset[i]), self._hw[i]
        mm = self._maps.get(shard)
        if mm is None:
            mm = self._maps[shard] = np.memmap(self.root / shard, dtype=np.uint8, mode="r")
        return np.asarray(mm[offset : offset + h * w * 3]).reshape(h, w, 3)

    def pixel_values(self, n: int | None = None) -> "torch.Tensor":
        """The first ``n`` rows (all when None) as one N x 3 x H x W tensor in [-1, 1]."""
        import torch

        return torch.stack([to_tensor(self.pixels(i)) for i in range(len(self) if n is None else min(n, len(self)))])

    def __getitem__(self, i: int) -> dict:
        out = {"pixel_values": to_tensor(self.pixels(i)), "id": self._id[i]}
        if self.captions:
            out["caption"] = self._caption[i]
        if self.boxes:
            out["boxes"] = self._boxes[i]  # JSON: [[x0, y0, x1, y1], ...] in pixels, reading order
        return out


def reads(dataset, images: bool = True) -> dict:
    """What a part read from the prepared data, for its record (metrics JSON "reads", MLflow
    params reads.<part>.*): ``{"split": ..., "images": N, "captions": N or 0, "boxes": N or 0}``. ``dataset`` is a
    ShardDataset or wraps one (``.dataset``: latents.WithLatents); ``images=False`` for a part
    that reads the captions as text only (the LM)."""
    inner = dataset
    while not isinstance(inner, ShardDataset):
        inner = inner.dataset
    n = len(dataset)
    return {"split": inner.split, "images": n if images else 0, "captions": n if inner.captions else 0,
            "boxes": n if inner.boxes else 0}


def sample_grid(root: str | Path, path: str | Path, n: int = 16, split: str = "images") -> Path:
    """A PNG grid of ``n`` prepared images with their captions (for people and DVC plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import textwrap

    ds = ShardDataset(root, split, limit=n)
    cols = 4
    rows = max(1, -(-len(ds) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 2.9), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in zip(range(len(ds)), axes.flat):
        ax.imshow(ds.pixels(i), interpolation="nearest")
        caption = ds.rows.at[i, "caption"] or "(no caption)"
        ax.set_title("\n".join(textwrap.wrap(caption, 28)), fontsize=6)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def manifest_hash(root: str | Path) -> str:
    """sha256 of manifest.parquet: names the exact prepared data a checkpoint was made from."""
    path = Path(root) / "manifest.parquet"
    if not path.is_file():
        raise VLVError(f"{path} not found; run the prepare stage first (dvc repro prepare)")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def image_tensor(raw: bytes, size: int, ext: str = "") -> "torch.Tensor":
    """Any image file's bytes (any size or mode) as a 3 x size x size tensor in [-1, 1]
    (short side scaled, centre crop, as in prepare). Raises ValueError with the reason."""
    try:
        pixels, _, _ = decode(raw, Prepare(image_size=size, min_side=1, max_aspect=1e6), ext)
    except Reject as r:
        raise ValueError(r.detail) from None
    return to_tensor(pixels)


def to_tensor(pixels: np.ndarray) -> "torch.Tensor":
    """uint8 pixels, H x W x 3 (or N x H x W x 3), as float channels-first in [-1, 1]: the
    models' input convention (``plots.to_uint8`` is the inverse)."""
    import torch

    x = torch.from_numpy(np.array(pixels, dtype=np.float32)).div_(127.5).sub_(1.0)  # one writable copy
    return x.permute(2, 0, 1) if x.ndim == 3 else x.permute(0, 3, 1, 2)


def find_images(paths: Sequence[str | Path]) -> list[tuple[str, Path]]:
    """The files ``paths`` name, as (name, file), in the order given (nothing is read yet).

    Each path is a folder (every file under it), a file, or a glob pattern (expanded here too,
    so a quoted pattern works; ``**`` reaches into sub-folders). Paths that match nothing stop
    the command with one line naming them; a file named twice is kept once. Names are paths
    relative to the deepest folder holding every input: a single folder's files are named as
    inside it, and two files never share a name."""
    import glob
    import os

    files: list[Path] = []
    roots: list[str] = []  # the folders the names are relative to
    missing = []
    for path in map(str, paths):
        matches = [path] if os.path.exists(path) else sorted(glob.glob(path, recursive=True))
        if not matches:
            missing.append(path)
        for m in matches:
            if os.path.isdir(m):
                roots.append(os.path.abspath(m))
                files.extend(sorted(x for x in Path(m).rglob("*") if x.is_file()))
            else:
                roots.append(os.path.dirname(os.path.abspath(m)))
                files.append(Path(m))
    if missing:
        raise VLVError(f"{', '.join(missing)}: no such file or folder, and nothing matches as a glob pattern")
    root = os.path.commonpath(roots)
    out, seen = [], set()
    for f in files:
        if os.path.realpath(f) not in seen:
            seen.add(os.path.realpath(f))
            out.append((Path(os.path.relpath(os.path.abspath(f), root)).as_posix(), f))
    return out


def load_images(found: Sequence[tuple[str, Path]], size: int) -> list[tuple[str, "torch.Tensor"]]:
    """``find_images``'s files as (name, 3xSxS tensor in [-1, 1]); a file that is not a readable
    image is listed on stderr with its reason and skipped (never fatal), unless none is left."""
    import sys

    out = []
    for name, f in found:
        if f.suffix.lower() not in sources.IMAGE_EXTS:
            print(f"skipped {f}: not an image file name ({', '.join(sorted(sources.IMAGE_EXTS))})", file=sys.stderr)
            continue
        try:
            x = image_tensor(f.read_bytes(), size, f.suffix.lower())
        except ValueError as err:
            print(f"skipped {f}: {err}", file=sys.stderr)
            continue
        except OSError as err:
            print(f"skipped {f}: cannot read ({err.strerror})", file=sys.stderr)
            continue
        out.append((name, x))
    if not out:
        raise VLVError(f"no readable images among the {len(found)} files found")
    return out


# ------------------------------------------------------------------------------ folders
def folder_hash(folder: str | Path) -> str:
    """sha256 over a folder's relative file names and bytes (what a model folder holds)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VLVError(f"{folder}: no such folder; run the stage that writes it first")
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def replace_folder(tmp: str | Path, out: str | Path) -> Path:
    """Put a fully written folder in place of ``out`` (never a half-written ``out``)."""
    tmp, out = Path(tmp), Path(out)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
