"""Where images come from: each source yields ``Item``s for vlv.data to validate.

An item carries raw bytes (or, for the shapes world, ready pixels) plus its caption.
Sources never decode images and never write files: a tar or parquet member is read
into memory, so a member named ``/etc/x`` or ``../../x`` cannot escape the output folder;
such names are reported as rejected instead. Anything a source cannot use (a README
beside the images, a caption file with no image) is reported too: nothing is dropped
silently.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import numpy as np

from . import world
from .errors import VLVError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
CAPTION_EXTS = (".txt", ".caption")  # in this order: a .txt sidecar is used before a .caption one


@dataclass
class Item:
    """One candidate input. Exactly one of ``read`` / ``pixels`` is set."""

    source: str  # where it came from, for people: a path, "shard.tar:member", "file.parquet#row"
    key: str  # stable id within the source
    read: Callable[[], bytes] | None = None
    pixels: np.ndarray | None = None  # H x W x 3 uint8, already valid (shapes world)
    caption: str | None = None
    attributes: dict | None = None
    boxes: list | None = None  # object boxes [x0, y0, x1, y1] in pixels of the stored image (shapes world)
    ext: str = ""
    rejection: "Rejection | None" = None  # set when the source already knows it is unusable


@dataclass
class Rejection:
    source: str
    reason: str  # short code, e.g. "duplicate"
    detail: str


@dataclass
class Scan:
    """A source's items (lazy), its up-front rejections, and its size when known."""

    items: Iterator[Item]
    total: int | None
    rejected: list[Rejection] = field(default_factory=list)


def printable(text: str) -> str:
    """``text`` as valid UTF-8: the undecodable bytes of a file name (Python keeps them as
    surrogate escapes) written as ``\\xNN``, so that a manifest or CSV can hold the name."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def unsafe_name(name: str) -> str | None:
    """Why a member name could escape an output folder, or None if it is safe."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return f"absolute member name {name!r}"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return f"member name {name!r} climbs out with '..'"
    return None


# ---------------------------------------------------------------------------- synthetic
def synthetic(seed: int, size: int, limit: int, stream: str = "main") -> Scan:
    """Shapes-world scenes seed/0, seed/1, ... (the caller stops when it has enough); stream
    "web": the web split's own scenes (world.web_scene_at), keys web-NNNNNNN."""
    at, prefix, name = (world.scene_at, "syn", "") if stream == "main" else (world.web_scene_at, "web", " web")

    def gen() -> Iterator[Item]:
        for i in range(limit):
            scene = at(seed, i, size)
            yield Item(
                source=f"shapes-world seed={seed}{name} index={i}",
                key=f"{prefix}-{i:07d}",
                pixels=scene.render(),
                caption=scene.caption(),
                attributes=scene.attributes.to_dict(),
                boxes=[[round(v, 3) for v in b] for b in scene.boxes()],
            )

    return Scan(gen(), total=None)


# ------------------------------------------------------------------------------- folder
def folder(root: str | Path) -> Scan:
    """Every file under ``root``: images (+ sidecar .txt or captions.csv), the rest rejected.

    A symbolic link to a file is read; a symbolic link to a folder is not followed (it could
    loop or leave the tree): it is rejected as ``folder_link``. A captions.csv row that names
    no image of the folder is rejected as ``orphan_caption``; a repeated row as ``duplicate_caption``.
    """
    root = Path(root)
    if not root.is_dir():
        raise VLVError(f"prepare.path: folder {root} does not exist; point it at a tree of images")
    rejected: list[Rejection] = []
    files: list[Path] = []

    def on_error(err: OSError) -> None:
        rejected.append(Rejection(str(err.filename), "unreadable", f"cannot list folder: {err.strerror}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):  # never follows folder links
        dirnames.sort()
        for d in dirnames:
            if (Path(dirpath) / d).is_symlink():
                target = os.readlink(Path(dirpath) / d)
                rejected.append(Rejection(str(Path(dirpath) / d), "folder_link",
                                          f"symbolic link to a folder ({target}) is not followed; point prepare.path at "
                                          "the folder itself or copy its files in"))
        files.extend(Path(dirpath) / f for f in sorted(filenames))

    csv_path = root / "captions.csv"
    csv_captions = _captions_csv(csv_path) if csv_path.is_file() else {}
    images = [f for f in files if f.suffix.lower() in IMAGE_EXTS]
    image_stems = {f.with_suffix("") for f in images}
    image_names = {f.relative_to(root).as_posix() for f in images}
    for name, rows in csv_captions.items():
        first = rows[0][0]
        if name not in image_names:
            rejected.append(Rejection(f"{csv_path}:{first}", "orphan_caption",
                                      f"captions.csv names {name!r}, which is not an image in the folder"))
        for line, _ in rows[1:]:
            rejected.append(Rejection(f"{csv_path}:{line}", "duplicate_caption",
                                      f"captions.csv names {name!r} again; the row on line {first} is used"))
    for f in files:
        if f.suffix.lower() in IMAGE_EXTS or f == csv_path:
            continue
        if f.suffix.lower() in CAPTION_EXTS:
            if f.with_suffix("") not in image_stems:
                rejected.append(Rejection(str(f), "orphan_caption", "caption file with no image of the same name"))
            continue
        rejected.append(Rejection(str(f), "not_image_file", f"extension {f.suffix or '(none)'!r} is not an image type"))

    def gen() -> Iterator[Item]:
        for f in images:
            rel = f.relative_to(root).as_posix()
            caption = csv_captions[rel][0][1] if rel in csv_captions else None
            sidecars = [f.with_suffix(e) for e in CAPTION_EXTS if f.with_suffix(e).is_file()]
            for extra in sidecars[1:]:
                yield _rejected_item(str(extra), "duplicate_caption", f"{sidecars[0].name} is this image's caption file; remove one")
            if sidecars:
                kept = "with its captions.csv caption" if caption else "without a caption"
                try:
                    caption = sidecars[0].read_text(encoding="utf-8").strip() or caption
                except UnicodeDecodeError as err:  # the image is still usable: kept, the caption file listed
                    yield _rejected_item(str(sidecars[0]), "caption_not_utf8",
                                         f"caption file is not UTF-8 text (byte {err.start}); the image is kept {kept}; save it as UTF-8")
                except OSError as err:
                    yield _rejected_item(str(sidecars[0]), "unreadable", f"cannot read caption file ({err.strerror}); the image is kept {kept}")
            yield Item(source=str(f), key=rel, read=f.read_bytes, caption=caption, ext=f.suffix.lower())

    return Scan(gen(), total=len(images), rejected=rejected)


def _captions_csv(path: Path) -> dict[str, list[tuple[int, str]]]:
    """file -> [(line, caption), ...] in file order (a repeated file has several rows)."""
    rows: dict[str, list[tuple[int, str]]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"file", "caption"} <= set(reader.fieldnames):
                raise VLVError(f"{path}: needs a header with columns 'file' and 'caption' (got {reader.fieldnames})")
            for row in reader:  # a row naming no image (an empty name too) is rejected by the caller
                name = (row["file"] or "").replace("\\", "/")
                rows.setdefault(name, []).append((reader.line_num, row["caption"] or ""))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise VLVError(f"{path}: cannot read captions.csv ({err}); fix or remove it") from None
    return rows


# ------------------------------------------------------------------------------ parquet
def parquet(path: str | Path, image_column: str, caption_column: str, key_column: str | None) -> Scan:
    """LAION-style parquet: one row per image, bytes (or {bytes: ...}) + caption columns.

    A caption column that does not hold text (e.g. ints) is listed once per file in rejected
    (``caption_not_text``) and that file's images are kept without captions."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise VLVError(f"prepare.path: no parquet file at {path}; point it at a .parquet file or a folder of them")
    total = 0
    metas = []
    rejected: list[Rejection] = []
    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except Exception as err:  # pyarrow raises several types for a bad file
            raise VLVError(f"{f}: not a readable parquet file ({err}); fix or remove it") from None
        names = pf.schema_arrow.names
        if image_column not in names:
            raise VLVError(f"{f}: no column {image_column!r} (prepare.image_column); columns are {names}")
        if caption_column in names:
            kind = pf.schema_arrow.field(caption_column).type
            value_kind = kind.value_type if pa.types.is_dictionary(kind) else kind
            if not (pa.types.is_string(value_kind) or pa.types.is_large_string(value_kind)
                    or pa.types.is_string_view(value_kind) or pa.types.is_null(value_kind)):
                rejected.append(Rejection(f"{f}[{caption_column}]", "caption_not_text",
                                          f"column {caption_column!r} (prepare.caption_column) holds {kind}, not text: the "
                                          f"{pf.metadata.num_rows} images of this file are kept without captions; point "
                                          "prepare.caption_column at a text column"))
                names = [n for n in names if n != caption_column]
        metas.append((f, pf, names))
        total += pf.metadata.num_rows

    def gen() -> Iterator[Item]:
        for f, pf, names in metas:
            cols = [c for c in (image_column, caption_column, key_column) if c and c in names]
            row = 0
            for batch in pf.iter_batches(batch_size=256, columns=cols):
                data = batch.to_pydict()
                for i in range(batch.num_rows):
                    value = data[image_column][i]
                    if isinstance(value, dict):  # Hugging Face datasets' Image feature
                        value = value.get("bytes")
                    key = str(data[key_column][i]) if key_column in data and data[key_column][i] else f"{row:08d}"
                    where = f"{f}#{row}"
                    row += 1
                    bad = unsafe_name(key)
                    if bad:
                        yield _rejected_item(where, "unsafe_name", bad + "; it is never written to disk")
                        continue
                    if value is not None and not isinstance(value, bytes):
                        kind = type(value).__name__
                        yield _rejected_item(where, "not_an_image", f"column {image_column!r} holds {kind}, not image bytes")
                        continue
                    yield Item(
                        source=where,
                        key=f"{f.stem}/{key}",
                        read=(lambda v=value: v if v is not None else b""),
                        caption=data[caption_column][i] if caption_column in data else None,
                        ext=Path(key).suffix.lower(),
                    )

    return Scan(gen(), total=total, rejected=rejected)


# --------------------------------------------------------------------------- webdataset
def webdataset(path: str | Path) -> Scan:
    """WebDataset .tar shards: members grouped by key (name up to the first dot). A member
    name that repeats within a shard is rejected (``duplicate_name``): the first is kept."""
    p = str(path)
    if os.path.isdir(p):
        shards = sorted(glob.glob(os.path.join(p, "**", "*.tar"), recursive=True))
    else:
        shards = sorted(glob.glob(p))
    if not shards:
        raise VLVError(f"prepare.path: no .tar shards at {p}; point it at a folder, a .tar file or a glob")
    return Scan(_tar_items(shards), total=None)


def _tar_items(shards: list[str]) -> Iterator[Item]:
    for shard in shards:
        group_key: str | None = None
        group: dict[str, tuple[str, bytes]] = {}
        names: set[str] = set()  # member names read so far in this shard
        last = "(start)"
        try:
            with tarfile.open(shard, mode="r|*") as tar:
                for member in tar:
                    where = f"{shard}:{member.name}"
                    last = member.name
                    if member.isdir():
                        continue
                    bad = unsafe_name(member.name)
                    if bad:
                        yield _rejected_item(where, "unsafe_name", bad + "; it is never written to disk")
                        continue
                    if not member.isfile():
                        yield _rejected_item(where, "not_regular_member", "tar member is a link or device; only regular files are read")
                        continue
                    if member.name in names:
                        yield _rejected_item(where, "duplicate_name", "a member of this name came earlier in the shard; the first is kept")
                        continue
                    names.add(member.name)
                    stem, _, ext = _split_member(member.name)
                    if stem != group_key:
                        yield from _tar_group(shard, group_key, group)
                        group_key, group = stem, {}
                    fh = tar.extractfile(member)
                    group[ext] = (where, fh.read() if fh else b"")
                # tarfile stops quietly at a missing or cut header; only a full zero
                # block (just read, at tar.offset) marks a complete archive
                if tar.fileobj.tell() - tar.offset < tarfile.BLOCKSIZE:
                    raise tarfile.ReadError("archive ends without its end-of-archive block")
        except (tarfile.TarError, OSError, EOFError) as err:
            yield from _tar_group(shard, group_key, group)
            yield _rejected_item(f"{shard}:{last}", "tar_truncated", f"shard unreadable after this member ({err})")
            continue
        yield from _tar_group(shard, group_key, group)


def _split_member(name: str) -> tuple[str, str, str]:
    d, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), dot, "." + ext.lower() if ext else ""


def _tar_group(shard: str, key: str | None, group: dict[str, tuple[str, bytes]]) -> Iterator[Item]:
    if key is None or not group:  # no group yet, or its first member was cut off
        return
    caption = None
    for ext in (".txt", ".caption"):
        if ext in group:
            caption = group.pop(ext)[1].decode("utf-8", "replace").strip()
    if ".json" in group:
        where, raw = group.pop(".json")
        try:
            meta = json.loads(raw)
            caption = caption or meta.get("caption") or meta.get("text")
        except (json.JSONDecodeError, AttributeError):
            yield _rejected_item(where, "bad_metadata", "json member is not a JSON object; caption ignored")
    images = [e for e in group if e in IMAGE_EXTS]
    for ext in group:
        if ext not in IMAGE_EXTS:
            yield _rejected_item(group[ext][0], "unused_member", f"extension {ext!r} is neither image nor caption")
    for n, ext in enumerate(images):
        where, raw = group[ext]
        yield Item(
            source=where,
            key=f"{Path(shard).stem}/{key}" + (f"{ext}" if n else ""),
            read=(lambda r=raw: r),
            caption=caption,
            ext=ext,
        )
    if not images:
        yield _rejected_item(f"{shard}:{key}", "orphan_caption", "sample has no image member")


def _rejected_item(source: str, reason: str, detail: str) -> Item:
    """An item that is already rejected (carried in-band to keep the stream's order)."""
    return Item(source=source, key=source, rejection=Rejection(source, reason, detail))
