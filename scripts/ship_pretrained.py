"""Ship the shapes world's pretrained parts as a download would be: copy the folders the
`pretrain` profile trained (models/pretrained/<part>) into pretrained/shapes-world/ and add the
run to RECORD.json (recipe, commit, reads, seconds, device-hours, dollars and the bars passed;
one entry per training run, each naming its parts) and the teacher's prompt | sample plot.

    dvc exp run -n pretrain -S profile=pretrain pretrain
    python scripts/ship_pretrained.py                 # refuses parts that miss a bar (--force to override)
    python scripts/ship_pretrained.py --parts vision  # after a run that trained only the vision encoder

Run from the repository root of the checkout that trained them.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

PARTS = ("t2i", "llm", "vision", "classifier")
FIELDS = ("background", "count", "colour", "shape", "size", "position")
BARS = {"mean": 0.90, "field": 0.80}  # issue 20 item 3: read back by the analytic reader and the classifier


def bars(metrics: dict, parts) -> dict[str, bool]:
    """Each bar the shipped parts must pass, by name -> passed (the teacher's when t2i ships, the
    vision encoder's detections when vision ships)."""
    out = {}
    if "t2i" in parts:
        for reader in ("reader", "classifier"):
            out[f"teacher_{reader}_mean >= {BARS['mean']}"] = metrics[f"teacher_{reader}_mean"] >= BARS["mean"]
            for f in FIELDS:
                out[f"teacher_{reader}_{f} >= {BARS['field']}"] = metrics[f"teacher_{reader}_{f}"] >= BARS["field"]
        out["teacher_seeds_changed > 0"] = metrics["teacher_seeds_changed"] > 0
    if "vision" in parts:
        for k in ("count", "cell", "size"):
            out[f"vision_od_{k} >= {BARS['mean']}"] = metrics[f"vision_od_{k}"] >= BARS["mean"]
        out["vision_caption_parsed == 0 (it never read a caption)"] = metrics["vision_caption_parsed"] == 0
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=Path("models/pretrained"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/pretrain.json"))
    ap.add_argument("--plots", type=Path, default=Path("plots/pretrain"))
    ap.add_argument("--out", type=Path, default=Path("pretrained/shapes-world"))
    ap.add_argument("--force", action="store_true", help="ship even if a bar is missed")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="the parts this run trained")
    a = ap.parse_args()
    missing = [str(a.src / p) for p in a.parts if not (a.src / p).is_dir()] + [str(a.metrics)] * (not a.metrics.is_file())
    if missing:
        print(f"error: ship_pretrained: missing {', '.join(missing)}; run `dvc exp run -S profile=pretrain pretrain` first")
        return 1
    metrics = json.loads(a.metrics.read_text())
    passed = bars(metrics, a.parts)
    failed = [name for name, ok in passed.items() if not ok]
    if failed and not a.force:
        print(f"error: ship_pretrained: bars missed: {', '.join(failed)}; not shipped (--force to ship anyway)")
        return 1
    a.out.mkdir(parents=True, exist_ok=True)
    for part in a.parts:
        shutil.rmtree(a.out / part, ignore_errors=True)
        shutil.copytree(a.src / part, a.out / part)
    if "t2i" in a.parts:
        shutil.copy(a.plots / "teacher_samples.png", a.out / "teacher_samples.png")
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # git status reads; it does not rewrite .git/index
    commit = subprocess.run(["git", "rev-parse", "HEAD"], env=env, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], env=env, capture_output=True, text=True).stdout.strip()
    record_path = a.out / "RECORD.json"
    runs = json.loads(record_path.read_text())["runs"] if record_path.is_file() else []
    for run in runs:  # the parts shipped now replace their earlier versions
        run["parts"] = [p for p in run["parts"] if p not in a.parts]
    runs = [run for run in runs if run["parts"]]
    runs.append({
        "name": "-".join(a.parts), "parts": list(a.parts),
        "recipe": "dvc exp run -n pretrain -S profile=pretrain pretrain (profiles/pretrain.yaml), then scripts/ship_pretrained.py",
        "commit": commit, "tree_clean": not dirty, "bars": passed,
        "cost": metrics.get("cost"), "seconds": metrics.get("seconds"), "reads": metrics.get("reads"),
        "metrics": {k: v for k, v in metrics.items() if k not in ("cost", "seconds", "reads", "shipped") and not k.endswith("samples")},
    })
    size = sum(f.stat().st_size for p in PARTS if (a.out / p).is_dir() for f in (a.out / p).rglob("*") if f.is_file())
    record_path.write_text(json.dumps({"runs": runs, "bytes": size, "dtype": "float32"}, indent=2) + "\n")
    print(f"shipped {', '.join(a.parts)} -> {a.out} ({size / 1e6:.1f} MB in all, {sum(passed.values())}/{len(passed)} bars)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
