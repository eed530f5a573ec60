"""Write a study's section of docs/RESULTS.md from its trials (no number typed by hand): a table
of every trial, the best and median value per bottleneck width, and reports/sweep/<study>/by_width.png.
The study lives in its Optuna storage (default sqlite:///mlruns/optuna.db, not in git), so --check
needs that storage; the tests skip it where the study is absent.

    python scripts/sweep_report.py --study widths [--storage URL]   # rewrites the sweep block (and the PNG)
    python scripts/sweep_report.py --study widths --check           # exit 1 if the block is stale; writes nothing
"""

from __future__ import annotations

import argparse
import sys
import statistics
from pathlib import Path

import doc_block

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- sweep:start (scripts/sweep_report.py) -->", "<!-- sweep:end -->"
WIDTH = "stage1.num_queries"


def fmt(v) -> str:
    return f"{v:.2e}" if isinstance(v, float) and (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{v:.3f}" if isinstance(v, float) else str(v)


def report(study, out_dir: Path, write_png: bool = True) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    keys = sorted({k for t in trials for k in t.params})
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    attrs = study.user_attrs
    lines = [
        f"Study `{study.study_name}`: {len(trials)} trials ({len(done)} complete, "
        f"{sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)} pruned), objective "
        f"{attrs.get('objective', '?')} ({study.direction.name.lower()}d), each trial at "
        f"`{attrs.get('budget', '?')}`, sampler {attrs.get('sampler', '?')}, pruner {attrs.get('pruner', '?')}; "
        f"run with `vlv sweep --study {study.study_name}`.",
        "",
        "| trial | state | " + " | ".join(f"`{k}`" for k in keys) + " | value | stage-2 step of the last value |",
        "| ---: | --- | " + " | ".join("---:" for _ in keys) + " | ---: | ---: |",
    ]
    for t in trials:
        complete = t.state == optuna.trial.TrialState.COMPLETE
        last = max(t.intermediate_values) if t.intermediate_values else None
        value = t.value if complete else (t.intermediate_values[last] if last is not None else None)
        step = "final" if complete else (last if last is not None else "")
        lines.append(f"| {t.number} | {t.state.name.lower()} | " + " | ".join(fmt(t.params.get(k, "")) for k in keys)
                     + f" | {fmt(value) if value is not None else ''} | {step} |")
    if WIDTH in keys and done:
        pick = max if study.direction.name == "MAXIMIZE" else min
        widths = sorted({t.params[WIDTH] for t in trials if WIDTH in t.params})
        lines += ["", f"Per bottleneck width (`{WIDTH}`): final values of complete trials, and pruned trials' "
                      "value at their last report (the pruner compares trials at equal steps):", "",
                  "| width | complete | best final | median final | pruned | their last values (step) |",
                  "| ---: | ---: | ---: | ---: | ---: | --- |"]
        for w in widths:
            vals = [t.value for t in done if t.params.get(WIDTH) == w]
            pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED and t.params.get(WIDTH) == w and t.intermediate_values]
            last = ", ".join(f"{t.intermediate_values[max(t.intermediate_values)]:.3f} ({max(t.intermediate_values)})" for t in pruned)
            lines.append(f"| {w} | {len(vals)} | {pick(vals):.3f} | {statistics.median(vals):.3f} | {len(pruned)} | {last} |"
                         if vals else f"| {w} | 0 | | | {len(pruned)} | {last} |")
        fig, ax = plt.subplots(figsize=(6, 4))
        for t in trials:
            if t.state == optuna.trial.TrialState.COMPLETE:
                ax.scatter(t.params[WIDTH], t.value, color="tab:blue")
            elif t.intermediate_values:
                ax.scatter(t.params[WIDTH], t.intermediate_values[max(t.intermediate_values)], color="tab:gray", marker="x")
        ax.set_xscale("log")
        widths = sorted({t.params[WIDTH] for t in trials if WIDTH in t.params})
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())  # no log-scale minor labels over the widths
        ax.set_xlabel("bottleneck width (queries)")
        ax.set_ylabel(attrs.get("objective", "value"))
        ax.set_title(f"sweep {study.study_name}: complete (dots), pruned at their last report (x)")
        fig.tight_layout()
        if write_png:
            out_dir.mkdir(parents=True, exist_ok=True)
            fig.savefig(out_dir / "by_width.png", dpi=120)
        plt.close(fig)
        lines += ["", f"![{attrs.get('objective', 'value')} by bottleneck width]({doc_block.link(out_dir / 'by_width.png')})"]
    for name in ("history.png", "importances.png"):
        if (out_dir / name).is_file():
            lines += ["", f"![{name[:-4]}]({doc_block.link(out_dir / name)})"]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", required=True)
    ap.add_argument("--storage", default=f"sqlite:///{ROOT / 'mlruns' / 'optuna.db'}")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=args.study, storage=args.storage)
    except KeyError:  # optuna's "Record does not exist."
        print(f"sweep_report: no study {args.study!r} in {args.storage} (studies live in the storage, not in git); "
              f"run `vlv sweep --study {args.study}` there first or pass --storage", file=sys.stderr)
        return 2
    body = report(study, ROOT / "reports" / "sweep" / args.study, write_png=not args.check)
    return doc_block.write(START, END, body, args.check, "sweep_report", f"sweep section (study {args.study!r})",
                           fix=f"python scripts/sweep_report.py --study {args.study}")

if __name__ == "__main__":
    raise SystemExit(main())
