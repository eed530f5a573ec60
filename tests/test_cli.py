"""The `vlv` command as a CLI user meets it: --version, bare `vlv`, every subcommand's help
(description, defaults, choices), and the image paths `vlv caption` / `vlv reconstruct` take
(files, folders, globs; duplicates read once; a path matching nothing is one line). Captioning
with a real model: tests/test_captioner.py."""

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vlv
from vlv import cli, data, throughput
from vlv.errors import VLVError

ROOT = Path(__file__).resolve().parents[1]
ENV = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    return cli.build_parser()._subparsers._group_actions[0].choices


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"vlv {vlv.__version__}\n"
    assert vlv.__version__ == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_bare_vlv_prints_the_help_with_exit_2(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([])
    assert done.value.code == 2  # argparse's status for a missing command; `vlv -h` is exit 0
    err = capsys.readouterr().err
    assert err.startswith("usage: vlv") and "error" not in err
    assert all(name in err for name in subcommands())


@pytest.mark.parametrize("name", list(subcommands()))
def test_every_subcommand_describes_itself_and_shows_its_defaults(name):
    parser = subcommands()[name]
    assert parser.description and len(parser.description) > 30
    text = " ".join(parser.format_help().split())  # unwrapped
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, f"vlv {name} {action.option_strings or action.dest}: no help"
        if action.default not in (None, False, argparse.SUPPRESS):
            shown = " ".join(action.default) if isinstance(action.default, list) else action.default
            assert f"(default: {shown})" in text or "(default: " in action.help, (name, action.dest)
        if action.choices:
            assert "{" + ",".join(action.choices) + "}" in text


def test_bench_arch_choices_are_what_it_accepts():
    actions = {a.dest: a for a in subcommands()["bench-arch"]._actions}
    assert set(actions["card"].choices) == set(throughput.CARD_SETS)


def png(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 30, 3), value, np.uint8)).save(path)
    return path


def names(paths) -> list[str]:
    return [name for name, _ in data.find_images([str(p) for p in paths])]


def test_find_images_takes_files_folders_and_globs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for f in ["demo/a.png", "demo/b.png", "demo/sub/c.jpg", "more/a.png"]:
        png(tmp_path / f)
    assert names(["demo"]) == ["a.png", "b.png", "sub/c.jpg"]  # a folder: names inside it, as before
    assert names(["demo/a.png"]) == ["a.png"]  # one file
    assert names(["demo/*.png"]) == ["a.png", "b.png"]  # a quoted glob, expanded by vlv
    assert names(["demo/**/*g"]) == ["a.png", "b.png", "sub/c.jpg"]  # ** reaches into sub-folders
    assert names(["demo", "more"]) == ["demo/a.png", "demo/b.png", "demo/sub/c.jpg", "more/a.png"]  # never one name twice
    assert names(["demo/a.png", "demo", "./demo/*.png", tmp_path / "demo/a.png"]) == ["a.png", "b.png", "sub/c.jpg"]  # each once


def test_a_path_matching_nothing_is_named_in_one_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    png(tmp_path / "demo/a.png")
    with pytest.raises(VLVError, match=r"^nope\.png, demo/\*\.jpg: no such file or folder"):
        data.find_images(["demo", "nope.png", "demo/*.jpg"])


def test_load_images_lists_what_it_skips_and_keeps_the_rest(tmp_path, capsys):
    png(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("hello")
    images = data.load_images(data.find_images([tmp_path]), 16)
    assert [n for n, _ in images] == ["a.png"] and tuple(images[0][1].shape) == (3, 16, 16)
    err = capsys.readouterr().err
    assert "skipped " + str(tmp_path / "broken.png") in err and "skipped " + str(tmp_path / "notes.txt") in err
    with pytest.raises(VLVError, match="no readable images"):
        data.load_images(data.find_images([tmp_path / "broken.png"]), 16)


@pytest.mark.parametrize("command", ["caption", "reconstruct"])
def test_a_glob_matching_nothing_is_one_line_exit_2_before_any_model_loads(command, tmp_path):
    r = subprocess.run([sys.executable, "-m", "vlv.cli", command, str(tmp_path / "*.png"), "--out", str(tmp_path / "out"),
                        "--model", str(tmp_path / "no-model")], capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"error: {tmp_path / '*.png'}: no such file or folder")
