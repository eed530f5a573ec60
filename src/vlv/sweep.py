"""Optuna sweeps over any params (`vlv sweep`), on one machine or many.

Each trial takes its values from ``sweep.space`` (params.yaml), sets them and the reduced
``sweep.budget`` on the params, and runs stage 1 and stage 2 in this process through the stage
runner the DVC stages use (``runner.stage1``, ``runner.stage2``: the same build, data, loop and
checkpoint fingerprint) on the prepared data and pretrained parts of this project. During
stage 2 it reports the val attribute accuracy every ``sweep.report_every`` steps, so the pruner
(median or Hyperband) can stop a trailing trial; the final value is the objective
(``accuracy`` on ``sweep.val_images`` val images, or ``stage1_loss``: stage 1's
VLV-conditioned val loss, without stage 2).

Storage is an Optuna RDB: a sqlite file under mlruns/ by default, PostgreSQL for many nodes.
Every worker started on the same storage and study name joins the same study. A worker that
dies mid-trial stops its heartbeat; another worker then marks that trial failed and retries
its params (RetryHeartbeatStaleTrialCallback: Optuna 5's name for RetryFailedTrialCallback).
A trial's checkpoints are named by its values, so the retry resumes where the dead worker
stopped.

MLflow: one parent run per study (tags ``vlv.sweep_study``, ``vlv.sweep_role=parent``) and one
child run per trial (tag ``mlflow.parentRunId``) with the trial's params, intermediate values,
final value, state (complete / pruned / failed, also as the run status) and cost.

Outputs, in ``reports/sweep/<study>/``: ``best.yaml`` (best value and params, and the
``dvc exp run -S ...`` command that runs them as a full pipeline), ``history.png`` and
``importances.png``.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from . import config, cost, data, tracking, world
from .errors import VLVError

DATA = Path("data/prepared")
CKPT_ROOT = Path("checkpoints/sweep")
OUT_ROOT = Path("reports/sweep")


# ----------------------------------------------------------------------------- the study
def storage_url(params: config.Params, override: str | None = None) -> str:
    url = override or params.sweep.storage
    if url:
        return url
    db = tracking.root_dir() / "mlruns" / "optuna.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def _public(url: str) -> str:
    """The storage URL without a password (for logs and MLflow)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def open_study(params: config.Params, study_name: str, url: str):
    """Create or join ``study_name`` on ``url`` with the sampler, pruner, heartbeat and retry of params."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    s = params.sweep
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    try:
        with tracking.store_lock(url):  # a fresh sqlite store is not safe to create from two processes at once
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5; they are what we need
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = RDBStorage(url, engine_kwargs=engine, heartbeat_interval=s.heartbeat_s, grace_period=2 * s.heartbeat_s,
                                     heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=s.retries))
            # distinct streams per worker: two workers started together must not propose the same values
            sampler_seed = (params.seed * 1_000_003 + os.getpid()) % 2**31
            sampler = (optuna.samplers.RandomSampler(seed=sampler_seed) if s.sampler == "random"
                       else optuna.samplers.TPESampler(seed=sampler_seed))
            budget2 = int(s.budget.get("stage2.steps", params.stage2.steps))
            pruner = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
                      "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=s.report_every, max_resource=budget2),
                      "none": optuna.pruners.NopPruner}[s.pruner]()
            direction = "maximize" if s.objective == "accuracy" else "minimize"
            study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner,
                                        direction=direction, load_if_exists=True)
    except Exception as err:  # sqlalchemy/optuna raise many types for a bad URL or an unreachable server
        hint = ("install the database driver: pip install -e '.[sweep]' (psycopg 3 for postgresql://)"
                if isinstance(err, ImportError) else "check --storage / sweep.storage")
        raise VLVError(f"sweep storage {_public(url)}: {type(err).__name__}: {str(err).splitlines()[0]}; {hint}") from None
    if study.direction.name.lower() != direction:
        raise VLVError(f"study {study_name!r} on {_public(url)} was made to {study.direction.name.lower()}, "
                       f"but sweep.objective {s.objective} needs {direction}; use another --study name")
    return study


def suggest(trial, space: dict[str, config.SearchDim]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, dim in space.items():
        if dim.choices is not None:
            values[key] = trial.suggest_categorical(key, dim.choices)
        elif dim.integer:
            values[key] = trial.suggest_int(key, int(dim.low), int(dim.high), log=dim.log)
        else:
            values[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.log)
    return values


# ----------------------------------------------------------------------------- MLflow
def parent_run(experiment_id: str, study_name: str, params: config.Params, url: str) -> str:
    """The study's parent run id: found by its tags, or created once (under the store's lock)."""
    import mlflow

    client = mlflow.MlflowClient()
    with tracking.store_lock(tracking.store_paths()[0]):
        found = client.search_runs([experiment_id], max_results=1, filter_string=(
            f"tags.`vlv.sweep_study` = '{study_name}' and tags.`vlv.sweep_role` = 'parent'"))
        if found:
            return found[0].info.run_id
        run = client.create_run(experiment_id, run_name=f"sweep-{study_name}", tags={
            **tracking.run_tags("sweep"), "vlv.sweep_study": study_name, "vlv.sweep_role": "parent",
            "vlv.sweep_storage": _public(url)})
        s = params.sweep
        for k, v in {"objective": s.objective, "sampler": s.sampler, "pruner": s.pruner, "report_every": s.report_every,
                     "val_images": s.val_images, **{f"budget.{k}": v for k, v in s.budget.items()},
                     **{f"space.{k}": dim.model_dump(exclude_defaults=True) for k, dim in s.space.items()}}.items():
            client.log_param(run.info.run_id, k, str(v))
        client.set_terminated(run.info.run_id)  # children attach by tag; each worker logs its summary here
        return run.info.run_id


def retry_of(trial) -> int | None:
    """The number of the failed trial this one retries (RetryHeartbeatStaleTrialCallback), or None."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    for frozen in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if frozen.number == trial.number:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    return None


def study_spent_usd(experiment_id: str, study_name: str) -> float:
    """USD logged (cost/usd) by the trial runs of a study so far, every worker, every state."""
    import mlflow

    runs = mlflow.MlflowClient().search_runs([experiment_id], max_results=5000, filter_string=(
        f"tags.`vlv.sweep_study` = '{study_name}' and tags.`vlv.sweep_role` = 'trial'"))
    return sum(r.data.metrics.get("cost/usd", 0.0) for r in runs)


# ----------------------------------------------------------------------------- one trial
def _val(params: config.Params, n: int):
    val = data.ShardDataset(DATA, "val", captions=True, limit=n)
    if not len(val):
        raise VLVError("the val split is empty; a sweep scores trials on it: raise prepare.splits.val")
    x = val.pixel_values()
    return val, x, val.rows["caption"].tolist()


def val_accuracy(model, x, refs: list[str], p: config.Params) -> float:
    from .captioner import caption_batches

    predicted = caption_batches(model, x, p.stage2.num_beams, p.stage2.max_new_tokens, desc="sweep val")
    return float(world.score(predicted, refs)["mean"])


def train_trial(trial, p: config.Params, work: Path, val_set) -> float:
    """Stage 1 then (objective ``accuracy``) stage 2 on ``p`` through the stage runner; the
    objective value. ``val_set``: (dataset, stacked pixels, captions) of the val images, read
    once per worker."""
    import mlflow

    from . import autoencoder, runner
    from .train import clear_checkpoints

    s = p.sweep
    val, x, refs = val_set
    if s.objective == "accuracy" and p.stage2.init == "random":  # the no-stage-1 ablation: no stage 1 to run
        return train_captioner(trial, p, None, work, x, refs)
    model, _ = runner.stage1(p, work / "stage1", log=tracking.metric_logger("stage1"))
    if s.objective == "stage1_loss":
        report = autoencoder.conditioning_report(model, val, len(val), 1, p.seed)
        mlflow.log_metrics({f"stage1/val/{k}": v for k, v in report.items() if isinstance(v, float)})
        clear_checkpoints(work / "stage1")
        return float(report["loss_vlv"])

    encoder = model.encoder
    del model  # the frozen UNet and VAE are not needed in stage 2
    value = train_captioner(trial, p, encoder, work, x, refs)
    clear_checkpoints(work / "stage1")
    return value


def train_captioner(trial, p: config.Params, encoder, work: Path, x, refs: list[str]) -> float:
    """Stage 2 of a trial (from the stage-1 ``encoder`` in memory, or None under ``stage2.init:
    random``), reporting val accuracy every ``sweep.report_every`` steps to the pruner."""
    import mlflow
    import optuna

    from . import runner
    from .train import clear_checkpoints

    s = p.sweep

    def report(cap, done: int) -> None:
        if done % s.report_every or done == p.stage2.steps:
            return
        value = val_accuracy(cap, x, refs, p)
        mlflow.log_metric("sweep/intermediate_accuracy", value, step=done)
        trial.report(value, done)
        if trial.should_prune():
            raise optuna.TrialPruned(f"val accuracy {value:.3f} at stage-2 step {done}")

    cap, _ = runner.stage2(p, work / "stage2", encoder=encoder, log=tracking.metric_logger("stage2"), on_step=report)
    value = val_accuracy(cap, x, refs, p)
    clear_checkpoints(work / "stage2")
    return value


def objective(params: config.Params, study_name: str, experiment_id: str, parent_id: str, val_set):
    """The Optuna objective: one trial as one child MLflow run, costed."""
    import mlflow
    import optuna

    from .train import fingerprint

    c = params.cost

    def run(trial) -> float:
        values = suggest(trial, params.sweep.space)
        p = config.override(params, {**params.sweep.budget, **values}, source=f"trial {trial.number}")
        work = CKPT_ROOT / study_name / fingerprint(values, params.sweep.budget)  # a retry resumes here
        kind, devices = cost.device()
        meter = cost.Meter(f"trial {trial.number}", kind, devices, cost.price_for(kind, c.prices_usd_per_hour),
                           budget=c.budget_usd, on_over=c.on_over_budget, guard_every=c.guard_every,
                           spent_elsewhere=study_spent_usd(experiment_id, study_name))  # the guard counts the whole study
        tags = {**tracking.run_tags("sweep-trial"), "mlflow.parentRunId": parent_id, "vlv.sweep_study": study_name,
                "vlv.sweep_role": "trial", "vlv.trial_number": str(trial.number)}
        retried = retry_of(trial)
        if retried is not None:
            tags["vlv.retry_of_trial"] = str(retried)
        mlflow.start_run(experiment_id=experiment_id, run_name=f"{study_name}-trial-{trial.number}", tags=tags)
        mlflow.log_params({k: str(v) for k, v in values.items()})
        cost.activate(meter)
        state, status = "failed", "FAILED"
        try:
            value = train_trial(trial, p, work, val_set)
            state, status = "complete", "FINISHED"
            mlflow.log_metric("sweep/value", value)
            print(f"sweep {study_name}: trial {trial.number} {values} -> {params.sweep.objective} {value:.4f}", flush=True)
            return value
        except optuna.TrialPruned as pruned:
            state, status = "pruned", "KILLED"
            print(f"sweep {study_name}: trial {trial.number} {values} pruned: {pruned}", flush=True)
            raise
        finally:
            cost.activate(None)
            tracking.log_cost(meter.snapshot())
            mlflow.set_tag("vlv.trial_state", state)
            mlflow.end_run(status=status)
            if state == "pruned":
                from .train import clear_checkpoints

                for part in ("stage1", "stage2"):
                    clear_checkpoints(work / part)

    return run


# ----------------------------------------------------------------------------- outputs
def best_command(study_name: str, values: dict[str, Any]) -> str:
    sets = " ".join(f"-S {k}={v!r}" if isinstance(v, float) else f"-S {k}={v}" for k, v in values.items())
    return f"dvc exp run -n sweep-{study_name}-best {sets}"


def write_outputs(study, params: config.Params, out_dir: Path) -> dict:
    """best.yaml, history.png, importances.png; the summary dict (also logged to the parent run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    out_dir.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in optuna.trial.TrialState}
    summary: dict[str, Any] = {"study": study.study_name, "objective": params.sweep.objective,
                               "direction": study.direction.name.lower(), "trials": counts}
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        summary |= {"best_value": best.value, "best_trial": best.number, "best_params": dict(best.params),
                    "budget_of_the_trials": dict(params.sweep.budget),
                    "command": best_command(study.study_name, best.params),
                    "note": "the command runs the best values as a full pipeline, at the params.yaml budget"}
    (out_dir / "best.yaml").write_text(yaml.safe_dump(summary, sort_keys=False))
    with contextlib.redirect_stderr(open(os.devnull, "w")):  # optuna's 'experimental' warnings
        if complete:
            ax = optuna.visualization.matplotlib.plot_optimization_history(study)
            ax.figure.set_size_inches(8, 5)
            ax.figure.tight_layout()
            ax.figure.savefig(out_dir / "history.png", dpi=120)
            plt.close(ax.figure)
        varied = [k for k, d in params.sweep.space.items() if len({t.params.get(k) for t in complete}) > 1]
        if len(complete) >= 2 and varied:
            ax = optuna.visualization.matplotlib.plot_param_importances(study)
            ax.figure.set_size_inches(8, 4)
            ax.figure.tight_layout()
            ax.figure.savefig(out_dir / "importances.png", dpi=120)
            plt.close(ax.figure)
        else:
            print(f"sweep {study.study_name}: parameter importances need 2 complete trials with different values; "
                  "importances.png not written")
    return summary


# ----------------------------------------------------------------------------- the command
def run_sweep(params: config.Params, study_name: str, n_trials: int, storage: str | None = None,
              objective_name: str | None = None) -> dict:
    """Run ``n_trials`` trials of ``study_name`` in this process (other workers may share the study)."""
    import mlflow
    import optuna

    if objective_name:
        params = config.override(params, {"sweep.objective": objective_name}, source="--objective")
    config.check_sweep(params)  # a bad space or budget: one line before any trial
    if n_trials < 0:
        raise VLVError(f"--n-trials must be 0 (only write the study's outputs) or more (got {n_trials})")
    if not (DATA / "manifest.parquet").is_file():
        raise VLVError(f"{DATA} has no prepared dataset; run `dvc repro pretrain` before a sweep")
    val_set = _val(params, params.sweep.val_images)  # read once: every trial scores on it
    if params.sweep.objective == "accuracy":
        refs = val_set[2]
        if not all(world.try_parse(r) is not None for r in refs):
            raise VLVError("sweep.objective accuracy scores shapes-world captions, and these val captions are not; "
                           "use --objective stage1_loss")
    url = storage_url(params, storage)
    study = open_study(params, study_name, url)
    s = params.sweep
    for key, value in {"objective": s.objective, "budget": dict(s.budget), "sampler": s.sampler, "pruner": s.pruner,
                       "space": {k: d.model_dump(exclude_defaults=True) for k, d in s.space.items()}}.items():
        study.set_user_attr(key, value)  # what the study was run with, for reports (scripts/sweep_report.py)
    exp_id = tracking.setup(params.tracking.experiment)
    parent = parent_run(exp_id, study_name, params, url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"sweep {study_name}: {n_trials} trial(s) on {_public(url)} ({params.sweep.objective}, "
          f"{params.sweep.sampler}, pruner {params.sweep.pruner}); MLflow parent run {parent}", flush=True)
    t0 = time.perf_counter()
    if n_trials:
        study.optimize(objective(params, study_name, exp_id, parent, val_set), n_trials=n_trials, catch=(VLVError,),
                       gc_after_trial=True)
    summary = write_outputs(study, params, OUT_ROOT / study_name)
    client = mlflow.MlflowClient()
    for state, n in summary["trials"].items():
        client.log_metric(parent, f"trials_{state}", n)
    if "best_value" in summary:
        client.log_metric(parent, "best_value", summary["best_value"])
    for f in sorted((OUT_ROOT / study_name).glob("*")):
        client.log_artifact(parent, str(f))
    print(f"sweep {study_name}: done in {time.perf_counter() - t0:.0f} s; trials {summary['trials']}", flush=True)
    if "best_value" in summary:
        print(f"sweep {study_name}: best {params.sweep.objective} {summary['best_value']:.4f} (trial "
              f"{summary['best_trial']}) {summary['best_params']}\n  {summary['command']}", flush=True)
    return summary
