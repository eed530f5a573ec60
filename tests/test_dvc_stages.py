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


def test_each_stage_depends_on_exactly_the_project_modules_its_script_imports():
    """A module a stage imports (transitively, lazy imports too) but does not declare would let
    DVC skip the stage after that module changed; one it declares but never imports re-runs it
    for nothing. A declared folder (src/vlv/cards) covers the files under it."""
    from dvc_stages import import_closure, script_of

    missing, stale = {}, {}
    for name, stage in stages().items():
        deps = [d for d in stage.get("deps", []) if isinstance(d, str)]
        closure = import_closure(script_of(stage)) - {"src/vlv/__init__.py"}
        covered = lambda f: any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)  # noqa: E731
        used = lambda d: any(f == d or f.startswith(d.rstrip("/") + "/") for f in closure)  # noqa: E731
        if lost := sorted(f for f in closure if not covered(f)):
            missing[name] = lost
        if unused := sorted(d for d in deps if d.startswith("src/") and not used(d)):
            stale[name] = unused
    assert not missing, f"dvc.yaml deps lack modules their stage imports: {missing}"
    assert not stale, f"dvc.yaml deps name modules their stage never imports: {stale}"


def test_the_import_closure_sees_lazy_and_relative_imports():
    from dvc_stages import import_closure

    closure = import_closure(["pipelines/stage1.py"])
    assert {"src/vlv/autoencoder.py", "src/vlv/components.py", "src/vlv/cards/__init__.py", "src/vlv/errors.py"} <= closure
