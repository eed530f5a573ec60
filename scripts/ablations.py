"""Stage-2 science (issue 4): the no-stage-1, trainable-set and data-efficiency ablations.

    .venv/bin/python scripts/ablations.py run [NAME ...]   # each variant: dvc exp run --temp -n abl-NAME -S ...
    .venv/bin/python scripts/ablations.py report           # metrics/ablations.json -> docs/RESULTS.md + PNG
    .venv/bin/python scripts/ablations.py report --check   # exit 1 if the block is stale (the tests run this)

``run`` runs each variant as a DVC experiment in a temporary copy (only stage2, evaluate and
cost_report re-run; the workspace is untouched) and collects its metrics from the MLflow runs
tagged ``vlv.dvc_exp = abl-NAME`` into metrics/ablations.json. The baseline is the committed
default run (metrics/stage2.json, metrics/evaluate.json). ``report`` rewrites the block of
docs/RESULTS.md between the ablation markers and plots/ablations/data_efficiency.png from that
JSON: no number in the block is typed by hand. ``report --check`` only compares the block.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))
import doc_block  # noqa: E402

RESULTS = ROOT / "metrics" / "ablations.json"
PLOT = ROOT / "plots" / "ablations" / "data_efficiency.png"
START, END = "<!-- ablations:start (scripts/ablations.py report) -->", "<!-- ablations:end -->"

VARIANTS: dict[str, dict[str, str]] = {
    "no-stage1": {"stage2.init": "random"},
    "mlp": {"stage2.trainable": "mlp"},
    "mlp-llm": {"stage2.trainable": "mlp+llm"},
    **{f"pairs-{n}{suffix}": {"stage2.num_pairs": str(n), **({"stage2.init": "random"} if suffix else {})}
       for n in (250, 500, 1000) for suffix in ("", "-random")},
}
FIELDS = ("mean", "exact", "background", "count", "size", "shape", "colour", "position")


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def stage1_hash() -> str:
    """The md5 of the stage-1 encoder (models/stage1) in dvc.lock: which teacher + stage 1 a run used."""
    import yaml

    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"]["stage1"]["outs"] if o["path"] == "models/stage1")


def baseline() -> dict:
    from vlv import config

    p = config.load(ROOT / "params.yaml").stage2
    ev, s2 = load(ROOT / "metrics/evaluate.json"), load(ROOT / "metrics/stage2.json")
    return {"set": {"stage2.init": p.init, "stage2.trainable": p.trainable}, "pairs": s2.get("pairs"),
            "attributes": ev.get("attributes", {}), "caption": ev.get("caption", {}), "stage2_seconds": s2.get("seconds")}


def collect(name: str) -> dict:
    """The variant's stage2 + evaluate metrics, from its latest MLflow runs."""
    import mlflow

    from vlv import tracking

    exp = tracking.setup("vlv")
    client = mlflow.MlflowClient()
    out: dict = {}
    for stage in ("stage2", "evaluate"):
        runs = client.search_runs([exp], filter_string=f"tags.`vlv.dvc_exp` = 'abl-{name}' and tags.`vlv.stage` = '{stage}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            raise SystemExit(f"ablations: no MLflow {stage} run tagged vlv.dvc_exp=abl-{name}; run `scripts/ablations.py run {name}`")
        m = runs[0].data.metrics
        if stage == "stage2":
            out["pairs"], out["stage2_seconds"] = int(m["stage2/pairs"]), m["stage2/seconds"]
        else:
            out["attributes"] = {f: m[f"evaluate/attributes.{f}"] for f in FIELDS}
            out["caption"] = {k: m[f"evaluate/caption.{k}"] for k in ("bleu_4", "cider", "rouge_l") if f"evaluate/caption.{k}" in m}
    return out


def run(names: list[str]) -> None:
    results = load(RESULTS)
    env = {k: v for k, v in os.environ.items() if k != "VLV_PIPELINE_ID"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    for name in names or list(VARIANTS):
        sets = VARIANTS[name]
        cmd = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", f"abl-{name}"]
        for k, v in sets.items():
            cmd += ["-S", f"{k}={v}"]
        print(" ".join(cmd[2:]), flush=True)
        t0 = time.time()
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
        results[name] = {"set": sets, **collect(name), "wall_seconds": time.time() - t0, "stage1_md5": stage1_hash()}
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(f"ablations: {name}: attribute accuracy {results[name]['attributes']['mean']:.1%} "
              f"({time.time() - t0:.0f} s)", flush=True)


def pct(x) -> str:
    return f"{100 * x:.1f}" if isinstance(x, (int, float)) else "—"


def table(results: dict, base: dict, current: str) -> tuple[str, list[str]]:
    """The block's body and the variants that ran on another stage-1 encoder than ``current``."""
    stale = sorted(k for k, v in results.items() if v.get("stage1_md5") != current)
    rows = {"default (stage-1 init, mlp+llm+encoder)": base, **{k + (" *" if k in stale else ""): v for k, v in results.items()}}
    head = "| run | init | trainable | pairs | attr. mean % | exact % | colour % | position % | shape % | BLEU-4 | CIDEr |"
    lines = ["Generated by `scripts/ablations.py report` from `metrics/ablations.json` (variants) and the",
             "committed default run; re-run the variants with `scripts/ablations.py run` (each a",
             "`dvc exp run --temp -n abl-NAME -S ...`: stage 2 + evaluate, same steps and seed).", "", head,
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in rows.items():
        s = {**base["set"], **r.get("set", {})}
        a, c = r.get("attributes", {}), r.get("caption", {})
        lines.append(f"| {name} | {s['stage2.init']} | {s['stage2.trainable']} | {r.get('pairs', '—')} | {pct(a.get('mean'))} | "
                     f"{pct(a.get('exact'))} | {pct(a.get('colour'))} | {pct(a.get('position'))} | {pct(a.get('shape'))} | "
                     f"{c.get('bleu_4', float('nan')):.3f} | {c.get('cider', float('nan')):.2f} |")
    if stale:
        lines += ["", "\\* ran on an earlier teacher and stage-1 encoder than the committed run (their `models/stage1` md5 in",
                  "`dvc.lock` differs): compare them with each other, not with the default row; re-run them with",
                  f"`scripts/ablations.py run {' '.join(stale)}`."]
    lines += ["", f"![attribute accuracy vs pairs]({doc_block.link(PLOT)})"]
    return "\n".join(lines), stale


def report(check: bool = False) -> int:
    results, base = load(RESULTS), baseline()
    body, stale = table(results, base, stage1_hash())
    code = doc_block.write(START, END, body, check, "ablations", "ablation table", fix="python scripts/ablations.py report")
    if code == 0 and not check:
        plot(results, base, stale)
        print(f"ablations: wrote {PLOT.relative_to(ROOT)}")
    return code


def plot(results: dict, base: dict, stale: list[str] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s1, rnd = "from the stage-1 encoder", "from a random encoder (no stage 1)"
    old = " (earlier teacher)"
    curves: dict = {s1: {base["pairs"]: base["attributes"].get("mean")}, rnd: {}, s1 + old: {}, rnd + old: {}}
    for name, r in results.items():
        if name == "no-stage1" or name.startswith("pairs-"):
            key = (rnd if name == "no-stage1" or name.endswith("-random") else s1) + (old if name in stale else "")
            curves[key][r["pairs"]] = r["attributes"]["mean"]
    curves = {k: v for k, v in curves.items() if v}
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for label, pts in curves.items():
        xs = sorted(k for k, v in pts.items() if v is not None)
        ax.plot(xs, [100 * pts[x] for x in xs], marker="o", label=label, **({"ls": "--", "alpha": 0.5} if label.endswith(old) else {}))
    ax.set_xscale("log")
    ticks = sorted({x for pts in curves.values() for x in pts})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("captioned pairs in stage 2 (same steps)")
    ax.set_ylabel("test attribute accuracy, %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("data efficiency of stage 2", fontsize=10)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=120)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "report") or (sys.argv[1] == "report" and sys.argv[2:] not in ([], ["--check"])):
        raise SystemExit(__doc__)
    if sys.argv[1] == "run":
        run(sys.argv[2:])
    else:
        raise SystemExit(report(check=sys.argv[2:] == ["--check"]))
