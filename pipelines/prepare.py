"""DVC stage `prepare`: params.prepare -> data/prepared (shards, manifest, rejected.csv)."""

import json
from pathlib import Path

import mlflow

from vlv import config, data, tracking
from vlv.cli import stage

OUT = Path("data/prepared")
METRICS = Path("metrics/prepare.json")
SAMPLES = Path("plots/prepare/samples.png")


@stage("prepare")
def main(params: config.Params) -> None:
    """Ingest the source named by params.prepare into validated shards and a manifest."""
    with tracking.stage_run("prepare", params):
        summary = data.prepare(params, OUT)
        print(summary.line(OUT))
        METRICS.parent.mkdir(parents=True, exist_ok=True)
        METRICS.write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
        data.sample_grid(OUT, SAMPLES, split="pairs" if summary.splits.get("pairs") else "images")
        mlflow.log_metrics({f"prepare/{k}": float(v) for k, v in config.flatten(summary.to_dict()).items()})
        mlflow.log_artifact(str(OUT / "rejected.csv"), "prepare")
        mlflow.log_artifact(str(OUT / "summary.json"), "prepare")
        mlflow.log_artifact(str(SAMPLES), "prepare")


if __name__ == "__main__":
    main()
