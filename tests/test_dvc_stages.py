"""dvc.yaml against params.yaml and every profile: what each stage declares exists where DVC looks."""

import pytest
import yaml

from dvc_stages import ROOT, declared_params, has_key, stages

PROFILES = sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml"))


@pytest.mark.parametrize("profile", PROFILES)
def test_every_declared_param_resolves_under_every_profile(profile):
    """DVC stops with "Parameters ... are missing" when a stage declares a key its file lacks."""
    missing = []
    for name, stage in stages().items():
        for file, keys in declared_params(stage, profile).items():
            tree = yaml.safe_load((ROOT / file).read_text()) or {}
            missing += [f"{name}: {file}: {k}" for k in keys if not has_key(tree, k)]
    assert not missing, missing


def test_every_stage_reads_the_profile_it_runs_under():
    for name, stage in stages().items():
        files = declared_params(stage, "paper")
        assert "profiles/paper.yaml" in files and "profile" in files["params.yaml"], name
