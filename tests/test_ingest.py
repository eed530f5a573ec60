"""Dataset preparation (vlv.data.prepare) on hostile inputs, all built here in tmp_path.

Every input either lands in manifest.parquet or in rejected.csv with a reason code, and
``prepare`` never crashes on a bad input (it raises VLVError only when nothing is usable).
"""

from __future__ import annotations

import io
import json
import os
import select
import shutil
import signal
import struct
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vlv import data, world
from vlv.config import validate
from vlv.data import SPLIT_NAMES, Reject, ShardDataset, decode, prepare
from vlv.errors import VLVError

BG = (10, 200, 30)  # prepare.composite_background: not the default, so a hard-coded white fails


# --------------------------------------------------------------------------- helpers
def make_params(source: str, path=None, seed: int = 0, **prepare_kw):
    raw = {"source": source, "min_side": 8, "image_size": 32, "web_images": 0, **prepare_kw}
    if path is not None:
        raw["path"] = str(path)
    return validate({"seed": seed, "prepare": raw})


def run(params, out: Path):
    """prepare -> (summary, manifest, rejected, summary.json); checks the books balance."""
    summary = prepare(params, out, progress=False)
    manifest = pd.read_parquet(out / "manifest.parquet")
    rejected = pd.read_csv(out / "rejected.csv", keep_default_na=False)
    info = json.loads((out / "summary.json").read_text())
    assert list(rejected.columns) == ["source", "reason", "detail"]
    assert info["accepted"] == summary.accepted == len(manifest)
    assert info["rejected"] == sum(summary.rejected.values()) == len(rejected)
    assert info["rejected_by_reason"] == rejected["reason"].value_counts().to_dict()
    assert info["splits"] == {s: int((manifest["split"] == s).sum()) for s in SPLIT_NAMES}
    assert info["captioned"] == int(manifest["caption"].notna().sum())
    assert info["converted_by_mode"] == manifest.loc[manifest["src_mode"] != "RGB", "src_mode"].value_counts().to_dict()
    line = summary.line(out)
    assert f"{len(manifest)} accepted" in line and f"{len(rejected)} rejected" in line
    assert manifest["id"].is_unique
    assert not out.with_name(out.name + ".partial").exists()
    return summary, manifest, rejected, info


def rows_pixels(out: Path, manifest: pd.DataFrame, row_id: str) -> np.ndarray:
    r = manifest.set_index("id").loc[row_id]
    n = int(r["width"]) * int(r["height"]) * 3
    raw = (out / r["shard"]).read_bytes()[int(r["offset"]) : int(r["offset"]) + n]
    return np.frombuffer(raw, np.uint8).reshape(int(r["height"]), int(r["width"]), 3)


def captions(manifest: pd.DataFrame) -> dict:
    """id -> caption, with a missing caption as None (pandas may hold it as NaN)."""
    return {i: (None if pd.isna(c) else c) for i, c in zip(manifest["id"], manifest["caption"])}


def noise(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def enc(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_bomb_header(w: int = 100_000, h: int = 100_000) -> bytes:
    """A real, tiny PNG whose IHDR claims w x h pixels (CRCs valid, IDAT a few bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def half_alpha(mode: str) -> Image.Image:
    """32x32: left half fully transparent, column 16 half transparent, rest opaque."""
    if mode == "RGBA":
        a = np.zeros((32, 32, 4), np.uint8)
        a[:, :16] = (0, 0, 255, 0)
        a[:, 16] = (200, 40, 40, 128)
        a[:, 17:] = (200, 40, 40, 255)
    else:  # LA
        a = np.zeros((32, 32, 2), np.uint8)
        a[:, :16] = (0, 0)
        a[:, 16] = (100, 128)
        a[:, 17:] = (100, 255)
    return Image.fromarray(a, mode)


def palette_image() -> Image.Image:
    p = Image.new("P", (32, 32), 0)
    p.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    for x in range(16, 32):
        for y in range(32):
            p.putpixel((x, y), 1)
    return p


def new_paths(before: set[Path], root: Path) -> set[Path]:
    return {p for p in root.rglob("*")} - before


# ----------------------------------------------------------------------- folder: the zoo
# name -> expected reason, or None for accepted. Originals sit in ok/ and the duplicate
# copy in zz/ (os.walk visits root files first, then sorted subfolders).
ZOO = {
    "empty.png": "empty",
    "trunc.jpg": "truncated",
    "trunc.png": "truncated",
    "text.jpg": "not_an_image",
    "bomb.png": "too_large",
    "bomb_header.png": "too_large",
    "tiny.png": "too_small",
    "wide.png": "bad_aspect",
    "README.md": "not_image_file",
    "orphan.txt": "orphan_caption",
    "zz/dup.png": "duplicate",
    "ok/a.png": None,
    "ok/b.jpg": None,
    "ok/c.png": None,
    "ok/d.png": None,
    "ok/nested/e.png": None,
    "modes/cmyk.jpg": None,
    "modes/rgba.png": None,
    "modes/la.png": None,
    "modes/p.png": None,
    "modes/p_transparent.png": None,
    "modes/i16.png": None,
    "modes/l.png": None,
    "linked": "folder_link",  # a symbolic link to a folder of images outside the input: not followed
    "captions.csv:5": "orphan_caption",  # a captions.csv row for a file that does not exist
    "captions.csv:6": "duplicate_caption",  # ok/b.jpg's second row: the first row's caption is used
    "ok/f.png": None,
    "ok/f.txt": "caption_not_utf8",  # its sidecar is Latin-1: the image is kept, the caption listed
    "ok/a.caption": "duplicate_caption",  # a second sidecar: ok/a.txt is the one used
}
CAPTIONS = {  # expected manifest caption by id (None: null)
    "ok/a.png": "a sidecar caption",
    "ok/b.jpg": "a csv caption",
    "ok/c.png": None,
    "ok/d.png": "sidecar wins",
    "ok/nested/e.png": "nested csv caption",
    "modes/l.png": None,
    "ok/f.png": None,
}
MODES = {
    "modes/cmyk.jpg": "CMYK",
    "modes/rgba.png": "RGBA",
    "modes/la.png": "LA",
    "modes/p.png": "P",
    "modes/p_transparent.png": "P",
    "modes/i16.png": "I;16",
    "modes/l.png": "L",
    "ok/a.png": "RGB",
    "ok/b.jpg": "RGB",
}


def build_zoo(root: Path) -> None:
    def put(rel: str, data: bytes | str) -> None:
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data.encode() if isinstance(data, str) else data)

    good = enc(noise(32, 32, 1), "PNG")
    put("ok/a.png", good)
    put("ok/a.txt", "  a sidecar caption \n")
    put("ok/a.caption", "the other sidecar")
    put("ok/b.jpg", enc(noise(40, 40, 2), "JPEG", quality=90))
    put("ok/c.png", enc(noise(32, 48, 3), "PNG"))
    put("ok/d.png", enc(noise(32, 32, 4), "PNG"))
    put("ok/d.txt", "sidecar wins")
    put("ok/nested/e.png", enc(noise(32, 32, 5), "PNG"))
    csv_rows = [("ok/b.jpg", "a csv caption"), ("ok/d.png", "csv loses"), ("ok/nested/e.png", "nested csv caption"),
                ("ok/missing.png", "a caption of nothing"), ("ok/b.jpg", "a second caption for b")]  # lines 2..6
    pd.DataFrame(csv_rows, columns=["file", "caption"]).to_csv(root / "captions.csv", index=False)
    put("zz/dup.png", good)
    put("ok/f.png", enc(noise(32, 32, 16), "PNG"))
    put("ok/f.txt", "un caf\u00e9 cr\u00e8me".encode("latin-1"))
    put("../elsewhere/g.png", enc(noise(32, 32, 17), "PNG"))  # outside the input folder ...
    os.symlink(root.parent / "elsewhere", root / "linked", target_is_directory=True)  # ... linked into it

    put("empty.png", b"")
    jpg = enc(noise(64, 64, 6), "JPEG", quality=90)
    put("trunc.jpg", jpg[: len(jpg) * 6 // 10])
    png = enc(noise(48, 48, 7), "PNG")
    put("trunc.png", png[: len(png) * 6 // 10])
    put("text.jpg", "this is a text file, not a JPEG\n" * 4)
    put("bomb.png", enc(noise(200, 200, 8), "PNG"))  # 0.04 MP > max_megapixels 0.01
    put("bomb_header.png", png_bomb_header())
    put("tiny.png", enc(noise(4, 4, 9), "PNG"))
    put("wide.png", enc(noise(96, 24, 10), "PNG"))  # aspect 4 > 2
    put("README.md", "# images\n")
    put("orphan.txt", "a caption with no image")

    put("modes/cmyk.jpg", enc(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95))
    put("modes/rgba.png", enc(half_alpha("RGBA"), "PNG"))
    put("modes/la.png", enc(half_alpha("LA"), "PNG"))
    put("modes/p.png", enc(palette_image(), "PNG"))
    put("modes/p_transparent.png", enc(palette_image(), "PNG", transparency=0))
    i16 = np.zeros((32, 32), np.uint16)
    i16[:, :16] = 65535
    i16[:, 16:] = 32896  # 128.5/255 of full scale -> 128
    put("modes/i16.png", enc(Image.fromarray(i16), "PNG"))
    lum = np.full((32, 32), 77, np.uint8)
    put("modes/l.png", enc(Image.fromarray(lum, "L"), "PNG"))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    build_zoo(root / "in")
    # sanity on the fixture itself: what PIL opens these as
    assert Image.open(root / "in/modes/i16.png").mode == "I;16"
    assert Image.open(root / "in/modes/cmyk.jpg").mode == "CMYK"
    assert "transparency" in Image.open(root / "in/modes/p_transparent.png").info
    params = make_params("folder", root / "in", max_megapixels=0.01, composite_background=list(BG))
    out = root / "out"
    summary, manifest, rejected, info = run(params, out)
    rejected = rejected.assign(rel=[Path(s).relative_to(root / "in").as_posix() for s in rejected["source"]])
    return root / "in", out, summary, manifest, rejected, info


def test_zoo_every_input_is_accounted_for_exactly_once(zoo):
    _, _, _, manifest, rejected, info = zoo
    seen = list(manifest["id"]) + list(rejected["rel"])
    assert sorted(seen) == sorted(ZOO)  # nothing dropped, nothing twice, nothing invented
    assert info["accepted"] + info["rejected"] == len(ZOO)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_input_lands_where_expected(zoo, name):
    _, _, _, manifest, rejected, _ = zoo
    want = ZOO[name]
    got = rejected.loc[rejected["rel"] == name, "reason"].tolist()
    if want is None:
        assert got == [] and name in set(manifest["id"]), f"{name} rejected: {got}"
    else:
        assert got == [want] and name not in set(manifest["id"])
        detail = rejected.loc[rejected["rel"] == name, "detail"].item()
        assert detail and "\n" not in detail and "Traceback" not in detail


def test_zoo_bomb_reports_size_and_duplicate_names_original(zoo):
    root, _, _, _, rejected, _ = zoo
    by = rejected.set_index("rel")["detail"]
    assert "200x200" in by["bomb.png"] and "100000x100000" in by["bomb_header.png"]
    assert str(root / "ok/a.png") in by["zz/dup.png"]


def test_zoo_folder_link_csv_rows_and_a_bad_sidecar_say_why(zoo):
    root, _, _, manifest, rejected, _ = zoo
    by = rejected.set_index("rel")["detail"]
    assert "symbolic link to a folder" in by["linked"] and "not followed" in by["linked"]
    assert str(root.parent / "elsewhere") in by["linked"]
    assert not manifest["source"].str.contains("elsewhere").any()  # its image was not read another way
    assert "'ok/missing.png'" in by["captions.csv:5"] and "not an image in the folder" in by["captions.csv:5"]
    assert "'ok/b.jpg' again" in by["captions.csv:6"] and "line 2 is used" in by["captions.csv:6"]
    assert "not UTF-8" in by["ok/f.txt"] and "the image is kept without a caption" in by["ok/f.txt"]
    assert "ok/f.png" in set(manifest["id"])
    assert "a.txt is this image's caption file" in by["ok/a.caption"]


def test_zoo_captions_from_sidecar_and_csv(zoo):
    _, _, _, manifest, _, _ = zoo
    got = manifest.set_index("id")["caption"]
    for key, want in CAPTIONS.items():
        if want is None:
            assert pd.isna(got[key]), key
        else:
            assert got[key] == want, key


def test_zoo_modes_converted_and_counted(zoo):
    _, out, _, manifest, _, info = zoo
    src = manifest.set_index("id")["src_mode"]
    for key, mode in MODES.items():
        assert src[key] == mode, key
    assert info["converted_by_mode"] == {"CMYK": 1, "I;16": 1, "L": 1, "LA": 1, "P": 2, "RGBA": 1}
    assert (manifest["width"] == 32).all() and (manifest["height"] == 32).all()
    assert manifest.set_index("id").loc["ok/c.png", ["src_width", "src_height"]].tolist() == [32, 48]
    # every stored image is S x S x 3 RGB bytes
    for key in MODES:
        assert rows_pixels(out, manifest, key).shape == (32, 32, 3)


def test_zoo_pixels_after_conversion(zoo):
    _, out, _, manifest, _, _ = zoo
    px = lambda key: rows_pixels(out, manifest, key).astype(int)  # noqa: E731

    rgba = px("modes/rgba.png")
    assert (rgba[:, :16] == BG).all()  # transparent -> composite_background, not the hidden blue
    assert (rgba[:, 17:] == (200, 40, 40)).all()
    half = np.round((np.array((200, 40, 40)) * 128 + np.array(BG) * 127) / 255)
    assert np.abs(rgba[:, 16] - half).max() <= 1

    la = px("modes/la.png")
    assert (la[:, :16] == BG).all() and (la[:, 17:] == 100).all()

    pt = px("modes/p_transparent.png")
    assert (pt[:, :16] == BG).all() and (pt[:, 16:] == (200, 100, 50)).all()
    p = px("modes/p.png")
    assert (p[:, :16] == (10, 20, 30)).all() and (p[:, 16:] == (200, 100, 50)).all()

    i16 = px("modes/i16.png")
    assert (i16[:, :16] == 255).all() and (i16[:, 16:] == 128).all()

    assert (px("modes/l.png") == 77).all()
    cmyk = px("modes/cmyk.jpg")  # C=0 M=255 Y=255 K=0 is red
    assert np.abs(cmyk - (255, 0, 0)).max() <= 8

    a = px("ok/a.png")  # RGB 32x32 at S=32: stored untouched
    assert (a == np.asarray(noise(32, 32, 1))).all()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncation_at_any_point_is_a_rejection_never_a_crash(fmt):
    raw = enc(noise(48, 48, 11), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    p = make_params("synthetic").prepare
    reasons = {}
    for cut in range(0, len(raw), 7):
        try:
            decode(raw[:cut], p, ".jpg" if fmt == "JPEG" else ".png")
            reasons[cut] = None
        except Reject as r:
            reasons[cut] = r.reason
            assert r.reason in {"empty", "not_an_image", "corrupt", "truncated"}, (cut, r.reason, r.detail)
    # once the header is complete, a cut is always reported as truncated
    body = [c for c in reasons if c > len(raw) // 4 and c < len(raw) - 16]
    assert body and all(reasons[c] == "truncated" for c in body), {c: reasons[c] for c in body if reasons[c] != "truncated"}


def test_png_header_bomb_rejected_under_default_cap_without_decoding(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "bomb.png").write_bytes(png_bomb_header())
    (src / "ok.png").write_bytes(enc(noise(32, 32, 12), "PNG"))
    params = make_params("folder", src)  # default max_megapixels (40)
    assert params.prepare.max_megapixels == 40
    t0 = time.perf_counter()
    _, manifest, rejected, _ = run(params, tmp_path / "out")
    assert time.perf_counter() - t0 < 5  # 10 gigapixels were never allocated
    assert rejected["reason"].tolist() == ["too_large"]
    assert manifest["id"].tolist() == ["ok.png"]


def test_a_file_name_that_is_not_utf8_is_rejected_not_a_traceback(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    bad = src / os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: Python holds them as surrogate escapes
    try:
        bad.write_bytes(enc(noise(32, 32, 18), "PNG"))
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    (src / "ok.png").write_bytes(enc(noise(32, 32, 19), "PNG"))
    _, manifest, rejected, _ = run(make_params("folder", src), tmp_path / "out")
    assert manifest["id"].tolist() == ["ok.png"]
    assert rejected["reason"].tolist() == ["bad_name"]
    assert rejected["source"].item() == f"{src}/caf\\xe9.png"  # the raw byte, written as \xe9
    assert "not valid UTF-8" in rejected["detail"].item() and "rename" in rejected["detail"].item()


@pytest.mark.parametrize("source", ["folder", "synthetic"])
def test_prepare_twice_with_the_same_params_gives_the_same_bytes(tmp_path, source):
    """data/prepared is a DVC out: the same inputs and params must give the same files, byte for
    byte (timings belong in metrics/prepare.json only)."""
    if source == "folder":
        build_zoo(tmp_path / "in")
        params = make_params("folder", tmp_path / "in", max_megapixels=0.01, composite_background=list(BG), shard_size=8)
    else:
        params = make_params("synthetic", num_images=60, shard_size=16)
    first, second = prepare(params, tmp_path / "a", progress=False), prepare(params, tmp_path / "b", progress=False)
    assert first.accepted == second.accepted > 0
    files = lambda root: sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())  # noqa: E731
    assert files(tmp_path / "a") == files(tmp_path / "b") and "summary.json" in files(tmp_path / "a")
    for name in files(tmp_path / "a"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert "seconds" not in json.loads((tmp_path / "a" / "summary.json").read_text())
    assert first.metrics()["seconds"] >= 0  # the timing is still measured, for the stage's metrics


def test_the_prepare_stage_logs_a_16_bit_image_to_mlflow(tmp_path, monkeypatch):
    """The converted modes are metric names ("converted_by_mode.I;16"); MLflow refuses ";", which
    failed the stage after data/prepared was written. The stage as DVC runs it, on an I;16 image."""
    import importlib.util

    import mlflow
    import yaml

    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "in"
    src.mkdir()
    i16 = np.full((32, 32), 40000, np.uint16)
    (src / "i16.png").write_bytes(enc(Image.fromarray(i16), "PNG"))
    (src / "rgb.png").write_bytes(enc(noise(32, 32, 60), "PNG"))
    shipped = {part: str(root / "pretrained/shapes-world" / part) for part in ("t2i", "vision", "llm", "classifier")}
    params = {"prepare": {"source": "folder", "path": str(src), "min_side": 8, "web_images": 0,
                          "splits": {"images": 1.0, "pairs": 0.0, "val": 0.0, "test": 0.0}},
              "components": shipped, "tracking": {"system_metrics": False}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    spec = importlib.util.spec_from_file_location("prepare_stage", root / "pipelines/prepare.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    try:
        stage.main(["--params", "params.yaml"])
        runs = mlflow.search_runs(experiment_names=["vlv"])
    finally:
        mlflow.set_tracking_uri(None)
    assert len(runs) == 1 and runs["status"].item() == "FINISHED"
    assert runs["metrics.prepare/converted_by_mode.I_16"].item() == 1 and runs["metrics.prepare/accepted"].item() == 2
    assert runs["metrics.prepare/seconds"].item() >= 0  # the timing: in the metrics, not in data/prepared
    metrics = json.loads((tmp_path / "metrics/prepare.json").read_text())
    assert metrics["converted_by_mode"] == {"I;16": 1} and "seconds" in metrics
    assert pd.read_parquet(tmp_path / "data/prepared/manifest.parquet").set_index("id").loc["i16.png", "src_mode"] == "I;16"


# --------------------------------------------------------------------- unreadable files
def _ingest_reasons(params, out: Path, root: Path) -> dict[str, str]:
    _, manifest, rejected, _ = run(params, out)
    got = {Path(s).relative_to(root).as_posix(): r for s, r in zip(rejected["source"], rejected["reason"])}
    got.update({i: "accepted" for i in manifest["id"]})
    return got


def test_unreadable_file_and_folder(tmp_path):
    root = Path(tempfile.mkdtemp(prefix="vlv-unreadable-")) if os.geteuid() == 0 else tmp_path
    try:
        src = root / "in"
        (src / "locked_dir").mkdir(parents=True)
        (src / "ok.png").write_bytes(enc(noise(32, 32, 13), "PNG"))
        (src / "locked.png").write_bytes(enc(noise(32, 32, 14), "PNG"))
        (src / "locked_dir" / "hidden.png").write_bytes(enc(noise(32, 32, 15), "PNG"))
        os.chmod(src / "locked.png", 0o000)
        os.chmod(src / "locked_dir", 0o000)
        params = make_params("folder", src)
        if os.geteuid() != 0:
            if os.access(src / "locked.png", os.R_OK):
                pytest.skip("chmod 000 does not stop reads here")
            got = _ingest_reasons(params, tmp_path / "out", src)
        else:
            # root reads anything: ingest in a forked child that drops to nobody
            os.chmod(root, 0o755)
            os.chmod(src, 0o755)
            outdir = root / "outdir"
            outdir.mkdir()
            os.chmod(outdir, 0o777)
            got = _in_child_as_nobody(lambda: _ingest_reasons(params, outdir / "out", src))
        assert got == {"ok.png": "accepted", "locked.png": "unreadable", "locked_dir": "unreadable"}
    finally:
        for p in (src / "locked.png", src / "locked_dir"):
            if p.exists():
                os.chmod(p, 0o755)
        if root != tmp_path:
            shutil.rmtree(root, ignore_errors=True)


def _in_child_as_nobody(fn, timeout: float = 60.0):
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(rfd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            assert not os.access("/root", os.W_OK)
            msg = {"ok": fn()}
        except BaseException as err:  # report, do not raise, in the child
            msg = {"error": f"{type(err).__name__}: {err}"}
        with os.fdopen(wfd, "w") as fh:
            fh.write(json.dumps(msg))
        os._exit(0)
    os.close(wfd)
    chunks = []
    deadline = time.monotonic() + timeout
    with os.fdopen(rfd, "r") as fh:
        while True:
            ready, _, _ = select.select([fh], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail("ingest in the unprivileged child timed out")
            data = fh.read()
            if not data:
                break
            chunks.append(data)
    os.waitpid(pid, 0)
    msg = json.loads("".join(chunks))
    assert "error" not in msg, msg.get("error")
    return msg["ok"]


# ----------------------------------------------------------------------------- parquet
def test_parquet_unsafe_names_never_touch_disk(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rows = [
        ("good/a.png", enc(noise(32, 32, 20), "PNG"), "caption a"),
        ("b.jpg", enc(noise(32, 32, 21), "JPEG"), None),
        ("/etc/passwd", enc(noise(32, 32, 22), "PNG"), "absolute"),
        ("../../evil.png", enc(noise(32, 32, 23), "PNG"), "climber"),
        ("nested/../../../evil2.png", enc(noise(32, 32, 24), "PNG"), "climber 2"),
        ("empty.png", b"", "nothing"),
        ("junk.png", b"not an image at all", "junk"),
    ]
    pd.DataFrame(rows, columns=["key", "image", "caption"]).to_parquet(src / "part.parquet", index=False)
    out = tmp_path / "out"
    before = set(tmp_path.rglob("*"))
    _, manifest, rejected, _ = run(make_params("parquet", src / "part.parquet"), out)
    created = new_paths(before, tmp_path)
    assert created and all(p == out or out in p.parents for p in created), sorted(map(str, created))
    assert sorted(p.name for p in out.iterdir()) == ["manifest.parquet", "rejected.csv", "shards", "summary.json"]
    assert not Path("/etc/passwd").read_bytes().startswith(b"\x89PNG")

    assert captions(manifest) == {"part/good/a.png": "caption a", "part/b.jpg": None}
    reasons = dict(zip(rejected["source"].str.rsplit("#", n=1).str[1].astype(int), rejected["reason"]))
    assert reasons == {2: "unsafe_name", 3: "unsafe_name", 4: "unsafe_name", 5: "empty", 6: "not_an_image"}
    assert len(manifest) + len(rejected) == len(rows)


def test_parquet_hugging_face_image_dicts(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    imgs = [{"bytes": enc(noise(32, 32, 30 + i), "PNG"), "path": f"img{i}.png"} for i in range(3)]
    imgs.append({"bytes": None, "path": "missing.png"})
    df = pd.DataFrame({"key": ["k0", "k1", "k2", "k3"], "image": imgs, "caption": ["c0", "c1", None, "c3"]})
    df.to_parquet(src / "hf.parquet", index=False)
    _, manifest, rejected, _ = run(make_params("parquet", src), tmp_path / "out")  # a folder of parquet files
    assert captions(manifest) == {"hf/k0": "c0", "hf/k1": "c1", "hf/k2": None}
    assert rejected["reason"].tolist() == ["empty"]
    px = rows_pixels(tmp_path / "out", manifest, "hf/k1")
    assert (px == np.asarray(noise(32, 32, 31))).all()


def test_parquet_non_bytes_image_column_is_rejected_not_a_crash(tmp_path):
    # e.g. prepare.image_column pointed at LAION's URL column: strings, not image bytes
    f = tmp_path / "urls.parquet"
    pd.DataFrame({"key": ["a", "b"], "url": ["http://x/a.jpg", "http://x/b.jpg"], "caption": ["a", "b"]}).to_parquet(f)
    with pytest.raises(VLVError, match="not_an_image 2"):
        prepare(make_params("parquet", f, image_column="url"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_parquet_caption_column_of_ints_is_said_once_and_images_kept(tmp_path):
    f = tmp_path / "ints.parquet"
    pd.DataFrame({"key": ["a", "b", "c"], "image": [enc(noise(32, 32, 61 + i), "PNG") for i in range(3)],
                  "caption": [1, 2, 3]}).to_parquet(f, index=False)
    _, manifest, rejected, info = run(make_params("parquet", f), tmp_path / "out")
    assert captions(manifest) == {"ints/a": None, "ints/b": None, "ints/c": None}  # every image kept
    assert rejected["reason"].tolist() == ["caption_not_text"] and rejected["source"].item() == f"{f}[caption]"
    detail = rejected["detail"].item()
    assert "int64" in detail and "3 images" in detail and "prepare.caption_column" in detail
    assert info["captioned"] == 0


def test_parquet_rows_with_the_same_key_keep_the_first_and_reject_the_repeat(tmp_path):
    f = tmp_path / "part.parquet"
    pd.DataFrame({"key": ["a", "b", "a"], "image": [enc(noise(32, 32, 64 + i), "PNG") for i in range(3)],
                  "caption": ["first a", "b", "second a"]}).to_parquet(f, index=False)
    _, manifest, rejected, _ = run(make_params("parquet", f), tmp_path / "out")  # run() checks ids are unique
    assert captions(manifest) == {"part/a": "first a", "part/b": "b"}
    assert rejected["reason"].tolist() == ["duplicate_id"] and rejected["source"].item() == f"{f}#2"
    assert f"{f}#0" in rejected["detail"].item() and "'part/a'" in rejected["detail"].item()
    assert len(manifest) + len(rejected) == 3


# -------------------------------------------------------------------------- webdataset
def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tar.addfile(ti, io.BytesIO(data))


def test_webdataset_pairs_unsafe_members_and_links(tmp_path):
    shard = tmp_path / "in" / "shard-000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        _add(tar, "s000.jpg", enc(noise(32, 32, 40), "JPEG"))
        _add(tar, "s000.txt", b"first caption\n")
        _add(tar, "s001.png", enc(noise(32, 32, 41), "PNG"))
        _add(tar, "s001.txt", b"second caption")
        _add(tar, "s002.png", enc(noise(32, 32, 42), "PNG"))  # no caption
        _add(tar, "/abs/s003.png", enc(noise(32, 32, 43), "PNG"))
        _add(tar, "../s004.png", enc(noise(32, 32, 44), "PNG"))
        _add(tar, "sub/../../s005.png", enc(noise(32, 32, 45), "PNG"))
        link = tarfile.TarInfo("s006.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        hard = tarfile.TarInfo("s007.png")
        hard.type, hard.linkname = tarfile.LNKTYPE, "s000.jpg"
        tar.addfile(hard)
        _add(tar, "s008.png", enc(noise(32, 32, 48), "PNG"))
        _add(tar, "s008.txt", b"last caption")
    with tarfile.open(shard) as tar:  # the fixture really holds the hostile names
        assert {"/abs/s003.png", "../s004.png"} <= set(tar.getnames())
    out = tmp_path / "out"
    before = set(tmp_path.rglob("*"))
    _, manifest, rejected, _ = run(make_params("webdataset", shard.parent), out)
    assert all(p == out or out in p.parents for p in new_paths(before, tmp_path))
    assert not (tmp_path / "s004.png").exists() and not Path("/abs").exists()

    assert captions(manifest) == {
        "shard-000/s000": "first caption",
        "shard-000/s001": "second caption",
        "shard-000/s002": None,
        "shard-000/s008": "last caption",
    }
    member = rejected["source"].str.split(".tar:", n=1).str[1]
    assert dict(zip(member, rejected["reason"])) == {
        "/abs/s003.png": "unsafe_name",
        "../s004.png": "unsafe_name",
        "sub/../../s005.png": "unsafe_name",
        "s006.png": "not_regular_member",
        "s007.png": "not_regular_member",
    }


def test_webdataset_repeated_member_names_keep_the_first_and_list_the_rest(tmp_path):
    shard = tmp_path / "in" / "dup.tar"
    shard.parent.mkdir()
    first, again, other = (enc(noise(32, 32, 70 + i), "PNG") for i in range(3))
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        _add(tar, "s000.png", first)
        _add(tar, "s000.txt", b"caption 0")
        _add(tar, "s000.png", again)  # the same name again (e.g. a tar appended to)
        _add(tar, "s001.png", enc(noise(32, 32, 73), "PNG"))
        _add(tar, "s000.jpg", other)  # sample s000 once more, later: its id is taken
    _, manifest, rejected, _ = run(make_params("webdataset", shard), tmp_path / "out")
    assert captions(manifest) == {"dup/s000": "caption 0", "dup/s001": None}
    px = rows_pixels(tmp_path / "out", manifest, "dup/s000")
    assert (px == np.asarray(Image.open(io.BytesIO(first)))).all(), "the first member is the one kept"
    member = rejected["source"].str.split(".tar:", n=1).str[1]
    assert dict(zip(member, rejected["reason"])) == {"s000.png": "duplicate_name", "s000.jpg": "duplicate_id"}
    assert len(manifest) + len(rejected) == 4  # every image member is accounted for


def _tar_of_pairs(path: Path, n: int) -> list[tarfile.TarInfo]:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(n):
            _add(tar, f"s{i:03d}.png", enc(noise(24 + i, 24 + i, 50 + i), "PNG"))
            _add(tar, f"s{i:03d}.txt", f"caption {i}".encode())
    with tarfile.open(path) as tar:
        return tar.getmembers()


@pytest.mark.parametrize("where", ["mid_data", "in_padding", "at_header", "mid_header", "before_end_block"])
def test_webdataset_truncated_tar(tmp_path, where):
    full = tmp_path / "full.tar"
    members = _tar_of_pairs(full, 5)
    raw = full.read_bytes()
    img3 = members[6]  # s003.png: samples s000..s002 precede it
    assert img3.name == "s003.png" and img3.size % 512 not in (0, 511)
    last = members[-1]
    cut = {
        "mid_data": img3.offset_data + img3.size // 2,
        "in_padding": img3.offset_data + img3.size + 1,
        "at_header": img3.offset,
        "mid_header": img3.offset + 100,
        "before_end_block": last.offset_data + -(-last.size // 512) * 512,  # every member intact
    }[where]
    shard = tmp_path / "in" / "cut.tar"
    shard.parent.mkdir()
    shard.write_bytes(raw[:cut])
    _, manifest, rejected, _ = run(make_params("webdataset", shard.parent), tmp_path / "out")
    kept = 5 if where == "before_end_block" else 3
    want = {f"cut/s{i:03d}": f"caption {i}" for i in range(kept)}
    if where == "in_padding":  # s003.png itself is whole; only its caption member is lost
        want["cut/s003"] = None
    assert captions(manifest) == want
    assert rejected["reason"].tolist() == ["tar_truncated"]
    assert "\n" not in rejected["detail"].item()


def test_webdataset_cut_in_trailing_padding_is_complete(tmp_path):
    full = tmp_path / "in" / "full.tar"
    full.parent.mkdir()
    _tar_of_pairs(full, 2)
    full.write_bytes(full.read_bytes()[:-100])  # only record padding lost: end block intact
    _, manifest, rejected, _ = run(make_params("webdataset", full), tmp_path / "out")
    assert len(manifest) == 2 and rejected.empty


# ------------------------------------------------------------------------------ splits
def _split_folder(root: Path, n: int = 40) -> None:
    root.mkdir()
    for i in range(n):
        (root / f"i{i:03d}.png").write_bytes(enc(noise(8, 8, 100 + i), "PNG"))
        if i % 2 == 0:
            (root / f"i{i:03d}.txt").write_text(f"caption {i}")


SPLITS = {"images": 0.5, "pairs": 0.3, "val": 0.1, "test": 0.1}


@pytest.fixture(scope="module")
def split_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("splits")
    _split_folder(root / "in")
    runs = {}
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        params = make_params("folder", root / "in", seed=seed, image_size=8, splits=SPLITS)
        runs[name] = run(params, root / name)
    return runs


def test_splits_deterministic_by_seed(split_runs):
    a, b, c = (split_runs[k][1] for k in "abc")
    pd.testing.assert_frame_equal(a, b)
    assert (a["id"] == c["id"]).all() and (a["sha256"] == c["sha256"]).all()
    assert (a["split"] != c["split"]).any()


@pytest.mark.parametrize("name", ["a", "c"])
def test_splits_shares_disjoint_and_pairs_captioned(split_runs, name):
    _, manifest, rejected, info = split_runs[name]
    n = len(manifest)
    assert n == 40 and rejected.empty
    counts = manifest["split"].value_counts().to_dict()
    assert counts.get("val", 0) == round(SPLITS["val"] * n) == 4
    assert counts.get("test", 0) == round(SPLITS["test"] * n) == 4
    assert counts.get("pairs", 0) == round(SPLITS["pairs"] * n) == 12
    assert sum(counts.values()) == n and set(counts) <= set(SPLIT_NAMES)  # one split per row
    assert manifest.loc[manifest["split"] == "pairs", "caption"].notna().all()
    assert info["splits"] == {s: counts.get(s, 0) for s in SPLIT_NAMES}
    assert info["captioned"] == 20


def test_pairs_limited_to_captioned_rows(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(20):
        (src / f"i{i:03d}.png").write_bytes(enc(noise(8, 8, 200 + i), "PNG"))
    (src / "i000.txt").write_text("only caption")
    splits = {"images": 0.0, "pairs": 0.8, "val": 0.1, "test": 0.1}
    _, manifest, _, _ = run(make_params("folder", src, image_size=8, splits=splits), tmp_path / "out")
    pairs = manifest[manifest["split"] == "pairs"]
    assert len(pairs) <= 1 and pairs["caption"].notna().all()


# ------------------------------------------------------------------------ ShardDataset
@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "out"
    params = make_params("synthetic", num_images=200, image_size=32, shard_size=64)
    return params, out, *run(params, out)


def test_shard_dataset_returns_source_pixels_in_unit_range(synthetic_run):
    params, out, summary, manifest, _, _ = synthetic_run
    assert len(manifest) == 200 and manifest["shard"].nunique() == 4
    ds = ShardDataset(out, "images")
    assert len(ds) == summary.splits["images"] > 0
    for i in range(len(ds)):
        item = ds[i]
        x = item["pixel_values"]
        assert x.dtype.is_floating_point and tuple(x.shape) == (3, 32, 32)
        assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
        assert "caption" not in item
        index = int(item["id"].removeprefix("syn-"))
        want = world.scene_at(params.seed, index, 32).render()
        back = ((x.permute(1, 2, 0).numpy() + 1.0) * 127.5).round().astype(np.uint8)
        assert (back == want).all(), item["id"]


def test_shard_dataset_captions_only_when_asked(synthetic_run):
    params, out, _, manifest, _, _ = synthetic_run
    for split in SPLIT_NAMES:
        ds = ShardDataset(out, split)
        assert all("caption" not in ds[i] for i in range(len(ds)))
    ds = ShardDataset(out, "pairs", captions=True)
    assert len(ds) == 20
    for i in range(len(ds)):
        item = ds[i]
        index = int(item["id"].removeprefix("syn-"))
        assert item["caption"] == world.scene_at(params.seed, index, 32).caption()


# ------------------------------------------------------------------------------ web split
def test_web_split_is_its_own_scene_stream_and_leaves_the_main_splits_alone(synthetic_run, tmp_path):
    params, _, _, manifest, _, _ = synthetic_run  # the same params with web_images 0
    out = tmp_path / "out"
    summary, with_web, _, info = run(make_params("synthetic", num_images=200, image_size=32, shard_size=64, web_images=50), out)
    main = with_web[with_web["split"] != "web"].reset_index(drop=True)
    pd.testing.assert_frame_equal(main, manifest)  # same rows, splits, shards and offsets
    web = with_web[with_web["split"] == "web"]
    assert len(web) == info["splits"]["web"] == summary.splits["web"] == 50 and info["accepted"] == 250
    assert web["id"].str.startswith("web-").all() and web["caption"].notna().all()
    assert not set(web["sha256"]) & set(main["sha256"]), "disjoint by content"
    ds = ShardDataset(out, "web", captions=True)
    assert len(ds) == 50 and ds.split == "web"
    for i in range(0, 50, 7):
        item = ds[i]
        scene = world.web_scene_at(params.seed, int(item["id"].removeprefix("web-")), 32)
        back = ((item["pixel_values"].permute(1, 2, 0).numpy() + 1.0) * 127.5).round().astype(np.uint8)
        assert (back == scene.render()).all() and item["caption"] == scene.caption()
        boxed = ShardDataset(out, "web", boxes=True)[i]  # the vision pretext's view: boxes, no caption
        assert "caption" not in boxed and np.allclose(json.loads(boxed["boxes"]), scene.boxes(), atol=1e-3)
    assert data.reads(ds) == {"split": "web", "images": 50, "captions": 50, "boxes": 0}
    assert data.reads(ShardDataset(out, "web", boxes=True)) == {"split": "web", "images": 50, "captions": 0, "boxes": 50}
    assert data.reads(ShardDataset(out, "images"), images=False) == {"split": "images", "images": 0, "captions": 0, "boxes": 0}


def test_a_web_scene_equal_to_a_main_one_is_a_rejected_duplicate(tmp_path):
    # at 8 px scenes repeat often, so some web scenes draw a picture that a main split holds
    _, manifest, rejected, _ = run(make_params("synthetic", num_images=200, image_size=8, web_images=100), tmp_path / "out")
    across = rejected[rejected["source"].str.contains(" web ") & rejected["detail"].str.contains(r"as shapes-world seed=0 index=")]
    assert len(across) > 0 and (across["reason"] == "duplicate").all()
    assert (manifest["split"] == "web").sum() == 100 and manifest["sha256"].is_unique
