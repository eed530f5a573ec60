"""Content fingerprints of the model folders and weight files the stages read.

The component folders (``components.*``) and ``evaluate.inception`` live outside the
pipeline, and params name them by path only; new weights in the same folder must still
re-run what read the old ones, and must not resume a checkpoint made from them. So:

- ``content_hash(path)``: sha256 over a file's bytes, or over a folder's relative file
  names and their bytes. Files are hashed once per (size, mtime): a stat cache beside the
  MLflow store (cache/fingerprints.json under the project root) makes the next call cheap
  even for SD-2.1's 5 GB.
- the ``components`` stage (pipelines/components.py, always run by DVC) writes one small
  JSON per part under models/fingerprints/; each later stage depends on the parts it reads,
  so DVC re-runs exactly those stages when a folder's content changes;
- the training stages put ``content_hash`` of the folders they read into their checkpoint
  fingerprints (vlv.train.fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .config import Params
from .errors import VLVError

OUT = Path("models/fingerprints")
MADE_HERE = Path("models/pretrained")  # pretrain's out in train mode: DVC already tracks its content
CHUNK = 16 << 20


def _cache_file() -> Path:
    from .tracking import root_dir

    return root_dir() / "cache" / "fingerprints.json"


def _file_digest(path: Path, cache: dict) -> str:
    st = path.stat()
    key = str(path.resolve())
    hit = cache.get(key)
    if hit and hit["size"] == st.st_size and hit["mtime_ns"] == st.st_mtime_ns:
        return hit["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h.hexdigest()}
    return cache[key]["sha256"]


def content_hash(path: str | Path, what: str = "path") -> str:
    """sha256 of a file, or of a folder's (relative name, sha256 of bytes) list, sorted."""
    path = Path(path)
    if not path.exists():
        raise VLVError(f"{what}={path}: not found; point it at an existing folder or file")
    cache_path = _cache_file()
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    if path.is_file():
        digest = _file_digest(path, cache)
    else:
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
            h.update(_file_digest(f, cache).encode())
        digest = h.hexdigest()
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(f".{cache_path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_path)
    except OSError:
        pass  # a read-only project: hashing still works, just not cached
    return digest


def parts(params: Params) -> dict[str, tuple[str, str | None]]:
    """Every external part the pipeline reads: name -> (param, path or None)."""
    c = params.components
    return {"t2i": ("components.t2i", c.t2i), "vision": ("components.vision", c.vision), "llm": ("components.llm", c.llm),
            "classifier": ("components.classifier", c.classifier), "inception": ("evaluate.inception", params.evaluate.inception)}


def made_by_pipeline(params: Params, path: str) -> bool:
    """Folders pretrain writes in train mode (the embedded parts): their content is a DVC out."""
    return params.pretrain.mode == "train" and Path(path).resolve().is_relative_to(MADE_HERE.resolve())


def of_components(params: Params, names: tuple[str, ...] = ("t2i", "vision", "llm")) -> dict[str, str | None]:
    """Content hashes of the named parts (None where the param is null): for checkpoint fingerprints."""
    table = parts(params)
    return {n: content_hash(table[n][1], table[n][0]) if table[n][1] else None for n in names}


def write(params: Params, out: Path = OUT) -> dict[str, dict]:
    """One JSON per part under ``out``: its path and content hash (or who makes it). Written only
    when it changes, so DVC sees an unchanged dependency when nothing changed."""
    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    records = {}
    for name, (param, path) in tqdm(parts(params).items(), desc="components: fingerprint", unit="part"):
        if path is None:
            rec = {"param": param, "path": None}
        elif made_by_pipeline(params, path):
            rec = {"param": param, "path": path, "made_by": "pretrain (a DVC out: its content is tracked there)"}
        else:
            rec = {"param": param, "path": path, "sha256": content_hash(path, param)}
        text = json.dumps(rec, indent=2) + "\n"
        target = out / f"{name}.json"
        if not target.is_file() or target.read_text() != text:
            target.write_text(text)
        records[name] = rec
    return records
