"""End to end: `dvc repro` and `dvc exp run` of the pipeline in a temporary copy."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import dvc_stages
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COPY = ["dvc.yaml", "params.yaml", "profiles", "pipelines", "src", "pretrained", "benchmarks/throughput.csv", ".dvc/config", ".dvcignore", ".gitignore", "mlruns/.gitkeep"]


def sh(cmd, cwd, env, timeout=600):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def copy_project(d: Path, edit=None) -> tuple[Path, dict]:
    """A git + DVC copy of the project in ``d``; ``edit(params)`` changes params.yaml first."""
    for name in COPY:
        src, dst = ROOT / name, d / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dst)
    if edit is not None:
        params = yaml.safe_load((d / "params.yaml").read_text())
        edit(params)
        (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_", "VLV_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    sh(["git", "init", "-q", "-b", "main"], d, env)
    (d / ".dvc" / ".gitignore").write_text("/config.local\n/tmp\n/cache\n")
    sh(["git", "add", "-A"], d, env)
    sh(["git", "commit", "-qm", "copy"], d, env)
    return d, env


def shrink(params: dict) -> None:
    """Params small enough for the test suite (seconds per stage)."""
    params["prepare"]["num_images"] = 300
    params["prepare"]["splits"] = {"images": 0.6, "pairs": 0.2, "val": 0.1, "test": 0.1}
    params["tracking"]["system_metrics_interval_s"] = 1
    tiny = {"global_batch": 8, "checkpoint_every": 0, "log_every": 2}
    params["pretrain"] = {"mode": "verify", "vae": {"steps": 3, **tiny}, "clip": {"steps": 3, **tiny}, "teacher": {"steps": 3, **tiny}, "llm": {"steps": 3, **tiny},
                          "vision": {"steps": 3, **tiny, "val_images": 4}, "classifier": {"steps": 3, **tiny}, "eval": {"prompts": 4, "steps": 2}}
    params["stage1"] = {**params["stage1"], "steps": 40, "global_batch": 8, "checkpoint_every": 4, "log_every": 4,
                        "eval": {"images": 8, "noise_draws": 1, "recon_images": 2, "recon_steps": 2, "guidance_scale": 2.0}}
    params["stage2"] = {**params["stage2"], "steps": 6, **tiny, "val_images": 8, "max_new_tokens": 12}
    params["evaluate"] = {**params["evaluate"], "images": 10, "regen_steps": 2, "gallery": 4}
    params["sweep"] = {**params["sweep"], "report_every": 2, "val_images": 8, "heartbeat_s": 2,
                       "budget": {"stage1.steps": 4, "stage2.steps": 6, "stage2.max_new_tokens": 12}}


def shrink_train(params: dict) -> None:
    """``shrink``, with pretrain training every part (tiny) into models/pretrained on a web split of 120."""
    shrink(params)
    params["prepare"]["web_images"] = 120
    params["pretrain"]["mode"] = "train"
    params["components"] = {**params["components"], **{part: f"models/pretrained/{part}" for part in ("t2i", "llm", "vision", "classifier")}}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return copy_project(tmp_path_factory.mktemp("project"), shrink)


@pytest.fixture
def reproduced(project):
    """The project after one `dvc repro` (the first, unmarked test runs it; run here when the
    slow tests are selected alone with `-m slow`)."""
    d, env = project
    if not (d / "metrics/evaluate.json").is_file():
        sh([sys.executable, "-m", "dvc", "repro"], d, env)
    return project


def runs(project_dir):
    db = project_dir / "mlruns" / "mlflow.db"
    with sqlite3.connect(db) as con:
        rows = con.execute("select run_uuid, status from runs order by start_time").fetchall()
        out = []
        for rid, status in rows:
            tags = dict(con.execute("select key, value from tags where run_uuid=?", (rid,)).fetchall())
            metrics = dict(con.execute("select key, value from latest_metrics where run_uuid=?", (rid,)).fetchall())
            out.append({"id": rid, "status": status, "tags": tags, "metrics": metrics})
        return out


def test_dvc_repro_prepares_the_dataset_and_tracks_the_run(project):
    d, env = project
    r = sh([sys.executable, "-m", "dvc", "repro"], d, env)
    assert "prepare: 300 accepted (images 180, pairs 60, val 30, test 30" in r.stdout + r.stderr
    manifest = pd.read_parquet(d / "data/prepared/manifest.parquet")
    assert len(manifest) == 300 and manifest["id"].is_unique
    assert manifest["split"].value_counts().to_dict() == {"images": 180, "pairs": 60, "val": 30, "test": 30}
    assert manifest["caption"].notna().all() and manifest["sha256"].is_unique
    metrics = json.loads((d / "metrics/prepare.json").read_text())
    rejected = pd.read_csv(d / "data/prepared/rejected.csv")
    assert metrics["accepted"] == 300 and metrics["rejected"] == len(rejected) and metrics["splits"].get("web", 0) == 0
    assert (d / "plots/prepare/samples.png").stat().st_size > 1000

    by_stage = {r["tags"]["vlv.stage"]: r for r in runs(d)}
    assert set(by_stage) == {"prepare", "pretrain", "stage1", "stage2", "evaluate", "cost_report"}
    assert len({r["tags"]["vlv.pipeline_id"] for r in by_stage.values()}) == 1, "one pipeline id per dvc repro"
    run = by_stage["prepare"]
    head = sh(["git", "rev-parse", "HEAD"], d, env).stdout.strip()
    assert run["tags"]["vlv.git_commit"] == head and len(run["tags"]["vlv.pipeline_id"]) == 12
    assert run["metrics"]["prepare/accepted"] == 300
    assert any(k.startswith("system/") for k in run["metrics"]), "system metrics are on"
    art = list((d / "mlruns" / "artifacts").rglob("rejected.csv"))
    assert len(art) == 1

    # pretrain loaded the shipped parts and checked them (a batch through every part; the teacher read back);
    # stage 1 wrote its encoder, metrics, plots, starting from the shipped Florence-2
    assert json.loads((d / "models/pretrained/VERIFIED.json").read_text())["t2i"] == "pretrained/shapes-world/t2i"
    assert (d / "models/stage1/vlv_encoder.json").is_file()
    assert json.loads((d / "models/stage1/vlv_encoder.json").read_text())["vision_source"] == "pretrained/shapes-world/vision"
    pre = json.loads((d / "metrics/pretrain.json").read_text())
    assert pre["teacher_prompts"] == 4 and 0 <= pre["teacher_reader_mean"] <= 1 and 0 <= pre["teacher_classifier_colour"] <= 1
    assert "reads" not in pre, "nothing trained"
    assert {p for rec in pre["shipped"].values() for p in rec["parts"]} == {"t2i", "llm", "vision", "classifier"}
    assert pre["shipped"]["shapes-world/vision"]["reads"]["vision"] == {"split": "web", "images": 40000, "captions": 0, "boxes": 40000}
    s1 = json.loads((d / "metrics/stage1.json").read_text())
    assert {"loss_vlv", "loss_uncond", "loss_caption", "loss_shuffled", "distillation_gap"} <= set(s1)
    assert (d / "plots/stage1/reconstructions.png").stat().st_size > 1000
    assert not (d / "checkpoints/stage1").exists(), "checkpoints are cleared once the stage is done"

    # the caption budget: each part's record says what it read (tests/test_budget.py checks the code paths)
    assert s1["reads"] == {"stage1": {"split": "images", "images": 180, "captions": 0, "boxes": 0},
                           "eval": {"split": "val", "images": 8, "captions": 8, "boxes": 0}}
    s2 = json.loads((d / "metrics/stage2.json").read_text())
    assert s2["reads"]["stage2"] == {"split": "pairs", "images": 60, "captions": 60, "boxes": 0} and s2["reads"]["eval"]["split"] == "val"
    assert json.loads((d / "metrics/evaluate.json").read_text())["reads"] == {"eval": {"split": "test", "images": 10, "captions": 10, "boxes": 0}}
    params_of = {r["tags"]["vlv.stage"]: r["id"] for r in runs(d)}
    with sqlite3.connect(d / "mlruns" / "mlflow.db") as con:
        logged = dict(con.execute("select key, value from params where run_uuid=? and key like 'reads.%'", (params_of["stage1"],)).fetchall())
    assert logged["reads.stage1.split"] == "images" and logged["reads.stage1.captions"] == "0"

    # stage 2 wrote a captioner folder; evaluate scored it with every metric family
    assert (d / "models/captioner/captioner.json").is_file() and (d / "pretrained/shapes-world/classifier/heads.safetensors").is_file()
    ev = json.loads((d / "metrics/evaluate.json").read_text())
    assert {"bleu_1", "bleu_4", "rouge_l", "cider", "meteor"} <= set(ev["caption"])
    assert {"mean", "exact", "colour", "background"} <= set(ev["attributes"])
    assert {"regen_generated_frechet", "regen_reference_frechet", "regen_reference_attribute_accuracy",
            "classifier_accuracy_originals"} <= set(ev["regeneration"])
    table = pd.read_csv(d / "metrics/test_captions.csv")
    assert len(table) == 10 and {"id", "reference", "prediction", "mean", "colour"} <= set(table.columns)
    assert (d / "plots/evaluate/worst.png").stat().st_size > 1000
    assert by_stage["evaluate"]["metrics"]["evaluate/caption.bleu_4"] == pytest.approx(ev["caption"]["bleu_4"])

    # every stage logged its cost; the report's totals are the sum of those MLflow metrics
    stage_runs = [r for name, r in by_stage.items() if name != "cost_report"]
    assert all(r["tags"]["vlv.device_kind"] == "cpu" and r["metrics"]["cost/usd"] > 0 for r in stage_runs)
    report = json.loads((d / "metrics/cost.json").read_text())
    assert report["total_usd"] == pytest.approx(sum(r["metrics"]["cost/usd"] for r in stage_runs))
    assert report["device_hours"] == pytest.approx(sum(r["metrics"]["cost/device_hours"] for r in stage_runs))
    assert report["this_pipeline_usd"] == pytest.approx(report["total_usd"]) and report["budget_usd"] == 1000
    assert by_stage["cost_report"]["metrics"]["report/total_usd"] == pytest.approx(report["total_usd"])
    text = (d / "reports/cost.md").read_text()
    assert "| stage1 | this pipeline |" in text and "No throughput record of the paper architecture" in text
    assert "## Pretraining (shipped)" in text and "| shapes-world/vision | vision | cpu |" in text
    assert report["shipped_pretraining"]["shapes-world/vision"]["usd"] > 0
    assert (d / "plots/cost_report/usd_per_stage.png").stat().st_size > 1000

    # every stage wrote every out, metric and plot dvc.yaml declares
    missing = [f"{name}: {path}" for name, stage in dvc_stages.stages(d).items() for path in dvc_stages.written(stage)
               if not (d / path).exists()]
    assert not missing, missing

    # nothing changed -> nothing re-runs (the components stage always runs; its fingerprints are the same)
    r = sh([sys.executable, "-m", "dvc", "repro"], d, env)
    assert len(runs(d)) == 6
    assert "didn't change" in r.stdout or "is cached" in r.stdout or "up to date" in r.stdout


def sweep_worker(d, env, study, n, *extra):
    return subprocess.Popen([sys.executable, "-m", "vlv.cli", "sweep", "--study", study, "--n-trials", str(n), *extra],
                            cwd=d, env={**env, "PYTHONPATH": "src"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_sweep_workers_share_one_study_and_log_one_parent_run(project):
    """`vlv sweep` in two processes on one sqlite storage: 4 trials (2 each), none lost or
    duplicated, within 2 minutes; one MLflow parent run, one costed child run per trial."""
    import time

    import optuna

    d, env = project
    t0 = time.time()
    workers = [sweep_worker(d, env, "two", 2) for _ in range(2)]
    outs = [w.communicate(timeout=300)[0] for w in workers]
    elapsed = time.time() - t0
    assert all(w.returncode == 0 for w in workers), "\n".join(o[-2000:] for o in outs)
    assert elapsed < 120, f"a 4-trial shrunk sweep took {elapsed:.0f} s"
    study = optuna.load_study(study_name="two", storage=f"sqlite:///{d / 'mlruns/optuna.db'}")
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4, "the workers sampled different values"
    sweep_runs = [r for r in runs(d) if r["tags"].get("vlv.sweep_study") == "two"]
    parents = [r for r in sweep_runs if r["tags"]["vlv.sweep_role"] == "parent"]
    children = [r for r in sweep_runs if r["tags"]["vlv.sweep_role"] == "trial"]
    assert len(parents) == 1 and len(children) == 4
    assert {c["tags"]["mlflow.parentRunId"] for c in children} == {parents[0]["id"]}
    assert sorted(c["tags"]["vlv.trial_number"] for c in children) == ["0", "1", "2", "3"]
    for c in children:
        assert c["metrics"]["cost/usd"] > 0 and c["tags"]["vlv.trial_state"] in ("complete", "pruned")
        assert c["status"] == {"complete": "FINISHED", "pruned": "KILLED"}[c["tags"]["vlv.trial_state"]]
    best = yaml.safe_load((d / "reports/sweep/two/best.yaml").read_text())
    assert best["trials"]["complete"] + best["trials"]["pruned"] == 4
    assert best["command"].startswith("dvc exp run -n sweep-two-best -S stage1.num_queries=")
    assert (d / "reports/sweep/two/history.png").stat().st_size > 0
    assert not list((d / "checkpoints/sweep/two").glob("*/*/step-*")), "finished trials leave no checkpoints"


@pytest.mark.slow  # ~40 s: a worker killed mid-trial, then the heartbeat grace period
def test_a_trial_of_a_killed_sweep_worker_is_marked_failed_and_retried(reproduced):
    import signal
    import time

    import optuna

    d, env = reproduced
    worker = sweep_worker(d, env, "killed", 1)
    ckpts = d / "checkpoints/sweep/killed"
    deadline = time.time() + 180
    while not list(ckpts.glob("*/stage2/step-*")):  # killed in stage 2, after a checkpoint
        assert worker.poll() is None and time.time() < deadline, worker.stdout.read()[-3000:]
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    time.sleep(5)  # > the grace period (2 x sweep.heartbeat_s): the trial's heartbeat is stale
    again = sweep_worker(d, env, "killed", 1)
    out = again.communicate(timeout=300)[0]
    assert again.returncode == 0, out[-3000:]
    trials = optuna.load_study(study_name="killed", storage=f"sqlite:///{d / 'mlruns/optuna.db'}").get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].params == trials[0].params and trials[1].system_attrs["failed_trial"] == 0
    assert "stage2: resuming from" in out, "the retry resumes the dead worker's checkpoint"
    child = [r for r in runs(d) if r["tags"].get("vlv.sweep_study") == "killed" and r["tags"].get("vlv.retry_of_trial")]
    assert len(child) == 1 and child[0]["tags"]["vlv.retry_of_trial"] == "0"


@pytest.mark.slow  # ~30 s: one shrunk trial
def test_a_sweep_trial_with_stage2_init_random_runs_no_stage1(reproduced):
    """`stage2.init: random` in a sweep (the no-stage-1 ablation as a trial): the trial trains
    stage 2 from a random encoder and never runs stage 1."""
    import optuna

    d, env = reproduced
    original = (d / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["stage2"]["init"] = "random"
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        worker = sweep_worker(d, env, "random-init", 1)
        out = worker.communicate(timeout=300)[0]
    finally:
        (d / "params.yaml").write_text(original)
    assert worker.returncode == 0, out[-3000:]
    trials = optuna.load_study(study_name="random-init", storage=f"sqlite:///{d / 'mlruns/optuna.db'}").get_trials()
    assert len(trials) == 1 and trials[0].state.name in ("COMPLETE", "PRUNED"), out[-3000:]
    child = [r for r in runs(d) if r["tags"].get("vlv.sweep_study") == "random-init" and r["tags"]["vlv.sweep_role"] == "trial"]
    assert len(child) == 1
    keys = set(child[0]["metrics"])
    assert any(k.startswith("stage2/") for k in keys), sorted(keys)
    assert not any(k.startswith("stage1/") for k in keys), "no stage 1 in a stage2.init random trial"


@pytest.mark.slow  # ~60 s; needs a PostgreSQL database: VLV_TEST_POSTGRES_URL=postgresql://user:pw@host/db
def test_two_sweep_workers_share_one_postgresql_study(reproduced):
    """The many-node recipe of docs/OPERATIONS.md (Sweeps) on a real PostgreSQL server: two `vlv sweep`
    processes on one `--storage postgresql://...` share one study (4 trials, none lost or
    duplicated), and the password never reaches MLflow."""
    import time

    import optuna

    url = os.environ.get("VLV_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("set VLV_TEST_POSTGRES_URL=postgresql://user:pw@host/db (docs/OPERATIONS.md, Sweeps) to run it")
    pytest.importorskip("psycopg", reason="pip install -e '.[sweep]'")
    d, env = reproduced
    study = f"pg-{int(time.time())}"  # the database outlives the test: a fresh study each run
    workers = [sweep_worker(d, env, study, 2, "--storage", url) for _ in range(2)]
    outs = [w.communicate(timeout=300)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), "\n".join(o[-2000:] for o in outs)
    trials = optuna.load_study(study_name=study, storage=url).get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    parents = [r for r in runs(d) if r["tags"].get("vlv.sweep_study") == study and r["tags"]["vlv.sweep_role"] == "parent"]
    assert len(parents) == 1 and parents[0]["tags"]["vlv.sweep_storage"].startswith("postgresql://")
    password = url.rsplit("@", 1)[0].split(":")[-1]
    assert password not in parents[0]["tags"]["vlv.sweep_storage"] and password not in "".join(outs)


@pytest.mark.slow  # ~25 s; needs the `sweep` extra (pip install -e '.[sweep]')
def test_optuna_dashboard_serves_the_sweep_storage(reproduced):
    """docs/OPERATIONS.md: `optuna-dashboard sqlite:///mlruns/optuna.db` shows the studies `vlv sweep` wrote."""
    import socket
    import time
    import urllib.request

    pytest.importorskip("optuna_dashboard", reason="pip install -e '.[sweep]'")
    d, env = reproduced
    if not (d / "mlruns/optuna.db").is_file():
        out = sweep_worker(d, env, "dash", 1).communicate(timeout=300)[0]
        assert (d / "mlruns/optuna.db").is_file(), out[-2000:]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = Path(sys.executable).parent / "optuna-dashboard"
    server = subprocess.Popen([str(exe), "sqlite:///mlruns/optuna.db", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=d, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, body = time.time() + 60, None
        while body is None:
            assert server.poll() is None and time.time() < deadline, server.stdout.read()[-2000:]
            try:
                body = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5).read())
            except OSError:
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=30)
    import optuna

    names = {s["study_name"] for s in body["study_summaries"]}
    assert names and names == {s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{d / 'mlruns/optuna.db'}")}


@pytest.mark.slow  # 33-61 s; the loop's own kill -9 + resume (test_train) stays in the fast suite
def test_kill_9_in_the_middle_of_stage1_then_dvc_repro_finishes_with_the_same_loss(reproduced):
    import psutil
    import signal
    import time

    d, env = reproduced
    straight = json.loads((d / "metrics/stage1.json").read_text())["final_train_loss"]
    # A param change that leaves the training itself alone: DVC must run stage1 again (its run
    # cache would otherwise restore the earlier result instead of exercising the resume).
    params = yaml.safe_load((d / "params.yaml").read_text())
    params["stage1"]["log_every"] = 5
    params["evaluate"]["meteor"] = False  # the re-run evaluate skips METEOR's ~13 s JVM (test_dvc_repro ran it)
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=d, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpt = d / "checkpoints" / "stage1"
    deadline = time.time() + 300
    while time.time() < deadline and not any(p.name >= "step-00000008" for p in ckpt.glob("step-*")):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    stage_procs = [p for p in psutil.Process(proc.pid).children(recursive=True) if "pipelines/stage1.py" in " ".join(p.cmdline())]
    assert stage_procs, "the stage1 process should be running"
    for p in stage_procs:
        p.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert not (d / "models/stage1/vlv_encoder.json").exists() and list(ckpt.glob("step-*"))

    r = sh([sys.executable, "-m", "dvc", "repro"], d, env)
    assert "stage1: resuming from" in r.stdout
    s1 = json.loads((d / "metrics/stage1.json").read_text())
    resumed = s1["final_train_loss"]
    assert s1["cost"]["carried_device_hours"] > 0, "the killed run's device-hours are carried by the checkpoint"
    report = json.loads((d / "metrics/cost.json").read_text())  # stage1 re-ran; the rest came from the cache
    assert report["stages"]["stage1"]["cached"] == 0 and report["stages"]["prepare"]["cached"] == 1
    # Same data, noise, timesteps and optimizer state; the last digits of float32 conv/attention
    # kernels on CPU may differ between processes, hence a tolerance (measured: ~1e-5 relative).
    assert resumed == pytest.approx(straight, rel=1e-4)


def test_vlv_reconstruct_writes_side_by_side_images(project, tmp_path):
    from PIL import Image

    from vlv import world

    d, env = project
    images = tmp_path / "mine"
    (images / "sub").mkdir(parents=True)
    Image.fromarray(world.scene_at(1, 0, 32).render()).save(images / "a.png")
    Image.fromarray(world.scene_at(1, 1, 64).render()).convert("L").save(images / "sub" / "b.jpg")
    (images / "broken.png").write_bytes(b"not a png")
    r = subprocess.run([sys.executable, "-m", "vlv.cli", "reconstruct", str(images), "--out", str(tmp_path / "out"), "--steps", "2"],
                       cwd=d, env={**env, "PYTHONPATH": str(d / "src")}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "skipped" in r.stderr and "broken.png" in r.stderr and "Traceback" not in r.stderr
    outs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert outs == ["a_recon.png", "sub__b_recon.png"]
    assert Image.open(tmp_path / "out" / "a_recon.png").size == (64, 32)  # input | reconstruction


def test_verify_mode_runs_one_batch_through_the_embedded_parts_and_names_a_bad_one(reproduced, tmp_path):
    """pretrain.mode verify (the paper profile's first minute) on the embedded folders: the stage
    models build, both losses back-propagate, the T2I paints, from the built-in batch (no data);
    a broken folder is one line."""
    from vlv import config, verify
    from vlv.errors import VLVError

    d, env = reproduced
    parts = {k: str(d / "pretrained/shapes-world" / k) for k in ("t2i", "vision", "llm")}
    params = config.validate({"pretrain": {"mode": "verify", "eval": {"prompts": 2, "steps": 2}}, "components": parts})
    batch = verify.builtin_batch(params.prepare.image_size)
    report = verify.verify_folders(params, batch, tmp_path / "out", tmp_path / "plots")
    assert set(report["verify_losses"]) == {"stage1_denoising", "stage2_caption"} and all(v > 0 for v in report["verify_losses"].values())
    assert report["verify_batch"] == "built-in" and report["verify_seconds"] > 0
    assert (tmp_path / "plots/teacher_samples.png").stat().st_size > 1000 and (tmp_path / "out/VERIFIED.json").is_file()
    prepared = verify.prepared_batch(d / "data/prepared")  # what pretrain (verify mode) runs after prepare
    assert prepared.pixel_values.shape == batch.pixel_values.shape and len(prepared.captions) == 2
    shutil.copytree(parts["llm"], tmp_path / "llm")
    cfg = json.loads((tmp_path / "llm/config.json").read_text())
    cfg["hidden_size"] *= 2  # a config that its weights do not fit
    (tmp_path / "llm/config.json").write_text(json.dumps(cfg))
    bad = config.validate({"pretrain": {"mode": "verify"}, "components": {**parts, "llm": str(tmp_path / "llm")}})
    with pytest.raises(VLVError) as info:
        verify.verify_folders(bad, batch)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("verify stage 2") and f"components.llm={tmp_path / 'llm'}" in msg


def test_the_registered_captioner_serves_through_mlflow_pyfunc(project):
    import base64

    import mlflow
    from PIL import Image

    from vlv import world

    d, env = project
    png = d / "one.png"
    Image.fromarray(world.scene_at(2, 0, 32).render()).save(png)
    mlflow.set_tracking_uri(f"sqlite:///{d / 'mlruns' / 'mlflow.db'}")
    try:
        model = mlflow.pyfunc.load_model("models:/vlv-captioner/latest")
        out = model.predict(pd.DataFrame({"image": [base64.b64encode(png.read_bytes()).decode()]}))
    finally:
        mlflow.set_tracking_uri(None)
    assert isinstance(out["caption"][0], str) and pd.isna(out["error"][0])


@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None, reason="accelerate CLI not installed")
@pytest.mark.slow  # ~30 s; the loop's 2-process run (test_train) and RANK=1 stage_run (test_tracking) stay in the fast suite
def test_stage1_under_accelerate_launch_two_processes_logs_and_writes_once(reproduced):
    """The stage script itself (not only the loop) under `accelerate launch --num_processes 2`
    on CPU: both processes train, only the main one saves, evaluates and opens an MLflow run."""
    d, env = reproduced
    before = runs(d)
    metrics = d / "metrics/stage1.json"
    old = json.loads(metrics.read_text())
    accel = str(Path(sys.executable).parent / "accelerate")
    r = subprocess.run([accel, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                        "--dynamo_backend", "no", "--main_process_port", "29547", "pipelines/stage1.py"],
                       cwd=d, env={**env, "PYTHONPATH": "src"}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    new = runs(d)[len(before):]
    assert [x["tags"]["vlv.stage"] for x in new] == ["stage1"], "exactly one MLflow run, from the main process"
    assert new[0]["status"] == "FINISHED" and new[0]["metrics"]["cost/usd"] > 0
    s1 = json.loads(metrics.read_text())
    assert s1["steps"] == old["steps"] and s1["samples"] == s1["steps"] * 8, "same steps at the global batch (8)"
    assert r.stdout.count("stage1: val loss vlv") == 1, "one process evaluates"
    assert (d / "models/stage1/vlv_encoder.json").is_file() and not (d / "checkpoints/stage1").exists()


def test_dvc_exp_run_with_a_set_param(project):
    d, env = project
    sh(["git", "add", "-A"], d, env)
    sh(["git", "commit", "-qm", "lock"], d, env)
    sh([sys.executable, "-m", "dvc", "exp", "run", "-n", "small", "-S", "prepare.num_images=200", "prepare"], d, env)
    last = runs(d)[-1]
    assert last["tags"]["vlv.dvc_exp"] == "small"
    assert last["metrics"]["prepare/accepted"] == 200
    assert len(pd.read_parquet(d / "data/prepared/manifest.parquet")) == 200
    show = sh([sys.executable, "-m", "dvc", "exp", "show", "--json"], d, env).stdout
    assert '"small"' in show


def test_pretrain_train_mode_trains_the_parts_that_name_models_pretrained(tmp_path):
    """profiles/pretrain.yaml's path, shrunk: every part trains on the web split and is saved as a
    standard folder; the vision encoder reads images + boxes and no caption; the record says so."""
    d, env = copy_project(tmp_path, shrink_train)
    env = {**env, "PYTHONPATH": str(d / "src")}
    for name in ("prepare", "pretrain"):
        sh([sys.executable, f"pipelines/{name}.py"], d, env)
    assert (d / "models/pretrained/t2i/model_index.json").is_file() and (d / "models/pretrained/llm/config.json").is_file()
    assert (d / "models/pretrained/vision/processor_config.json").is_file() and (d / "models/pretrained/classifier/heads.safetensors").is_file()
    trained = json.loads((d / "models/pretrained/TRAINED.json").read_text())
    assert trained == {"trained": ["t2i", "llm", "vision", "classifier"], "loaded": {}}
    pre = json.loads((d / "metrics/pretrain.json").read_text())
    web = {"split": "web", "images": 120, "captions": 120, "boxes": 0}
    assert pre["reads"] == {"vae": {**web, "captions": 0}, "clip": web, "teacher": web, "llm": {**web, "images": 0},
                            "classifier": web, "vision": {"split": "web", "images": 120, "captions": 0, "boxes": 120}}
    assert pre["vision_val_images"] == 4 and 0 <= pre["vision_od_cell"] <= 1 and 0 <= pre["vision_probe_shape"] <= 1
    assert pre["teacher_prompts"] == 4 and set(pre["seconds"]) == {"vae", "clip", "teacher", "llm", "vision", "classifier"}
    assert "shipped" not in pre and (d / "plots/pretrain/losses.png").stat().st_size > 1000
    assert 0 <= pre["clip_val_retrieval"] <= 1  # the contrastive text encoder (clip.steps 3 here) is scored on val
