"""DVC stage `cost_report` (last): what the pipeline's outputs cost, against the budget.

Reads the MLflow runs of this pipeline (tag vlv.pipeline_id); a stage DVC did not re-run
(its outputs were up to date) is taken from the cost block of its metrics JSON, which the
run that made those outputs wrote. Writes reports/cost.md (a table per stage, the total
against cost.budget_usd, the projection of the paper recipe), metrics/cost.json (for
`dvc metrics show`), plots/cost_report/usd_per_stage.png, and the same totals on an
MLflow run of its own.
"""

import json
from pathlib import Path

from vlv import config, cost, plots, tracking
from vlv.entry import stage

STAGES = ("prepare", "pretrain", "stage1", "stage2", "evaluate")  # dvc.yaml order
METRICS_DIR = Path("metrics")
REPORT = Path("reports/cost.md")
METRICS = Path("metrics/cost.json")
PLOT = Path("plots/cost_report/usd_per_stage.png")


def stage_rows(experiment_id: str) -> list[cost.StageCost]:
    runs = tracking.pipeline_runs(experiment_id)
    rows = [cost.stage_cost_from_run(r) for r in runs]
    for name in STAGES:
        if not any(r.stage == name for r in rows):
            cached = cost.stage_cost_from_metrics(name, METRICS_DIR / f"{name}.json")
            if cached is None:
                print(f"cost_report: no cost for stage {name}: no run in this pipeline and no cost block in "
                      f"{METRICS_DIR / f'{name}.json'}; run `dvc repro {name}` to measure it")
            else:
                rows.append(cached)
    order = {n: i for i, n in enumerate(STAGES)}
    return sorted(rows, key=lambda r: order.get(r.stage, len(order)))


def shipped_pretraining() -> dict:
    """What the shipped parts this run loaded cost to train, once (metrics/pretrain.json "shipped",
    from their RECORD.json): not charged to this pipeline, as a download is not."""
    path = Path("metrics/pretrain.json")
    records = json.loads(path.read_text()).get("shipped", {}) if path.is_file() else {}
    return {name: {"parts": r["parts"], "device_hours": (r.get("cost") or {}).get("device_hours", 0.0),
                   "usd": (r.get("cost") or {}).get("usd", 0.0), "device_kind": (r.get("cost") or {}).get("device_kind")}
            for name, r in records.items()}


def shipped_markdown(shipped: dict) -> str:
    if not shipped:
        return ""
    lines = ["", "## Pretraining (shipped)", "",
             "Trained once by profiles/pretrain.yaml and loaded here as a download is; not part of the totals above.", "",
             "| record | parts | device | device-hours | USD |", "| --- | --- | --- | ---: | ---: |"]
    lines += [f"| {name} | {', '.join(r['parts'])} | {r['device_kind']} | {r['device_hours']:.3f} | {r['usd']:.4f} |"
              for name, r in shipped.items()]
    return "\n".join(lines) + "\n"


@stage("cost_report", main_only=True)
def main(params: config.Params) -> None:
    """Total device-hours and dollars per stage against cost.budget_usd; project the paper recipe."""
    c = params.cost
    exp_id = tracking.setup(params.tracking.experiment)
    rows = stage_rows(exp_id)  # read before this stage's own run exists
    tot = cost.totals(rows, c.budget_usd)
    recipe = {s: (getattr(c.projection, s).steps, getattr(c.projection, s).global_batch) for s in cost.PROJECTED_STAGES}
    projection = cost.project(cost.read_records(c.throughput_records), recipe, c.prices_usd_per_hour)
    pid = tracking.pipeline_id()

    shipped = shipped_pretraining()
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(cost.markdown(rows, tot, projection, c.throughput_records, pid) + shipped_markdown(shipped))
    per_stage: dict[str, float] = {}
    for r in rows:
        per_stage[r.stage] = per_stage.get(r.stage, 0.0) + r.usd
    plots.cost_bars(per_stage, c.budget_usd, PLOT, title=f"USD per stage: ${tot['total_usd']:.3g} of ${c.budget_usd:g} ({tot['share_of_budget']:.2%})")
    metrics = {**tot, "stages": {r.stage: {"usd": r.usd, "device_hours": r.device_hours, "samples_per_s": r.samples_per_s,
                                           "cached": int(r.source != "this pipeline")} for r in rows},
               "projection": {f"{p['device_kind']}_{p['precision']}": {"device_hours": p["device_hours"], "usd": p["usd"]}
                              for p in projection},
               "shipped_pretraining": shipped}
    with tracking.stage_run("cost_report", params):
        tracking.record("cost_report", metrics, METRICS, [REPORT, PLOT], prefix="report")
    print(f"cost_report: ${tot['total_usd']:.4f} of ${c.budget_usd:g} ({tot['share_of_budget']:.4%}); "
          f"this pipeline run ${tot['this_pipeline_usd']:.4f}; {len(projection)} paper projection(s) -> {REPORT}")


if __name__ == "__main__":
    main()
