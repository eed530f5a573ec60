"""Bad input and faults (issue 23, part A, and `vlv caption` / `vlv reconstruct`): one line saying
what, where and what to do, the exit status, and nothing lost; never a traceback, never a stage
blocked for good."""

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from vlv import cli, config, entry, tracking
from vlv.captioner import Captioner
from vlv.errors import VLVError
from vlv.train import latest_checkpoint, train

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import loop_toy  # noqa: E402
from test_captioner import SCENES, make_captioner  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{HERE}", "OMP_NUM_THREADS": "1"}


def trained(ckpt: Path) -> tuple[list[float], dict]:
    """loop_toy's 20 steps with a checkpoint every 5 (step-15 and step-20 kept): losses, weights."""
    model = loop_toy.Regressor()
    res = train(model, loop_toy.Points(), loop_toy.spec(), ckpt, "toy-v1", progress=False)
    assert [d.name for d in sorted(ckpt.glob("step-*"))] == ["step-00000015", "step-00000020"]
    return res.losses, {k: v.clone() for k, v in model.state_dict().items()}


def truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


class Planted:
    """A pickle that would create ``marker`` if it were ever unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def stage(tmp_path: Path, mode: str, ckpt: Path | None = None) -> subprocess.CompletedProcess:
    """tests/fault_stage.py under vlv.entry.stage("toy") from the repo root (params name folders
    relative to it), with the system temp dir in tmp_path."""
    env = {**ENV, "VLV_TOY_MODE": mode, "VLV_TOY_CKPT": str(ckpt or tmp_path / "ck"), "TMPDIR": str(tmp_path)}
    return subprocess.run([sys.executable, str(HERE / "fault_stage.py"), "--params", str(ROOT / "params.yaml")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text[-3000:]
    return lines[0]


# ------------------------------------------------------------------ 1. unreadable checkpoints
@pytest.mark.parametrize("damaged", ["weights.safetensors", "meta.json", "optimizer.pt"])
def test_a_truncated_newest_checkpoint_falls_back_to_the_one_before_and_loses_nothing(tmp_path, capsys, damaged):
    ckpt = tmp_path / "ck"
    losses, weights = trained(ckpt)
    truncate(ckpt / "step-00000020" / damaged)
    capsys.readouterr()
    model = loop_toy.Regressor()
    res = train(model, loop_toy.Points(), loop_toy.spec(), ckpt, "toy-v1", progress=False)
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert warnings == [line for line in warnings if "\n" not in line] and len(warnings) == 1, out
    assert f"checkpoint {ckpt / 'step-00000020'} cannot be read ({damaged}" in warnings[0], warnings[0]
    assert f"resuming from {ckpt / 'step-00000015'}" in out
    # nothing lost: steps 16-20 run again to the very same losses and weights
    assert res.resumed_from == 15 and res.losses == losses
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    # the damaged folder was rewritten by the re-run: the next run resumes from it, without a warning
    again = train(loop_toy.Regressor(), loop_toy.Points(), loop_toy.spec(), ckpt, "toy-v1", progress=False)
    assert again.resumed_from == 20 and "warning" not in capsys.readouterr().out


def test_no_readable_checkpoint_stops_with_one_line_naming_the_folders_to_delete(tmp_path):
    ckpt = tmp_path / "ck"
    trained(ckpt)
    truncate(ckpt / "step-00000020" / "meta.json")
    truncate(ckpt / "step-00000015" / "weights.safetensors")
    with pytest.raises(VLVError) as info:
        train(loop_toy.Regressor(), loop_toy.Points(), loop_toy.spec(), ckpt, "toy-v1", progress=False)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"toy: no checkpoint in {ckpt} can be read (step-00000020: meta.json"), msg
    assert msg.endswith(f"delete {ckpt / 'step-00000020'}, {ckpt / 'step-00000015'} to start fresh"), msg
    assert (ckpt / "step-00000020").is_dir() and (ckpt / "step-00000015").is_dir()  # nothing deleted behind the user's back


def test_a_planted_pickle_is_never_run_and_is_one_line(tmp_path, capsys):
    ckpt = tmp_path / "ck"
    losses, _ = trained(ckpt)
    marker = tmp_path / "pwned"
    (ckpt / "step-00000020" / "optimizer.pt").write_bytes(pickle.dumps(Planted(marker)))
    res = train(loop_toy.Regressor(), loop_toy.Points(), loop_toy.spec(), ckpt, "toy-v1", progress=False)
    assert res.resumed_from == 15 and res.losses == losses and not marker.exists()
    assert "optimizer.pt holds more than tensors and torch.load(weights_only=True) refused it" in capsys.readouterr().out

    # both kept checkpoints planted: the stage stops with one line (the stage named once), exit 2
    for step in ("step-00000015", "step-00000020"):
        (ckpt / step / "optimizer.pt").write_bytes(pickle.dumps(Planted(marker)))
    r = stage(tmp_path, "train", ckpt)
    assert r.returncode == 2, r.stderr[-3000:]
    line = one_line(r.stderr)
    assert line.startswith(f"error: toy: no checkpoint in {ckpt} can be read (step-00000020: optimizer.pt holds more than "
                           f"tensors"), line
    assert "toy: toy:" not in line and line.endswith("to start fresh")
    assert not marker.exists() and (ckpt / "step-00000015").is_dir() and (ckpt / "step-00000020").is_dir()


def test_a_checkpoint_with_non_finite_weights_is_passed_over(tmp_path, capsys):
    """One written before the weights were checked on save (see the next test)."""
    ckpt = tmp_path / "ck"
    losses, _ = trained(ckpt)
    file = ckpt / "step-00000020" / "weights.safetensors"
    save_file({k: v * float("nan") for k, v in load_file(str(file)).items()}, str(file))
    res = train(loop_toy.Regressor(), loop_toy.Points(), loop_toy.spec(), ckpt, "toy-v1", progress=False)
    assert res.resumed_from == 15 and res.losses == losses
    assert "weights.safetensors holds non-finite values" in capsys.readouterr().out


# ------------------------------------------------------------------ 2. NaN guard: last good is good
class BlowsUp(loop_toy.Regressor):
    """A finite loss whose gradient is infinite from micro-batch ``at`` on: the update blows up."""

    def __init__(self, at: int):
        super().__init__()
        self.net[3].weight.register_hook(lambda g: g * float("inf") if self.calls >= at else g)


def test_weights_blown_up_by_an_update_are_never_checkpointed(tmp_path):
    ckpt = tmp_path / "ck"
    spec = loop_toy.spec(checkpoint_every=3)
    with pytest.raises(VLVError) as info:  # 2 micro-batches a step: step 6's update blows up, and step 6 checkpoints
        train(BlowsUp(at=2 * 5 + 1), loop_toy.Points(), spec, ckpt, "toy-v1", progress=False)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("toy: the weights are not finite after step 6"), msg
    assert f"Last good checkpoint: {ckpt / 'step-00000003'}" in msg and "Lower toy lr" in msg
    assert latest_checkpoint(ckpt, "toy-v1").name == "step-00000003" and not (ckpt / "step-00000006").exists()
    assert all(torch.isfinite(w).all() for w in load_file(str(ckpt / "step-00000003" / "weights.safetensors")).values())
    # the re-run resumes from the last good one
    res = train(loop_toy.Regressor(), loop_toy.Points(), spec, ckpt, "toy-v1", progress=False)
    assert res.resumed_from == 3 and all(torch.isfinite(torch.tensor(res.losses)))


# ------------------------------------------------------------------ 3. the stage named once
def test_the_stage_is_named_once():
    assert entry._message("stage1", VLVError("stage1: loss is nan at step 8")) == "stage1: loss is nan at step 8"
    assert entry._message("stage1", VLVError("stage1.steps: too many")) == "stage1: stage1.steps: too many"
    assert entry._message("pretrain", VLVError("pretrain.vae: loss is nan")) == "pretrain: pretrain.vae: loss is nan"


# ------------------------------------------------------------------ 4. anything unexpected
def test_an_unexpected_exception_in_a_stage_is_one_line_and_a_log(tmp_path):
    r = stage(tmp_path, "bug")
    assert r.returncode == 1
    line = one_line(r.stderr)
    m = re.fullmatch(r"error: toy: unexpected KeyError: 'no such key'; the traceback is in (\S+\.log); "
                     r"please report it with that file", line)
    assert m, line
    log = Path(m.group(1))
    assert log.parent == tmp_path and log.name.startswith("vlv-toy-")
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "fault_stage.py" in text and "KeyError: 'no such key'" in text


def test_ctrl_c_in_a_stage_stays_as_it_was(tmp_path):
    r = stage(tmp_path, "interrupt")
    assert r.returncode == 130 and one_line(r.stderr) == "toy: interrupted"


def test_an_unexpected_exception_in_a_vlv_command_is_one_line_and_a_log(tmp_path, monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("something nobody foresaw\non two lines")

    monkeypatch.setattr(cli, "cmd_params", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(SystemExit) as info:
        cli.main(["params"])
    assert info.value.code == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("error: vlv params: unexpected RuntimeError: something nobody foresaw on two lines; "
                           "the traceback is in "), line
    (log,) = tmp_path.glob("vlv-params-*.log")
    assert str(log) in line and "Traceback" in log.read_text() and "broken" in log.read_text()


# ------------------------------------------------------------------ 5. git never writes the repository
def test_the_git_calls_do_not_rewrite_the_index(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "f").write_text("a\n")
    git("add", "f")
    git("commit", "-qm", "x")
    st = (tmp_path / "f").stat()
    os.utime(tmp_path / "f", (st.st_atime, st.st_mtime - 100))  # same content, other stat: git status would refresh the index
    index = tmp_path / ".git" / "index"
    before = index.read_bytes()
    sha, dirty = tracking.git_commit(tmp_path)
    assert len(sha) == 40 and dirty is False
    assert index.read_bytes() == before
    git("status", "--porcelain")  # the control: a plain git status does rewrite it
    assert index.read_bytes() != before


# ------------------------------------------------------------------ 6. closed pipes, params that are not text
def test_a_closed_pipe_is_one_line(tmp_path):
    read, write = os.pipe()
    os.close(read)  # `vlv params --show | true`: nobody reads
    try:
        r = subprocess.run([sys.executable, "-m", "vlv.cli", "params", "--show"], cwd=ROOT, env=ENV, stdout=write,
                           stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert r.returncode == 1
    assert one_line(r.stderr) == ("error: vlv params: the reader of its output closed the pipe early; output cut short "
                                  "(write it to a file to keep all of it)")


def test_params_that_are_not_utf8_text_are_one_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_bytes("profile: embedded\nseed: 3  # café\n".encode("latin-1"))
    r = subprocess.run([sys.executable, "-m", "vlv.cli", "params", "--params", str(bad)], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert one_line(r.stderr) == f"error: {bad}: params file is not UTF-8 text (byte 32); save it as UTF-8"
    r = subprocess.run([sys.executable, str(ROOT / "pipelines" / "prepare.py"), "--params", str(bad)], cwd=tmp_path,
                       env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert one_line(r.stderr) == f"error: prepare: {bad}: params file is not UTF-8 text (byte 32); save it as UTF-8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written


def test_a_character_yaml_does_not_allow_is_one_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("profile: embedded\nseed: 3\x00\n")
    with pytest.raises(config.ParamsError) as info:
        config.load(bad)
    assert str(info.value) == (f"{bad}: params file holds character U+0000 (at character 25), which YAML does not "
                               f"allow; save it as plain UTF-8 text")


# ------------------------------------------------------------------ 7. vlv caption / reconstruct: --out, option values, model folders
@pytest.fixture(scope="module")
def captioner_folder(tmp_path_factory) -> Path:
    """A real captioner folder (tiny parts from the cards, random weights), as stage2 writes it;
    its encoder/ is a stage-1 encoder folder."""
    out = tmp_path_factory.mktemp("captioner") / "captioner"
    make_captioner().save(out, num_beams=1, max_new_tokens=8, resolution=32)
    return out


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = tmp_path / "shots"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(SCENES[i].render()).save(folder / f"s{i}.png")
    return folder


def vlv(tmp_path: Path, *args) -> subprocess.CompletedProcess:
    """``python -m vlv.cli ARGS`` with the system temp dir in tmp_path."""
    return subprocess.run([sys.executable, "-m", "vlv.cli", *map(str, args)], env={**ENV, "TMPDIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=300)


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def damage(folder: Path, how: str, rel: str) -> None:
    file = folder / rel
    if how == "truncated":
        truncate(file)
    elif how == "not JSON":
        file.write_text("{\"max_caption_tokens\": 3")
    else:
        file.unlink()


# one case in `make test`; the others behind `slow` (each starts `vlv caption` in a subprocess)
@pytest.mark.parametrize("where", ["a folder", pytest.param("under a missing folder", marks=pytest.mark.slow),
                                   pytest.param("under a read-only folder", marks=pytest.mark.slow)])
def test_an_unwritable_caption_out_is_one_line_before_the_model_loads(where, shots, tmp_path):
    if where == "a folder":
        out, expect = tmp_path / "results", "is a folder; name a file to write, e.g. "
        out.mkdir()
    elif where == "under a missing folder":
        out, expect = tmp_path / "nope" / "captions.json", "is not an existing folder; create it first"
    else:  # sysfs refuses new files even to root, who may write into any folder chmod 555 on a disk
        if not Path("/sys").is_dir():
            pytest.skip("no /sys")
        out, expect = Path("/sys/vlv-captions.json"), "cannot be written (Permission denied)"
    before = contents(tmp_path)
    r = vlv(tmp_path, "caption", shots, "--out", out, "--model", tmp_path / "no-model")  # the model is never reached
    assert r.returncode == 2
    line = one_line(r.stderr)
    assert line.startswith(f"error: --out {out}") and expect in line, line
    assert contents(tmp_path) == before and not out.is_file() and not (tmp_path / "nope").exists()  # nothing made


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_captions_that_cannot_be_written_at_the_end_are_kept_in_the_temp_dir(captioner_folder, shots, tmp_path, capsys):
    cli.main(["caption", str(shots), "--model", str(captioner_folder)])
    expected = capsys.readouterr().out
    assert sorted(json.loads(expected)) == ["s0.png", "s1.png", "s2.png"]
    r = vlv(tmp_path, "caption", shots, "--model", captioner_folder, "--out", "/dev/full")  # opens fine, every write fails
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]  # the rest: the progress bar
    assert len(errors) == 1, r.stderr[-3000:]
    (kept,) = tmp_path.glob("vlv-captions-*.json")
    assert errors[0] == (f"error: --out /dev/full could not be written (No space left on device); the 3 captions are "
                         f"kept in {kept}; move that file where you want it")
    assert kept.read_text() == expected  # every caption, as stdout would have had them


@pytest.mark.parametrize("command, value", [("caption", "0"), ("caption", "-1"), ("reconstruct", "0")])
def test_a_batch_size_below_one_is_one_line_from_argparse(command, value, shots, tmp_path):
    out = tmp_path / "out"
    r = vlv(tmp_path, command, shots, "--out", out, "--batch-size", value)
    assert r.returncode == 2
    assert one_line(r.stderr) == (f"error: vlv {command}: argument --batch-size: '{value}' is not a positive whole number; "
                                  f"give 1 or more; see vlv {command} --help")
    assert not out.exists()


def assert_names_the_file(r, folder: Path, how: str, rel: str, what: str, stage: str) -> None:
    """Exit 2 and one line: the missing or unreadable file, and the stage that writes it."""
    assert r.returncode == 2
    line = one_line(r.stderr)
    if how == "missing":
        assert line == f"error: {folder}: not {what} (missing {rel}); run the {stage} stage (dvc repro {stage}) to write it"
    else:
        assert line.startswith(f"error: {folder / rel}: cannot be read ("), line
        assert line.endswith(f"; run the {stage} stage again (dvc repro {stage}) to rewrite it"), line


@pytest.mark.parametrize("how, rel", [("truncated", "llm/model.safetensors"),  # the rest behind `slow`; every file in-process below
                                      pytest.param("truncated", "captioner_head.safetensors", marks=pytest.mark.slow),
                                      pytest.param("not JSON", "captioner.json", marks=pytest.mark.slow),
                                      pytest.param("missing", "llm/tokenizer.json", marks=pytest.mark.slow)])
def test_vlv_caption_with_a_broken_captioner_folder_is_one_line_naming_the_file(how, rel, captioner_folder, shots, tmp_path):
    broken = tmp_path / "captioner"
    shutil.copytree(captioner_folder, broken)
    damage(broken, how, rel)
    before, out = contents(broken), tmp_path / "captions.json"
    r = vlv(tmp_path, "caption", shots, "--model", broken, "--out", out)
    assert_names_the_file(r, broken, how, rel, "a captioner folder", "stage2")
    assert contents(broken) == before and not out.exists()  # the folder left as it was for the user to look at


@pytest.mark.parametrize("how, rel", [("truncated", "florence/model.safetensors"),  # the rest behind `slow`
                                      pytest.param("not JSON", "vlv_encoder.json", marks=pytest.mark.slow),
                                      pytest.param("missing", "vlv_head.safetensors", marks=pytest.mark.slow)])
def test_vlv_reconstruct_with_a_broken_stage1_folder_is_one_line_naming_the_file(how, rel, captioner_folder, shots, tmp_path):
    broken = tmp_path / "stage1"
    shutil.copytree(captioner_folder / "encoder", broken)
    damage(broken, how, rel)
    before, out = contents(broken), tmp_path / "recon"
    r = vlv(tmp_path, "reconstruct", shots, "--model", broken, "--out", out)
    assert_names_the_file(r, broken, how, rel, "a VLV encoder folder", "stage1")
    assert contents(broken) == before and contents(out) == {}


@pytest.mark.parametrize("how, rel", [("truncated", "clip/model.safetensors"), ("truncated", "encoder/florence/model.safetensors"),
                                      ("truncated", "encoder/vlv_head.safetensors"), ("not JSON", "clip/config.json"),
                                      ("not JSON", "llm/tokenizer.json"), ("not JSON", "encoder/vlv_encoder.json"),
                                      ("missing", "clip/model.safetensors"), ("missing", "encoder/florence/config.json")])
def test_every_file_of_a_captioner_folder_is_checked_before_loading(how, rel, captioner_folder, tmp_path):
    broken = tmp_path / "captioner"
    shutil.copytree(captioner_folder, broken)
    damage(broken, how, rel)
    with pytest.raises(VLVError) as info:
        Captioner.load(broken)
    msg = str(info.value)
    assert "\n" not in msg and "(dvc repro stage2)" in msg, msg
    wanted = f"{broken}: not a captioner folder (missing {rel.replace('model.safetensors', '*.safetensors')})" \
        if how == "missing" else f"{broken / rel}: cannot be read ("
    assert msg.startswith(wanted), msg
    with pytest.raises(VLVError, match="not a captioner folder [(]no such folder[)]; run the stage2 stage"):
        Captioner.load(tmp_path / "none")


def test_a_reconstruct_out_that_cannot_be_a_folder_is_one_line_before_the_model_loads(shots, tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("mine\n")
    r = vlv(tmp_path, "reconstruct", shots, "--out", out, "--model", tmp_path / "no-model")  # the model is never reached
    assert r.returncode == 2
    assert one_line(r.stderr) == (f"error: --out {out}: cannot make this folder (File exists); name a folder in a "
                                  f"writable place")
    assert out.read_text() == "mine\n"
