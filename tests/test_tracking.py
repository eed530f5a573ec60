"""MLflow wiring: store location, safe creation, run tags, the pipeline id."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest

from vlv import config, tracking

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    yield tmp_path
    mlflow.set_tracking_uri(None)


def test_store_is_sqlite_with_absolute_paths_under_dvc_root(store):
    uri, artifacts = tracking.store_paths()
    assert uri == f"sqlite:///{store / 'mlruns' / 'mlflow.db'}"
    assert artifacts == (store / "mlruns" / "artifacts").as_uri()
    assert Path(uri.removeprefix("sqlite:///")).is_absolute()


def test_tracking_uri_env_overrides(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.store_paths() == ("http://127.0.0.1:5999", None)
    assert "--default-artifact-root" not in tracking.ui_command()
    assert tracking.ui_command()[tracking.ui_command().index("--host") + 1] == "127.0.0.1"


def test_processes_starting_together_share_one_fresh_store(tmp_path):
    script = textwrap.dedent(
        """
        import mlflow
        from vlv import tracking
        exp = tracking.setup("vlv")
        with mlflow.start_run():
            mlflow.log_metric("x", 1.0)
        print(exp)
        """
    )
    env = {**ENV, "DVC_ROOT": str(tmp_path)}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1][-2000:] for o in outs]
    assert len({o[0].strip() for o in outs}) == 1  # one experiment
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    try:
        assert len(mlflow.search_runs(experiment_names=["vlv"])) == 3
    finally:
        mlflow.set_tracking_uri(None)


def test_stage_run_in_a_non_main_process_opens_no_run_but_keeps_a_meter(store, monkeypatch):
    """`accelerate launch` sets RANK; only rank 0 logs. The others still meter the loop."""
    from vlv import cost

    monkeypatch.setenv("RANK", "1")
    params = config.validate({"tracking": {"system_metrics": False}})
    with tracking.stage_run("stage1", params) as run:
        assert run is None and mlflow.active_run() is None
        assert cost.active() is not None and cost.active().stage == "stage1"
    assert cost.active() is None
    exp = mlflow.get_experiment_by_name(params.tracking.experiment)
    assert exp is None or mlflow.search_runs([exp.experiment_id]).empty
    monkeypatch.setenv("RANK", "0")
    assert tracking.is_main()


def test_stage_run_tags_and_params(store, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "wide-queries")
    monkeypatch.setenv("VLV_PIPELINE_ID", "pipe123")
    monkeypatch.setattr(tracking, "_pipeline_id", None)
    params = config.validate({"stage1": {"num_queries": 32}, "tracking": {"system_metrics": False}})
    with tracking.stage_run("prepare", params) as run:
        mlflow.log_metric("prepare/accepted", 5)
    got = mlflow.get_run(run.info.run_id)
    assert got.data.tags["vlv.stage"] == "prepare"
    assert got.data.tags["vlv.pipeline_id"] == "pipe123"
    assert got.data.tags["vlv.dvc_exp"] == "wide-queries"
    assert len(got.data.tags["vlv.git_commit"]) in (40, len("unknown"))
    assert got.data.params["stage1.num_queries"] == "32"
    assert got.data.params["prepare.splits.pairs"] == "0.1"
    assert got.data.metrics["prepare/accepted"] == 5
    assert got.info.artifact_uri.startswith((store / "mlruns" / "artifacts").as_uri())


def test_pipeline_id_is_shared_by_the_children_of_one_dvc_process(tmp_path):
    """Every stage of one `dvc repro` runs under the same dvc process; the id follows it."""
    fake = tmp_path / "bin" / "dvc"
    fake.parent.mkdir()
    child = f"{sys.executable} -c 'from vlv import tracking; print(tracking.pipeline_id())'"
    fake.write_text(f"#!/bin/sh\n/bin/sh -c \"{child}\"\n/bin/sh -c \"{child}\"\n")
    fake.chmod(0o755)
    env = {k: v for k, v in ENV.items() if k != "VLV_PIPELINE_ID"}
    first = subprocess.run([str(fake)], env=env, capture_output=True, text=True, timeout=120).stdout.split()
    second = subprocess.run([str(fake)], env=env, capture_output=True, text=True, timeout=120).stdout.split()
    assert len(first) == 2 and first[0] == first[1]
    assert len(second) == 2 and second[0] == second[1] and second[0] != first[0]


def test_record_logs_what_each_part_read_as_params(store, tmp_path):
    params = config.validate({"tracking": {"system_metrics": False}})
    reads = {"stage2": {"split": "pairs", "images": 60, "captions": 60}, "eval": {"split": "val", "images": 8, "captions": 8}}
    with tracking.stage_run("stage2", params) as run:
        tracking.record("stage2", {"final_train_loss": 1.5, "reads": reads}, tmp_path / "m.json")
    got = mlflow.get_run(run.info.run_id).data
    assert got.params["reads.stage2.split"] == "pairs" and got.params["reads.stage2.captions"] == "60"
    assert got.params["reads.eval.split"] == "val" and got.params["reads.eval.images"] == "8"
    assert got.metrics["stage2/final_train_loss"] == 1.5 and not any("reads" in k for k in got.metrics)
    assert '"reads"' in (tmp_path / "m.json").read_text()
