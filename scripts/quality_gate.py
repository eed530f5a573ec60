"""CI quality gate: the whole pipeline under the smoke profile, its quality against a baseline.

    python scripts/quality_gate.py [--config benchmarks/quality.yaml] [--apply PATCH] [--update]
                                   [--out reports/quality] [--keep]

This checkout (tracked and untracked-but-not-ignored files: what a commit of it would hold) is
copied to a scratch folder, ``profile:`` in its params.yaml is set to the gate's profile
(profiles/smoke.yaml), and ``dvc repro`` runs every stage there, from data preparation to the
cost report, with the shipped parts. The metrics the config names are then read from the copy's
metrics/*.json and compared with the baseline committed beside the config: a metric fails when it
fell by more than its ``max_drop`` (absolute; every gated metric is higher-is-better). The table
is printed in the shape of ``dvc metrics diff`` and written to ``OUT/quality.md`` with this run's
values (``OUT/metrics.json``) and the copy's ``dvc repro`` log (``OUT/repro.log``).

``--update`` writes this run's values as the new baseline (commit it with the change that moved
them, and say why). ``--apply PATCH`` applies a git diff to the copy before the run: the negative
control ``benchmarks/negative/zero_projection.patch`` (the VLV encoder's output zeroed) must fail
the gate. Exit codes: 0 pass, 1 a metric fell too far, 2 the gate could not run (one line says why).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
METRIC_KEYS = {"file", "key", "max_drop"}


class GateError(Exception):
    """The gate could not run; the message is the one line to print."""


def read_config(path: Path) -> dict:
    """``profile``, ``baseline`` (a path beside the repo root) and ``metrics``: name -> {file, key, max_drop}."""
    if not path.is_file():
        raise GateError(f"no config at {path}; create it with keys profile, baseline, metrics")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict) or set(raw) != {"profile", "baseline", "metrics"}:
        got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise GateError(f"{path}: keys must be exactly ['baseline', 'metrics', 'profile'] (got {got})")
    if not isinstance(raw["metrics"], dict) or not raw["metrics"]:
        raise GateError(f"{path}: metrics must map names to {{file, key, max_drop}}")
    for name, m in raw["metrics"].items():
        if not isinstance(m, dict) or set(m) != METRIC_KEYS:
            raise GateError(f"{path}: metric {name!r} must have exactly the keys {sorted(METRIC_KEYS)}")
        if not isinstance(m["max_drop"], (int, float)) or m["max_drop"] < 0:
            raise GateError(f"{path}: metric {name!r}: max_drop must be a number >= 0 (got {m['max_drop']!r})")
    return raw


def lookup(doc: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return doc if isinstance(doc, (int, float)) and not isinstance(doc, bool) else None


def read_metrics(folder: Path, metrics: dict) -> dict[str, float | None]:
    """Each gated metric's value in ``folder``'s metrics files (None where it is missing)."""
    out, cache = {}, {}
    for name, m in metrics.items():
        f = folder / m["file"]
        if f not in cache:
            cache[f] = json.loads(f.read_text()) if f.is_file() else {}
        value = lookup(cache[f], m["key"])
        out[name] = float(value) if value is not None else None
    return out


def compare(metrics: dict, baseline: dict, this: dict) -> list[dict]:
    """One row per gated metric: baseline, this run, change, and whether it passes."""
    rows = []
    for name, m in metrics.items():
        b, t = baseline.get(name), this.get(name)
        if t is None:
            ok, change, why = False, None, "missing from this run"
        elif b is None:
            ok, change, why = True, None, "no baseline (run --update)"
        else:
            change = t - b
            ok = change >= -float(m["max_drop"]) - 1e-12
            why = "" if ok else f"fell {-change:.3f} > {m['max_drop']}"
        rows.append({"metric": name, "path": m["file"], "key": m["key"], "baseline": b, "this": t,
                     "change": change, "max_drop": m["max_drop"], "ok": ok, "why": why})
    return rows


def table(rows: list[dict]) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    lines = ["| Path | Metric | baseline | this run | Change | max drop | result |", "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        change = "-" if r["change"] is None else f"{r['change']:+.4f}"
        result = "ok" if r["ok"] else f"FAIL: {r['why']}"
        if r["ok"] and r["why"]:
            result = f"ok ({r['why']})"
        lines.append(f"| {r['path']} | {r['key']} | {fmt(r['baseline'])} | {fmt(r['this'])} | {change} | {r['max_drop']} | {result} |")
    return "\n".join(lines)


def git(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)


def scratch_copy(dest: Path, env: dict) -> None:
    """This checkout's files as a commit of it would hold them, as a fresh git repo in ``dest``."""
    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard")
    if listed.returncode != 0:
        raise GateError(f"git ls-files failed in {ROOT}: {listed.stderr.strip()}; run the gate from a git checkout")
    for rel in filter(None, listed.stdout.split("\0")):
        src = ROOT / rel
        if src.is_file():  # a file deleted in the worktree is not copied
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "quality gate copy"]):
        r = git(*cmd, cwd=dest, env=env)
        if r.returncode != 0:
            raise GateError(f"git {' '.join(cmd)} failed in the scratch copy: {r.stderr.strip()[-300:]}")


def set_profile(params_file: Path, profile: str) -> None:
    text = params_file.read_text()
    new, n = re.subn(r"(?m)^profile:\s*\S+", f"profile: {profile}", text, count=1)
    if n != 1:
        raise GateError(f"{params_file}: no top-level 'profile:' line to set to {profile!r}")
    params_file.write_text(new)


def run_pipeline(copy: Path, env: dict, log: Path) -> float:
    """``dvc repro`` in the copy; its stage lines echoed, everything in ``log``. Returns seconds."""
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=copy, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            out.write(line)
            if line.startswith("Running stage"):
                print(f"quality gate: {line.strip()} ({time.perf_counter() - start:.0f} s)", flush=True)
        proc.wait()
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise GateError(f"dvc repro failed under the gate's profile ({tail[0][:300]}); the whole log: {log}")
    return time.perf_counter() - start


def stage_seconds(copy: Path) -> dict[str, float]:
    out = {}
    for f in sorted((copy / "metrics").glob("*.json")):
        doc = json.loads(f.read_text())
        seconds = lookup(doc, "cost.seconds") or lookup(doc, "seconds")
        if seconds is not None:
            out[f.stem] = round(seconds, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "benchmarks/quality.yaml")
    ap.add_argument("--apply", type=Path, default=None, help="a git diff applied to the copy first (a negative control)")
    ap.add_argument("--update", action="store_true", help="write this run's values as the baseline")
    ap.add_argument("--out", type=Path, default=ROOT / "reports/quality")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copy (its path is printed)")
    args = ap.parse_args(argv)
    try:
        cfg = read_config(args.config)
        baseline_file = ROOT / cfg["baseline"]
        if args.apply is not None and not args.apply.is_file():
            raise GateError(f"--apply {args.apply}: no such patch file")
        if args.apply is not None and args.update:
            raise GateError("--apply and --update together would make a broken run the baseline; use one")
        baseline = json.loads(baseline_file.read_text())["metrics"] if baseline_file.is_file() else {}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_", "VLV_"))}
        env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
        env.update(GIT_AUTHOR_NAME="gate", GIT_AUTHOR_EMAIL="gate@localhost", GIT_COMMITTER_NAME="gate",
                   GIT_COMMITTER_EMAIL="gate@localhost")
        commit = git("rev-parse", "--short", "HEAD").stdout.strip() or "unknown"
        if git("status", "--porcelain", "--untracked-files=normal").stdout.strip():
            commit += "+changes"  # the copy holds uncommitted changes on top of that commit
        scratch = Path(tempfile.mkdtemp(prefix="vlv-quality-"))
        try:
            scratch_copy(scratch, env)
            if args.apply is not None:
                r = git("apply", str(args.apply.resolve()), cwd=scratch, env=env)
                if r.returncode != 0:
                    raise GateError(f"--apply {args.apply} does not apply to this checkout: {r.stderr.strip()[:300]}")
            set_profile(scratch / "params.yaml", cfg["profile"])
            args.out.mkdir(parents=True, exist_ok=True)
            print(f"quality gate: dvc repro under profiles/{cfg['profile']}.yaml in {scratch}"
                  + (f", with {args.apply} applied" if args.apply else ""), flush=True)
            seconds = run_pipeline(scratch, env, args.out / "repro.log")
            this = read_metrics(scratch, cfg["metrics"])
            stages = stage_seconds(scratch)
        finally:
            if args.keep:
                print(f"quality gate: the copy is kept at {scratch}")
            else:
                shutil.rmtree(scratch, ignore_errors=True)
    except GateError as e:
        print(f"quality gate: {e}", file=sys.stderr)
        return 2

    rows = compare(cfg["metrics"], baseline, this)
    record = {"commit": commit, "date": dt.date.today().isoformat(), "profile": cfg["profile"],
              "patch": str(args.apply) if args.apply else None, "pipeline_seconds": round(seconds, 1),
              "stage_seconds": stages, "metrics": this}
    (args.out / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    passed = all(r["ok"] for r in rows)
    head = (f"Quality gate (profile {cfg['profile']}, commit {commit}{', patch ' + str(args.apply) if args.apply else ''}): "
            f"{'passed' if passed else 'FAILED'}; pipeline {seconds:.0f} s "
            f"({', '.join(f'{k} {v:.0f} s' for k, v in stages.items())})")
    report = f"{head}\n\n{table(rows)}\n"
    (args.out / "quality.md").write_text(report)
    print(report)
    if args.update:
        if any(v is None for v in this.values()):
            print(f"quality gate: not updating {baseline_file}: some metrics are missing from this run", file=sys.stderr)
            return 2
        baseline_file.write_text(json.dumps(record, indent=2) + "\n")
        print(f"quality gate: baseline written to {baseline_file.relative_to(ROOT)}")
        return 0
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
