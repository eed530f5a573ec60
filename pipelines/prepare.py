"""DVC stage `prepare`: params.prepare -> data/prepared (shards, manifest, rejected.csv)."""

from pathlib import Path

from vlv import config, cost, data, tracking
from vlv.entry import stage

OUT = Path("data/prepared")
METRICS = Path("metrics/prepare.json")
SAMPLES = Path("plots/prepare/samples.png")


@stage("prepare", main_only=True)
def main(params: config.Params) -> None:
    """Ingest the source named by params.prepare into validated shards and a manifest."""
    with tracking.stage_run("prepare", params):
        summary = data.prepare(params, OUT)
        cost.add_samples(summary.accepted + sum(summary.rejected.values()))
        print(summary.line(OUT))
        data.sample_grid(OUT, SAMPLES, split="pairs" if summary.splits.get("pairs") else "images")
        tracking.record("prepare", summary.metrics(), METRICS, [OUT / "rejected.csv", OUT / "summary.json", SAMPLES])


if __name__ == "__main__":
    main()
