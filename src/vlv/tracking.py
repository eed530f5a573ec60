"""MLflow setup shared by every stage: one store, one experiment, tagged runs.

Store: ``sqlite:///<root>/mlruns/mlflow.db`` with artifacts under ``<root>/mlruns/artifacts``,
both absolute. ``<root>`` is ``$DVC_ROOT`` when DVC runs the stage (for a queued
``dvc exp run`` that is the main repo, not the temporary copy), else the project root.
``MLFLOW_TRACKING_URI`` overrides the store (e.g. a tracking server).

Each stage run is tagged with ``vlv.stage``, ``vlv.pipeline_id`` (shared by all stages of
one ``dvc repro`` / ``dvc exp run``), ``vlv.git_commit`` (+ ``vlv.git_dirty``) and
``vlv.dvc_exp`` when DVC names an experiment.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

from .config import Params, dump, flatten
from .errors import VLVError

_pipeline_id: str | None = None


def root_dir() -> Path:
    """The project whose mlruns/ holds the store."""
    env = os.environ.get("DVC_ROOT")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "dvc.yaml").is_file() or (d / ".dvc").is_dir():
            return d
    return here


def store_paths() -> tuple[str, str | None]:
    """(tracking URI, artifact root or None when the URI is the user's)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri, None
    mlruns = root_dir() / "mlruns"
    return f"sqlite:///{mlruns / 'mlflow.db'}", (mlruns / "artifacts").as_uri()


def ui_command(host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    uri, artifacts = store_paths()
    cmd = ["mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    if artifacts:
        cmd += ["--default-artifact-root", artifacts]
    return cmd


def setup(experiment: str) -> str:
    """Point MLflow at the store and return the experiment id, creating both once.

    A fresh sqlite store is created under an exclusive file lock, so two stages (or two
    sweep workers) that start together do not race on the schema migration.
    """
    import mlflow

    uri, artifacts = store_paths()
    mlflow.set_tracking_uri(uri)
    try:
        with store_lock(uri):
            client = mlflow.MlflowClient()
            exp = client.get_experiment_by_name(experiment)
            if exp is not None:
                exp_id = exp.experiment_id
            else:
                exp_id = client.create_experiment(experiment, artifact_location=f"{artifacts}/{experiment}" if artifacts else None)
    except Exception as err:  # mlflow raises many types for an unreachable/broken store
        raise VLVError(f"MLflow store {uri}: {type(err).__name__}: {str(err).splitlines()[0]}; check MLFLOW_TRACKING_URI or mlruns/") from None
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def store_lock(uri: str):
    """An exclusive lock beside a sqlite store (creating or changing it from several processes);
    a no-op context for any other URI (a server serialises its own writes)."""
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    return _file_lock(db.with_name(f".{db.stem}.lock"))


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# -------------------------------------------------------------------------------- tags
def git(*args: str, cwd: Path, check: bool = False) -> str:
    """A read-only git command's stdout. GIT_OPTIONAL_LOCKS=0: `git status` does not refresh
    and rewrite .git/index, so a stage never writes the repository (or races a user's git)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=check).stdout.strip()


def git_commit(cwd: Path | None = None) -> tuple[str, bool]:
    cwd = cwd or Path.cwd()
    try:
        sha = git("rev-parse", "HEAD", cwd=cwd, check=True)
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", cwd=cwd))
        return sha, dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


def pipeline_id() -> str:
    """An id shared by every stage of one pipeline run.

    ``$VLV_PIPELINE_ID`` when set (sweeps and scripts set it). Otherwise the nearest
    ``dvc`` ancestor process (pid + start time): every stage of one ``dvc repro`` or
    ``dvc exp run`` is a child of the same dvc process. A stage run by hand gets a fresh id.
    """
    global _pipeline_id
    if _pipeline_id:
        return _pipeline_id
    env = os.environ.get("VLV_PIPELINE_ID")
    if env:
        _pipeline_id = env
        return env
    import psutil

    proc = psutil.Process()
    try:
        for parent in proc.parents():
            cmd = parent.cmdline()
            if any(Path(a).name == "dvc" or a == "dvc" for a in cmd[:3]) or cmd[1:3] == ["-m", "dvc"]:
                _pipeline_id = hashlib.sha1(f"{parent.pid}-{parent.create_time()}".encode()).hexdigest()[:12]
                return _pipeline_id
    except (psutil.Error, IndexError):
        pass
    _pipeline_id = uuid.uuid4().hex[:12]
    return _pipeline_id


def run_tags(stage: str) -> dict[str, str]:
    sha, dirty = git_commit()
    tags = {
        "vlv.stage": stage,
        "vlv.pipeline_id": pipeline_id(),
        "vlv.git_commit": sha,
        "vlv.git_dirty": str(dirty).lower(),
        "mlflow.source.git.commit": sha,
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["vlv.dvc_exp"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_STAGE"):
        tags["vlv.dvc_stage"] = os.environ["DVC_STAGE"]
    return tags


def is_main() -> bool:
    """True in the main process of ``accelerate launch`` / torchrun (RANK 0), and when not launched."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def stage_run(stage: str, params: Params) -> Iterator["object"]:
    """An MLflow run for one stage: tags, every param (dotted), system metrics, and the
    stage's cost meter (vlv.cost.active() inside), logged as cost/* when the stage ends.

    Under ``accelerate launch`` only the main process opens the run and logs; the others
    yield None and keep a meter for the training loop's budget guard, whose verdict the
    main process decides for all."""
    import mlflow

    from . import cost

    c = params.cost
    kind, devices = cost.device(processes=int(os.environ.get("WORLD_SIZE", "1")))
    price = cost.price_for(kind, c.prices_usd_per_hour)  # no price: one line, before any compute
    if not is_main():
        cost.activate(cost.Meter(stage, kind, devices, price, budget=c.budget_usd, on_over=c.on_over_budget,
                                 guard_every=c.guard_every))
        try:
            yield None
        finally:
            cost.activate(None)
        return
    exp_id = setup(params.tracking.experiment)
    if params.tracking.system_metrics:
        mlflow.set_system_metrics_sampling_interval(params.tracking.system_metrics_interval_s)
    run_name = f"{stage}-{pipeline_id()}"
    tags = {**run_tags(stage), "vlv.device_kind": kind, "vlv.device_count": str(devices)}
    with mlflow.start_run(run_name=run_name, tags=tags, log_system_metrics=params.tracking.system_metrics) as run:
        flat = flatten(dump(params))
        items = list(flat.items())
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            mlflow.log_params({k: str(v) for k, v in items[i : i + 100]})
        meter = cost.Meter(stage, kind, devices, price, budget=c.budget_usd, on_over=c.on_over_budget,
                           guard_every=c.guard_every, spent_elsewhere=pipeline_spent_usd(exp_id, run.info.run_id))
        cost.activate(meter)
        try:
            line = meter.check(stage)  # covers stages without a training loop too
            if line and cost.over_budget_action(meter, line):
                raise VLVError(f"{line}; nothing run. Raise cost.budget_usd to go on")
            yield run
        finally:
            cost.activate(None)
            if not meter.logged:  # a stage that failed before record(): its spend still counts
                log_cost(meter.snapshot())
            if meter.guard_events:
                mlflow.set_tag("vlv.budget_guard", meter.guard_events[-1][:5000])


def log_cost(snapshot: dict) -> None:
    import mlflow

    mlflow.log_metrics({f"cost/{k}": float(v) for k, v in snapshot.items() if isinstance(v, (int, float))})


def pipeline_spent_usd(experiment_id: str, exclude_run_id: str | None = None, pid: str | None = None) -> float:
    """USD logged (cost/usd) by the stage runs of one pipeline, all states, but one run."""
    return sum(r["cost"]["usd"] for r in pipeline_runs(experiment_id, pid) if r["run_id"] != exclude_run_id)


def pipeline_runs(experiment_id: str, pid: str | None = None) -> list[dict]:
    """The stage runs of a pipeline (default: this one), oldest first, with their cost/* metrics."""
    import mlflow

    pid = pid or pipeline_id()
    runs = mlflow.MlflowClient().search_runs([experiment_id], filter_string=f"tags.`vlv.pipeline_id` = '{pid}'",
                                             order_by=["attributes.start_time ASC"], max_results=1000)
    out = []
    for r in runs:
        stage = r.data.tags.get("vlv.stage")
        if stage is None or stage == "cost_report":
            continue
        metrics = {k.removeprefix("cost/"): v for k, v in r.data.metrics.items() if k.startswith("cost/")}
        metrics.setdefault("usd", 0.0)
        out.append({"run_id": r.info.run_id, "stage": stage, "status": r.info.status,
                    "device_kind": r.data.tags.get("vlv.device_kind", "?"), "cost": metrics})
    return out


def metric_name(key: str) -> str:
    """``key`` with every character MLflow refuses in a metric name as "_" (MLflow allows letters,
    digits, "_", "-", ".", " ", ":" and "/"): a converted image mode "I;16" is logged as "I_16"."""
    return re.sub(r"[^/\w.\- :]", "_", key)


def metric_logger(prefix: str):
    """A ``log(step, metrics)`` callback for vlv.train that writes ``prefix/name`` to the active run."""
    import mlflow

    def log(step: int, metrics: dict[str, float]) -> None:
        mlflow.log_metrics({metric_name(f"{prefix}/{k}"): float(v) for k, v in metrics.items()}, step=step)

    return log


def record(stage: str, metrics: dict, metrics_path: str | Path, artifacts=(), prefix: str | None = None) -> None:
    """Write a stage's metrics JSON (for `dvc metrics`) and log the numeric ones (dotted,
    under ``prefix``) plus ``artifacts`` (files) to the active MLflow run. ``metrics["reads"]``
    (part -> data.reads: what each part read of which split) goes to MLflow as params
    ``reads.<part>.<split|images|captions>``, not as metrics."""
    import json

    import mlflow

    from . import cost

    meter = cost.active()
    if meter is not None:  # the stage's spend so far: in its metrics JSON and as cost/* in MLflow
        snapshot = meter.snapshot()
        metrics = {**metrics, "cost": snapshot}
        log_cost(snapshot)
        meter.logged = True
    path = Path(metrics_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    if "reads" in metrics:
        mlflow.log_params({k: str(v) for k, v in flatten({"reads": metrics["reads"]}).items()})
    flat = flatten(metrics)
    prefix = prefix or stage
    mlflow.log_metrics({metric_name(f"{prefix}/{k}"): float(v) for k, v in flat.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith(("cost.", "reads."))})
    for f in artifacts:
        mlflow.log_artifact(str(f), stage)
