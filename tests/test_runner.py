"""vlv.runner's checkpoint fingerprint rule (the training itself runs in test_pipeline's stages and sweeps)."""

import pytest

from vlv import config, runner
from vlv.errors import VLVError

PARAMS = config.Params()  # the embedded defaults: the shipped parts, hashed by content (stat-cached)


def fp(stage: str, changes: dict | None = None, data: str = "data-a", encoder: str | None = None) -> str:
    params = config.override(PARAMS, changes or {}) if changes else PARAMS
    return runner.checkpoint_fingerprint(params, stage, data, encoder)


def test_evaluation_settings_never_invalidate_a_checkpoint():
    assert fp("stage1") == fp("stage1", {"stage1.eval.images": 3, "stage1.eval.recon_steps": 2})
    assert fp("stage2", encoder="abc") == fp("stage2", {"stage1.eval.images": 3}, encoder="abc")


def test_training_params_data_seed_and_components_do():
    base = fp("stage1")
    assert base != fp("stage1", {"stage1.steps": 7})
    assert base != fp("stage1", {"seed": 1})
    assert base != fp("stage1", data="data-b")
    assert base != fp("stage1", {"components.vision": None})
    assert fp("stage1", {"stage2.steps": 7}) == base, "stage 1 does not read stage 2's section"


def test_stage2_names_the_encoder_it_starts_from():
    folder_a, folder_b = fp("stage2", encoder="hash-a"), fp("stage2", encoder="hash-b")
    assert len({folder_a, folder_b, fp("stage2", encoder="in memory"), fp("stage2", encoder="random")}) == 4
    # the stage-1 section: the trainable encoder parts, and for an encoder in memory its whole recipe
    assert fp("stage2", encoder="in memory") != fp("stage2", {"stage1.steps": 7}, encoder="in memory")
    assert folder_a != fp("stage2", {"stage1.trainable": ["queries"]}, encoder="hash-a")
    assert folder_a != fp("stage2", {"stage2.steps": 7}, encoder="hash-a")


def test_stage2_under_init_random_takes_no_encoder(tmp_path):
    params = config.override(PARAMS, {"stage2.init": "random"})
    with pytest.raises(VLVError, match="stage2.init is random"):
        runner.stage2(params, tmp_path / "ckpt", encoder=tmp_path / "stage1")
