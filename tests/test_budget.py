"""The caption budget (issue 20 item 1): the captioning side (the vision encoder's pretraining,
stage 1, stage 2) reads world captions from `pairs` only; the parts the paper downloads (T2I,
LM, attribute classifier) learn from their own `web` split.

Every ShardDataset that a part's data access opens is recorded (ShardDataset.__init__
instrumented) while the code path the stage runs builds its datasets: pipelines/stage1.py and
pipelines/stage2.py `open_data` (their `main` trains on what it returns and records its
`data.reads`), pretrain.open_data (train_parts). Held-out val/test images opened with their
captions as the references a stage scores against ("eval": never trained on) are allowed;
any other caption outside `pairs` fails.
"""

import importlib.util
from pathlib import Path

import pytest
import yaml

from test_pipeline import shrink
from vlv import config, data, pretrain
from vlv.errors import VLVError

ROOT = Path(__file__).resolve().parents[1]
DATA = Path("data/prepared")  # the pipelines' relative path: the tests run in a temporary project folder


def pipeline(name: str):
    spec = importlib.util.spec_from_file_location(f"pipeline_{name}", ROOT / "pipelines" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shrunk(web_images: int) -> config.Params:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    shrink(raw)
    raw["prepare"]["web_images"] = web_images
    return config.validate(raw)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A folder holding data/prepared: the shrunk pipeline's data (300 images + 60 web)."""
    d = tmp_path_factory.mktemp("budget")
    params = shrunk(60)
    data.prepare(params, d / DATA, progress=False)
    return d, params


@pytest.fixture
def opened(project, monkeypatch):
    """Every ShardDataset constructed from here on, in order (run from the project folder)."""
    monkeypatch.chdir(project[0])
    log: list[data.ShardDataset] = []
    init = data.ShardDataset.__init__

    def recording(self, *args, **kwargs):
        init(self, *args, **kwargs)
        log.append(self)

    monkeypatch.setattr(data.ShardDataset, "__init__", recording)
    return log


CAPTIONING_SIDE = {
    "stage1": lambda params: pipeline("stage1").open_data(params),
    "stage2": lambda params: pipeline("stage2").open_data(params),
    "vision": lambda params: pretrain.open_data(params, DATA, parts=("vision",)),
}


@pytest.mark.parametrize("part", [
    "stage1",
    "stage2",
    "vision",
])
def test_the_captioning_side_reads_world_captions_from_pairs_only(project, opened, part):
    datasets = CAPTIONING_SIDE[part](project[1])
    assert opened, "the part opened its data"
    references = datasets.get("eval")
    for ds in opened:
        if ds.captions:
            held_out = ds is references and ds.split in ("val", "test")
            assert ds.split == "pairs" or held_out, f"{part} reads the captions of split {ds.split!r}: {data.reads(ds)}"
    for name, ds in datasets.items():
        if name != "eval":  # what it trains on
            assert data.reads(ds)["captions"] == 0 or ds.split == "pairs", (name, data.reads(ds))


def test_the_records_say_what_each_stage_trains_on(project, opened):
    s1, s2 = CAPTIONING_SIDE["stage1"](project[1]), CAPTIONING_SIDE["stage2"](project[1])
    assert data.reads(s1["stage1"]) == {"split": "images", "images": 180, "captions": 0, "boxes": 0}
    assert data.reads(s2["stage2"]) == {"split": "pairs", "images": 60, "captions": 60, "boxes": 0}
    assert data.reads(s1["eval"])["split"] == data.reads(s2["eval"])["split"] == "val"


def test_the_downloaded_parts_learn_from_the_web_split(project, opened):
    parts = [p for p in pretrain.PART_READS if p != "vision"]  # vision: below
    datasets = pretrain.open_data(project[1], DATA, parts=parts)
    assert {ds.split for ds in opened} == {"web"}
    reads = {p: pretrain.part_reads(p, datasets[p]) for p in parts}
    assert reads["vae"] == {"split": "web", "images": 60, "captions": 0, "boxes": 0}
    assert reads["llm"] == {"split": "web", "images": 0, "captions": 60, "boxes": 0}, "the LM reads captions as text only"
    assert reads["teacher"] == reads["clip"] == reads["classifier"] == {"split": "web", "images": 60, "captions": 60, "boxes": 0}
    vision = pretrain.part_reads("vision", pretrain.open_data(project[1], DATA, parts=["vision"])["vision"])
    assert vision == {"split": "web", "images": 60, "captions": 0, "boxes": 60}, "images and boxes, never a caption"


def test_pretrain_without_a_web_split_is_one_line_naming_web_images(tmp_path):
    params = shrunk(0)
    data.prepare(params, tmp_path / DATA, progress=False)
    with pytest.raises(VLVError) as info:
        pretrain.open_data(params, tmp_path / DATA)
    assert "\n" not in str(info.value) and "web split is empty" in str(info.value) and "prepare.web_images" in str(info.value)
