"""Typed params: every file validates; every bad value fails with one line naming the key."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vlv import config
from vlv.errors import ParamsError, VLVError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", ["params.yaml", "profiles/paper.yaml"])
def test_shipped_params_validate(path):
    p = config.load(ROOT / path)
    assert p.stage1.num_queries > 0


def test_paper_profile_holds_the_paper_recipe():
    p = config.load(ROOT / "profiles/paper.yaml")
    assert p.profile == "paper"
    assert (p.stage1.num_queries, p.stage1.steps, p.stage1.global_batch) == (77, 200_000, 512)
    assert p.stage1.optim.lr == 5e-5 and p.stage1.optim.betas == (0.9, 0.99) and p.stage1.precision == "fp32"
    assert (p.stage2.steps, p.stage2.global_batch, p.stage2.optim.lr, p.stage2.precision) == (100_000, 64, 1e-5, "bf16")
    assert p.stage2.num_beams == 4 and p.stage2.max_new_tokens == 300
    assert p.prepare.image_size == 384
    for folder in (p.components.t2i, p.components.vision, p.components.llm):
        assert folder.startswith("/"), "paper parts come from local folders"


def overlaid(tmp_path, edit) -> tuple[config.Params, str | None]:
    """params.yaml with ``edit`` applied, loaded beside a copy of profiles/."""
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(raw)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return config.load_with_note(tmp_path / "params.yaml", check_folders=False)  # "/my/sd" exists nowhere


def test_profile_paper_overlays_the_recipe_and_params_yaml_changes_win(tmp_path):
    def edit(raw):
        raw["profile"] = "paper"
        raw["stage1"]["steps"] = 4                  # changed from the default: wins over the profile
        raw["components"]["t2i"] = "/my/sd"
    p, note = overlaid(tmp_path, edit)
    paper = config.load(ROOT / "profiles/paper.yaml")
    assert (p.stage1.steps, p.components.t2i) == (4, "/my/sd")
    assert p.model_copy(update={"stage1": paper.stage1, "components": paper.components}) == paper
    assert p.stage1.num_queries == 77 and p.stage2.precision == "bf16" and p.pretrain.mode == "verify"
    assert "profile paper" in note and "overrides components.t2i, stage1.steps" in note
    embedded, none = overlaid(tmp_path / "e", lambda raw: None)
    assert embedded == config.Params() and none is None


def test_a_bad_profile_is_one_line(tmp_path):
    with pytest.raises(ParamsError, match=r"profile: 'papr' has no file .*profiles here: embedded, paper, pretrain, smoke$"):
        overlaid(tmp_path, lambda raw: raw.update(profile="papr"))
    (tmp_path / "b").mkdir()
    shutil.copytree(ROOT / "profiles", tmp_path / "b" / "profiles")
    (tmp_path / "b" / "profiles" / "odd.yaml").write_text("seed: 3\n")
    (tmp_path / "b" / "params.yaml").write_text("profile: odd\n")
    with pytest.raises(ParamsError, match="seed: a profile overlays sections"):
        config.load(tmp_path / "b" / "params.yaml")


def test_defaults_equal_params_yaml():
    """params.yaml spells out the schema's defaults: nothing hides in code."""
    assert config.load(ROOT / "params.yaml") == config.Params()


@pytest.mark.parametrize(
    "raw, key, words",
    [
        ({"stage1": {"num_queries": 0}}, "stage1.num_queries", "greater than 0"),
        ({"stage1": {"optim": {"lr": -1e-4}}}, "stage1.optim.lr", "greater than 0"),
        ({"prepare": {"splits": {"images": 0.5, "pairs": 0.1, "val": 0.1, "test": 0.1}}}, "prepare.splits", "sum to 1"),
        ({"prepare": {"sourc": "folder"}}, "prepare.sourc", "allowed keys here: source"),
        ({"prepare": {"source": "s3"}}, "prepare.source", "'synthetic', 'folder', 'parquet' or 'webdataset'"),
        ({"prepare": {"source": "folder"}}, "prepare", "needs prepare.path"),
        ({"prepare": {"source": "folder", "path": "in", "web_images": 20000}}, "prepare", "web_images 20000 needs source synthetic"),
        ({"prepare": {"web_images": -1}}, "prepare.web_images", "greater than or equal to 0"),
        ({"stage1": {"steps": "many"}}, "stage1.steps", "valid integer"),
        ({"stage2": {"trainable": "all"}}, "stage2.trainable", "'mlp', 'mlp+llm' or 'mlp+llm+encoder'"),
        ({"prepare": {"composite_background": [0, 0, 300]}}, "prepare.composite_background.2", "less than or equal to 255"),
        ({"nonsense": 1}, "nonsense", "allowed keys here: seed, profile"),
        ({"pretrain": {"vae": {"optim": {"lr": 1e-3, "schedule": "linear", "min_lr_ratio": 0.2}}}}, "pretrain.vae.optim", "needs schedule cosine"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(raw, key, words):
    with pytest.raises(ParamsError) as info:
        config.validate(raw, source="p.yaml")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"p.yaml: {key}:")
    assert words in msg


def test_pretrain_trains_exactly_the_components_that_name_their_models_pretrained_folder():
    params = config.validate({})
    assert params.pretrain.mode == "verify" and params.made_here() == []
    assert params.components.t2i == "pretrained/shapes-world/t2i"  # the shipped parts, loaded as SD-2.1 would be
    only_vision = config.validate({"pretrain": {"mode": "train"}, "components": {"vision": "models/pretrained/vision"}})
    assert only_vision.made_here() == ["vision"]
    everything = config.validate({"pretrain": {"mode": "train"}, "components": dict(config.MADE_HERE)})
    assert everything.made_here() == ["t2i", "llm", "vision", "classifier"]
    for raw, words in [
        ({"components": {"t2i": "models/pretrained/t2i"}}, "components.t2i: models/pretrained/t2i is written by pretrain in mode train"),
        ({"pretrain": {"mode": "train"}}, "pretrain.mode train trains the components that name"),
    ]:
        with pytest.raises(ParamsError) as info:
            config.validate(raw, source="p.yaml")
        assert "\n" not in str(info.value) and words in str(info.value)


@pytest.mark.parametrize(
    "space, words",
    [
        ({"stage1.num_querys": {"choices": [4]}}, "sweep: space: stage1.num_querys: no such param"),
        ({"stage1": {"choices": [4]}}, "is a section, name one of its params"),
        ({"stage1.optim.lr": {"low": 0, "high": 1e-3, "log": True}}, "a log range needs low > 0"),
        ({"stage1.optim.lr": {"choices": [1e-3], "low": 1e-4, "high": 1e-3}}, "give either choices"),
        ({"stage1.num_queries": {"choices": [0, 8]}}, "sweep.space.stage1.num_queries: 0 is not a valid value"),
        ({"stage1.num_queries": {"choices": [8, 600]}}, "600 is not a valid value"),
    ],
)
def test_a_bad_sweep_space_is_one_line(space, words):
    with pytest.raises(ParamsError) as info:
        config.check_sweep(config.validate({"sweep": {"space": space}}, source="p.yaml"), "p.yaml")
    assert "\n" not in str(info.value) and words in str(info.value) and str(info.value).startswith("p.yaml: sweep")


def test_vlv_sweep_with_a_bad_space_fails_before_any_trial(tmp_path):
    bad = yaml.safe_load((ROOT / "params.yaml").read_text())
    bad["sweep"]["space"]["stage2.optim.lr"] = {"low": 1e-3, "high": 1e-4}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    r = subprocess.run([sys.executable, "-m", "vlv.cli", "sweep", "--study", "s", "--n-trials", "1"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "sweep.space.stage2.optim.lr: a range needs low < high" in r.stderr
    assert not (tmp_path / "mlruns").exists(), "nothing was created: no study, no run"


def test_a_bad_sweep_storage_is_one_line_without_the_password():
    from vlv import sweep

    params = config.load(ROOT / "params.yaml")
    with pytest.raises(VLVError) as missing:  # no MySQL driver is installed: say what to install
        sweep.open_study(params, "s", "mysql://vlv:secret@db-host/sweeps")
    assert "install the database driver" in str(missing.value)
    with pytest.raises(VLVError) as down:  # nothing listens on port 9 (or psycopg is not installed)
        sweep.open_study(params, "s", "postgresql://vlv:secret@127.0.0.1:9/sweeps")
    for err in (missing.value, down.value):
        assert "\n" not in str(err) and "secret" not in str(err) and "vlv:***@" in str(err)


def test_yaml_syntax_error_names_the_line(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("seed: 0\nprepare: [\n")
    with pytest.raises(ParamsError, match=r"p.yaml: line 3: .*fix the YAML syntax"):
        config.load(f)


def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli_with_bad_params_prints_one_line_and_exits_nonzero(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"stage1": {"num_queries": 0}}))
    r = _run("-m", "vlv.cli", "params", "--params", str(bad))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "stage1.num_queries" in r.stderr and r.stdout == ""


def test_stage_script_with_bad_params_fails_before_compute(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"prepare": {"splits": {"images": 1, "pairs": 1, "val": 0, "test": 0}}}))
    r = _run(str(ROOT / "pipelines/prepare.py"), "--params", str(bad), cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "prepare.splits" in r.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "mlruns").exists()


# ------------------------------------------------------- what the params name on disk, at load
def parts_in(tmp_path: Path, positions: int | None = 77) -> dict:
    """Component folders in tmp_path, each with a file; t2i's text encoder says ``positions``."""
    parts = {}
    for part in ("t2i", "vision", "llm", "classifier"):
        (tmp_path / part).mkdir(parents=True)
        (tmp_path / part / "config.json").write_text("{}")
        parts[part] = str(tmp_path / part)
    if positions is not None:
        (tmp_path / "t2i" / "text_encoder").mkdir()
        (tmp_path / "t2i" / "text_encoder" / "config.json").write_text(f'{{"max_position_embeddings": {positions}}}')
    return parts


def params_file(tmp_path: Path, **sections) -> Path:
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(sections))
    return f


def one_line(err: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(err.value)
    return str(err.value)


def test_num_queries_over_the_text_encoders_positions_fails_when_params_load(tmp_path):
    parts = parts_in(tmp_path)
    f = params_file(tmp_path, components=parts, stage1={"num_queries": 100})  # the schema allows 512
    assert config.load(f).stage1.num_queries == 100  # the schema alone: no folders read
    with pytest.raises(ParamsError) as err:
        config.load_with_note(f)
    msg = one_line(err)
    assert msg.startswith(f"{f}: stage1.num_queries: 100 query tokens exceed the 77 positions")
    assert str(tmp_path / "t2i" / "text_encoder" / "config.json") in msg and "at most 77" in msg
    assert config.load_with_note(params_file(tmp_path, components=parts, stage1={"num_queries": 77}))[0].stage1.num_queries == 77


def test_num_queries_of_a_card_built_t2i_is_checked_against_its_card(tmp_path, monkeypatch):
    parts = parts_in(tmp_path)
    monkeypatch.chdir(tmp_path)  # models/pretrained/t2i does not exist yet: pretrain builds it from the card
    f = params_file(tmp_path, pretrain={"mode": "train"}, components={**parts, "t2i": "models/pretrained/t2i"},
                    stage1={"num_queries": 100})
    with pytest.raises(ParamsError) as err:
        config.load_with_note(f)
    assert f"card {config.T2I_CARD}" in one_line(err) and "exceed the 77 positions" in one_line(err)


def test_num_queries_is_not_checked_when_no_text_encoder_config_is_readable(tmp_path):
    f = params_file(tmp_path, components=parts_in(tmp_path, positions=None), stage1={"num_queries": 100})
    assert config.load_with_note(f)[0].stage1.num_queries == 100  # the stage that loads the folder says what is wrong


@pytest.mark.parametrize("part", ["t2i", "vision", "llm", "classifier"])
@pytest.mark.parametrize("problem", ["missing", "empty"])
def test_a_missing_or_empty_components_folder_fails_when_params_load(tmp_path, part, problem):
    parts = parts_in(tmp_path / "parts")
    shutil.rmtree(parts[part])
    if problem == "empty":
        Path(parts[part]).mkdir()
    f = params_file(tmp_path, components=parts)
    with pytest.raises(ParamsError) as err:
        config.load_with_note(f)
    words = "does not exist" if problem == "missing" else "is empty"
    assert one_line(err) == f"{f}: components.{part}: folder {parts[part]} {words}; point it at the {part} model folder"


def test_folders_pretrain_writes_and_null_parts_are_not_required(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trains_all = params_file(tmp_path, pretrain={"mode": "train"}, components=dict(config.MADE_HERE))
    assert config.load_with_note(trains_all)[0].made_here() == ["t2i", "llm", "vision", "classifier"]
    parts = parts_in(tmp_path / "parts")
    no_optional = params_file(tmp_path, components={**parts, "vision": None, "classifier": None})
    assert config.load_with_note(no_optional)[0].components.vision is None
    with pytest.raises(ParamsError, match="components.t2i: folder /models/stable-diffusion-2-1-base does not exist"):
        config.load(ROOT / "profiles/paper.yaml", check_folders=True)  # the recipe loads (above); its folders live elsewhere


def test_vlv_params_and_a_stage_stop_on_a_missing_t2i_folder_with_one_line(tmp_path):
    parts = parts_in(tmp_path / "parts")
    bad = params_file(tmp_path, components={**parts, "t2i": str(tmp_path / "no-such-sd")})
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for args in (["-m", "vlv.cli", "params", "--params", str(bad)], [str(ROOT / "pipelines/prepare.py"), "--params", str(bad)]):
        r = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert f"components.t2i: folder {tmp_path / 'no-such-sd'} does not exist" in r.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "mlruns").exists()
    good = params_file(tmp_path, components=parts)
    r = subprocess.run([sys.executable, "-m", "vlv.cli", "params", "--params", str(good)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0 and ": ok (profile embedded" in r.stdout


def test_flatten_gives_dotted_keys():
    flat = config.flatten(config.dump(config.Params()))
    assert flat["prepare.splits.pairs"] == 0.10 and flat["stage1.optim.lr"] == 1e-3
