"""End to end: `dvc repro` and `dvc exp run` of the existing stages in a temporary copy."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COPY = ["dvc.yaml", "params.yaml", "pipelines", "src", ".dvc/config", ".dvcignore", ".gitignore", "mlruns/.gitkeep"]


def sh(cmd, cwd, env):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A git + DVC copy of the project with shrunk params."""
    d = tmp_path_factory.mktemp("project")
    for name in COPY:
        src, dst = ROOT / name, d / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dst)
    params = yaml.safe_load((d / "params.yaml").read_text())
    params["prepare"]["num_images"] = 300
    params["prepare"]["splits"] = {"images": 0.6, "pairs": 0.2, "val": 0.1, "test": 0.1}
    params["tracking"]["system_metrics_interval_s"] = 1
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_", "VLV_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    sh(["git", "init", "-q", "-b", "main"], d, env)
    (d / ".dvc" / ".gitignore").write_text("/config.local\n/tmp\n/cache\n")
    sh(["git", "add", "-A"], d, env)
    sh(["git", "commit", "-qm", "copy"], d, env)
    return d, env


def runs(project_dir):
    db = project_dir / "mlruns" / "mlflow.db"
    with sqlite3.connect(db) as con:
        rows = con.execute("select run_uuid from runs order by start_time").fetchall()
        out = []
        for (rid,) in rows:
            tags = dict(con.execute("select key, value from tags where run_uuid=?", (rid,)).fetchall())
            metrics = dict(con.execute("select key, value from latest_metrics where run_uuid=?", (rid,)).fetchall())
            out.append({"id": rid, "tags": tags, "metrics": metrics})
        return out


def test_dvc_repro_prepares_the_dataset_and_tracks_the_run(project):
    d, env = project
    r = sh([sys.executable, "-m", "dvc", "repro"], d, env)
    assert "prepare: 300 accepted" in r.stdout + r.stderr
    manifest = pd.read_parquet(d / "data/prepared/manifest.parquet")
    assert len(manifest) == 300 and manifest["id"].is_unique
    assert manifest["split"].value_counts().to_dict() == {"images": 180, "pairs": 60, "val": 30, "test": 30}
    assert manifest["caption"].notna().all() and manifest["sha256"].is_unique
    metrics = json.loads((d / "metrics/prepare.json").read_text())
    rejected = pd.read_csv(d / "data/prepared/rejected.csv")
    assert metrics["accepted"] == 300 and metrics["rejected"] == len(rejected)
    assert (d / "plots/prepare/samples.png").stat().st_size > 1000

    (run,) = runs(d)
    head = sh(["git", "rev-parse", "HEAD"], d, env).stdout.strip()
    assert run["tags"]["vlv.stage"] == "prepare" and run["tags"]["vlv.git_commit"] == head
    assert len(run["tags"]["vlv.pipeline_id"]) == 12
    assert run["metrics"]["prepare/accepted"] == 300
    assert any(k.startswith("system/") for k in run["metrics"]), "system metrics are on"
    art = list((d / "mlruns" / "artifacts").rglob("rejected.csv"))
    assert len(art) == 1

    # nothing changed -> nothing re-runs
    r = sh([sys.executable, "-m", "dvc", "repro"], d, env)
    assert len(runs(d)) == 1
    assert "didn't change" in r.stdout or "is cached" in r.stdout or "up to date" in r.stdout


def test_dvc_exp_run_with_a_set_param(project):
    d, env = project
    sh(["git", "add", "-A"], d, env)
    sh(["git", "commit", "-qm", "lock"], d, env)
    sh([sys.executable, "-m", "dvc", "exp", "run", "-n", "small", "-S", "prepare.num_images=200"], d, env)
    last = runs(d)[-1]
    assert last["tags"]["vlv.dvc_exp"] == "small"
    assert last["metrics"]["prepare/accepted"] == 200
    assert len(pd.read_parquet(d / "data/prepared/manifest.parquet")) == 200
    show = sh([sys.executable, "-m", "dvc", "exp", "show", "--json"], d, env).stdout
    assert '"small"' in show
