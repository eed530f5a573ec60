"""The paper profile on folders in the real Hugging Face layouts, end to end (`make test-paper`).

tests/paper_layouts.py writes stable-diffusion-2-1-base, Florence-2-large and Qwen2.5-3B as
their hubs lay them out (file names, processor files, tokenizers with their special tokens,
stored dtypes: fp32 / float16 / bf16 sharded), shrunk in width and depth, with random weights,
and a LAION-style webdataset of real photographs. The project copy selects the paper profile
as a user does (`dvc exp run -S profile=paper`, paths and steps edited in profiles/paper.yaml)
and runs every stage for a few steps; then `vlv caption` and `vlv reconstruct` on the photos.
`make test-paper` runs this module (so does CI, .ci/run); it should stay under ~3 minutes (its
measured time: docs/NOTES.md). TIMEOUT_S stops a hung run, with room for a busy machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

import dvc_stages
import paper_layouts
from test_pipeline import copy_project, runs, sh

TIMEOUT_S = 360  # per test, its fixture included (the first test's writes the layouts and runs every stage): twice the budget

pytestmark = [pytest.mark.paper, pytest.mark.timeout(TIMEOUT_S)]


def paper_edits(hub: dict[str, Path]):
    """profiles/paper.yaml as a user edits it: their folders, and a handful of steps."""
    def edit(profile: dict) -> None:
        tiny = {"global_batch": 2, "checkpoint_every": 0, "log_every": 1}
        profile["prepare"].update(path=str(hub["webdataset"]), image_size=64, min_side=64,
                                  splits={"images": 0.5, "pairs": 0.25, "val": 0.125, "test": 0.125})
        profile["components"].update(t2i=str(hub["t2i"]), vision=str(hub["vision"]), llm=str(hub["llm"]))
        profile["pretrain"]["eval"] = {"prompts": 2, "steps": 2}
        profile["stage1"].update(steps=2, **tiny, eval={"images": 1, "noise_draws": 1, "recon_images": 1, "recon_steps": 2})
        profile["stage2"].update(steps=2, **tiny, val_images=1, max_new_tokens=4)
        profile["evaluate"].update(regen_steps=2, meteor=False, batch_size=2)
        profile["tracking"]["system_metrics_interval_s"] = 1
    return edit


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    hub = paper_layouts.write_paper_layouts(root / "hub", photos=8)
    d, env = copy_project(root / "project")
    path = d / "profiles" / "paper.yaml"
    profile = yaml.safe_load(path.read_text())
    paper_edits(hub)(profile)
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    sh(["git", "commit", "-qam", "my folders"], d, env)
    assert not (d / "data").exists(), "a fresh copy: nothing prepared until prepare runs"
    r = sh([sys.executable, "-m", "dvc", "exp", "run", "-S", "profile=paper"], d, env, timeout=TIMEOUT_S)
    return d, env, hub, r.stdout + r.stderr


def test_the_paper_profile_runs_every_stage_on_the_real_layouts(paper):
    d, env, hub, log = paper
    assert yaml.safe_load((d / "params.yaml").read_text())["profile"] == "paper"
    missing = [f"{name}: {p}" for name, stage in dvc_stages.stages(d).items() for p in dvc_stages.written(stage) if not (d / p).exists()]
    assert not missing, missing
    assert {r["tags"]["vlv.stage"] for r in runs(d)} == {"prepare", "pretrain", "stage1", "stage2", "evaluate", "cost_report"}
    # the first-minute check ran before prepare (so with no data/prepared at all), reads no data, records its seconds
    ran = [line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")]
    assert ran.index("verify") < ran.index("prepare"), f"the first-minute check runs before prepare: {ran}"
    assert not [dep for dep in dvc_stages.stages(d)["verify"]["deps"] if dep.startswith("data")]
    first = json.loads((d / "metrics/verify.json").read_text())
    assert first["verified"] == 1 and first["verify_batch"] == "built-in" and first["verify_seconds"] > 0, first
    pre = json.loads((d / "metrics/pretrain.json").read_text())
    assert pre["verified"] == 1 and set(pre["verify_losses"]) == {"stage1_denoising", "stage2_caption"}
    assert pre["verify_batch"].endswith("data/prepared"), "pretrain (verify mode) repeats the check on the prepared pairs"
    prep = json.loads((d / "metrics/prepare.json").read_text())
    assert prep["accepted"] == 8 and prep["captioned"] == 8

    # the task prompt is the processor's own <MORE_DETAILED_CAPTION>, image settings from its files
    enc = json.loads((d / "models/stage1/vlv_encoder.json").read_text())
    assert enc["task"] == "<MORE_DETAILED_CAPTION>" and enc["image_size"] == 768
    assert enc["image_mean"] == pytest.approx([0.485, 0.456, 0.406])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hub["vision"])
    assert tok.decode(enc["prompt_ids"], skip_special_tokens=True).strip() == "Describe with a paragraph what is shown in the image."


def moved(start: torch.nn.Module, trained: torch.nn.Module) -> tuple[dict[str, float], dict[str, float]]:
    """Per parameter of ``start`` (a stage's model as built, before its first step): the share of
    its elements that differ in ``trained`` (the stage's saved folder, loaded), trainable and
    frozen apart. Attention key biases are left out: softmax ignores a shift shared by every key,
    so their gradient is zero by construction and only weight decay moves them (not at all where 0)."""
    now = dict(trained.named_parameters())
    trainable, frozen = {}, {}
    for name, p in start.named_parameters():
        if not name.endswith("k_proj.bias"):
            share = float((now[name].detach().float() != p.detach().float()).float().mean())
            (trainable if p.requires_grad else frozen)[name] = share
    return trainable, frozen


def least(shares: dict[str, float]) -> list:
    return sorted(shares.items(), key=lambda kv: kv[1])[:3]


def test_every_part_trained_in_fp32_changed_all_its_trainable_weights(paper):
    """transformers 5 loads Florence-2 (float16) and Qwen2.5 (bf16) in their stored dtypes unless told;
    trained as such, AdamW at the paper's lr moves only some weights. Here every weight moves: each
    stage's model is rebuilt as the stage built it (same builder, params and seed), and every
    trainable tensor of it differs in the stage's saved folder while every frozen one does not."""
    from vlv import autoencoder, captioner, config
    from vlv.autoencoder import VLVEncoder

    d, env, hub, _ = paper
    params = config.load(d / "params.yaml")
    assert params.stage1.trainable == ["queries", "projection", "language_model"] and params.stage2.trainable == "mlp+llm+encoder"

    # stored dtypes: the hub's (float16, bf16 shards) in, fp32 out
    assert {str(v.dtype) for v in load_file(str(hub["vision"] / "model.safetensors")).values()} == {"torch.float16"}
    for shard in sorted(hub["llm"].glob("model-*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            assert all(f.get_slice(k).get_dtype() == "BF16" for k in f.keys())
    for saved in ("models/stage1/florence/model.safetensors", "models/stage1/vlv_head.safetensors",
                  "models/captioner/encoder/florence/model.safetensors", "models/captioner/encoder/vlv_head.safetensors",
                  "models/captioner/captioner_head.safetensors", "models/captioner/llm/model.safetensors"):
        assert {str(v.dtype) for v in load_file(str(d / saved)).values()} == {"torch.float32"}, f"{saved}: fp32 master weights"

    # stage 1: Florence-2's language model, the queries and the projection, from the hub folder and fresh
    start = autoencoder.build(params).encoder
    trainable, frozen = moved(start, VLVEncoder.load(d / "models/stage1"))
    for part in ("queries", "projection.", "florence.model.language_model."):
        assert any(k.startswith(part) for k in trainable), f"stage 1: {part} is not trainable"
    assert min(trainable.values()) == 1.0, least(trainable)
    assert any(k.startswith("florence.model.vision_tower.") for k in frozen) and max(frozen.values()) == 0.0, \
        "stage 1: DaViT and the image projector stay frozen"

    # stage 2: the stage-1 encoder's trainable parts, the MLP (fresh) and the LLM (the hub's), CLIP frozen
    start = captioner.build(params, stage1_dir=d / "models/stage1")
    trainable, frozen = moved(start, captioner.Captioner.load(d / "models/captioner"))
    for part in ("encoder.queries", "encoder.projection.", "encoder.florence.model.language_model.", "mlp.", "llm."):
        assert any(k.startswith(part) for k in trainable), f"stage 2: {part} is not trainable"
    assert min(trainable.values()) == 1.0, least(trainable)
    assert any(k.startswith("clip.") for k in frozen) and max(frozen.values()) == 0.0, "stage 2: CLIP, DaViT, projector frozen"


def test_caption_and_reconstruct_run_on_photos(paper, tmp_path):
    d, env, hub, _ = paper
    photos = paper_layouts.photo_folder(tmp_path / "photos", 3)
    out = tmp_path / "captions.json"
    sh([sys.executable, "-m", "vlv.cli", "caption", str(photos), "--out", str(out), "--max-new-tokens", "4"], d, env)
    captions = json.loads(out.read_text())
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions.values())
    sh([sys.executable, "-m", "vlv.cli", "reconstruct", str(photos), "--out", str(tmp_path / "recon"), "--steps", "2"], d, env)
    assert len(list((tmp_path / "recon").glob("*_recon.png"))) == 3


def test_new_weights_in_the_same_folder_re_run_what_reads_them(paper):
    """DVC knows the folders by path; the components stage's content fingerprints make it re-run
    exactly the stages that read the changed folder (`dvc status`, which said "up to date" before)."""
    from safetensors.torch import save_file

    d, env, hub, _ = paper
    before = {name: (d / "models/fingerprints" / f"{name}.json").read_text() for name in ("t2i", "vision", "llm")}
    weights = hub["llm"] / "model-00002-of-00002.safetensors"
    save_file({k: v + 1e-2 for k, v in load_file(str(weights)).items()}, str(weights), metadata={"format": "pt"})
    sh([sys.executable, "-m", "dvc", "repro", "components"], d, env)
    after = {name: (d / "models/fingerprints" / f"{name}.json").read_text() for name in before}
    assert after["t2i"] == before["t2i"] and after["vision"] == before["vision"] and after["llm"] != before["llm"]
    status = json.loads(sh([sys.executable, "-m", "dvc", "status", "--json"], d, env).stdout)
    changed = {name for name, why in status.items() if {"changed deps": {"models/fingerprints/llm.json": "modified"}} in why}
    assert changed == {"verify", "pretrain", "stage2"} and set(status) == changed | {"components"}, status  # evaluate follows stage2's out


def verify_alone(d: Path, env: dict, where: Path, profile: dict) -> subprocess.CompletedProcess:
    """pipelines/verify.py as `dvc repro` runs it, from a folder holding only params.yaml and
    profiles/ (``profile`` as profiles/paper.yaml): no data/prepared, no models/ of any stage."""
    shutil.copytree(d / "profiles", where / "profiles")
    (where / "profiles/paper.yaml").write_text(yaml.safe_dump(profile))
    (where / "params.yaml").write_text("profile: paper\n")
    return subprocess.run([sys.executable, str(d / "pipelines/verify.py")], cwd=where, env={**env, "PYTHONPATH": str(d / "src")},
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("breakage, words", [
    ("processor", "no image-processor settings (looked for preprocessor_config.json and processor_config.json)"),
    ("width", "widths do not chain"),
    ("image_token", "the tokenizer names no image token"),
])
def test_a_broken_folder_fails_in_verify_with_one_line(paper, tmp_path, breakage, words):
    """The verify stage names the part, its folder and the mismatch, before any data is read."""
    d, env, hub, _ = paper
    broken = tmp_path / "hub"
    shutil.copytree(hub["t2i"], broken / "sd")
    shutil.copytree(hub["vision"], broken / "florence")
    profile = yaml.safe_load((d / "profiles/paper.yaml").read_text())
    profile["components"].update(t2i=str(broken / "sd"), vision=str(broken / "florence"))
    if breakage == "processor":
        for f in ("preprocessor_config.json", "processor_config.json"):
            (broken / "florence" / f).unlink()
    elif breakage == "width":  # a text encoder from another model: it loads, but does not fit the UNet
        from transformers import CLIPTextConfig, CLIPTextModel

        cfg = CLIPTextConfig.from_pretrained(broken / "sd/text_encoder")
        cfg.hidden_size, cfg.intermediate_size = 2 * cfg.hidden_size, 2 * cfg.intermediate_size
        CLIPTextModel(cfg).save_pretrained(broken / "sd/text_encoder")
    else:
        cfg = json.loads((broken / "florence/tokenizer_config.json").read_text())
        cfg.pop("extra_special_tokens", None)
        (broken / "florence/tokenizer_config.json").write_text(json.dumps(cfg))
    r = verify_alone(d, env, tmp_path / "project", profile)
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: verify: ") and words in last and "Traceback" not in r.stderr, r.stderr[-2000:]
