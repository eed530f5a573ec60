"""CI benchmark regression gate: this checkout's benchmarks against a base commit's, same machine.

    python scripts/bench_gate.py [--base HEAD~1] [--config benchmarks/gate.yaml] [--out reports/bench]

The base commit is checked out as a git worktree and benchmarked with this venv (its own
``src`` first on PYTHONPATH); the two sides run ``repeats`` times each in the order base, this,
this, base, base, ... (a machine that slows down or speeds up over the job favours neither
side), and each side keeps its lowest median per benchmark (the least disturbed run of a shared
machine). A benchmark whose median rose by more than ``threshold`` is re-run alone on both
sides, ``confirm`` times, in alternating order: this machine has slow phases that can land on
one side, a real slowdown does not go away. It fails the gate only if it is over the threshold
in every re-run as well. The table is printed and written to ``OUT/gate.md`` with every run's
pytest-benchmark JSON. When the base has no benchmarks yet (or there is no base commit), the
gate is skipped with one line and this checkout's benchmarks run once, so they still have to
pass.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = "tests/benchmarks"
KEYS = {"threshold": float, "repeats": int, "min_seconds": float, "confirm": int}


def fail(line: str) -> None:
    print(f"bench gate: {line}", file=sys.stderr)
    sys.exit(2)


def read_config(path: Path) -> dict:
    if not path.is_file():
        fail(f"no config at {path}; create it with keys {sorted(KEYS)}")
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - set(KEYS)
    if unknown or set(KEYS) - set(raw):
        fail(f"{path}: keys must be exactly {sorted(KEYS)} (unknown {sorted(unknown)}, missing {sorted(set(KEYS) - set(raw))})")
    try:
        cfg = {k: cast(raw[k]) for k, cast in KEYS.items()}
    except (TypeError, ValueError) as e:
        fail(f"{path}: {e}; threshold and min_seconds are numbers, repeats and confirm integers")
    if cfg["threshold"] <= 0 or cfg["repeats"] < 1 or cfg["min_seconds"] < 0 or cfg["confirm"] < 0:
        fail(f"{path}: need threshold > 0, repeats >= 1, min_seconds >= 0, confirm >= 0 (got {cfg})")
    return cfg


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def run_benchmarks(tree: Path, out_json: Path, label: str, only: str | None = None) -> dict[str, float]:
    """Median seconds per benchmark of ``tree``'s tests/benchmarks (``only``: that one), with ``tree``'s own code."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    cmd = [sys.executable, "-m", "pytest", BENCH_DIR, "-m", "benchmark", "-q", "-p", "no:cacheprovider",
           f"--benchmark-json={out_json}", "--benchmark-columns=min,median,max,rounds"] + (["-k", only] if only else [])
    print(f"bench gate: running {label}{f' ({only})' if only else ''} ({tree})", flush=True)
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"the benchmarks of {label} failed (pytest exit {done.returncode}):\n{tail}")
    report = json.loads(out_json.read_text())
    return {b["name"]: float(b["stats"]["median"]) for b in report["benchmarks"]}


def lowest(runs: list[dict[str, float]]) -> dict[str, float]:
    names = set().union(*runs)
    return {n: min(r[n] for r in runs if n in r) for n in names}


def compare(base: dict[str, float], head: dict[str, float], cfg: dict) -> tuple[list[list[str]], list[str]]:
    rows, regressions = [], []
    for name in sorted(set(base) | set(head)):
        b, h = base.get(name), head.get(name)
        if b is None or h is None:
            rows.append([name, f"{b:.4f}" if b else "-", f"{h:.4f}" if h else "-", "-", "new" if b is None else "gone"])
            continue
        change = h / b - 1
        if change > cfg["threshold"] and h >= cfg["min_seconds"]:
            verdict = "REGRESSION"
            regressions.append(name)
        elif h < cfg["min_seconds"]:
            verdict = "ok (under min_seconds, not gated)"
        else:
            verdict = "ok"
        rows.append([name, f"{b:.4f}", f"{h:.4f}", f"{change:+.1%}", verdict])
    return rows, regressions


def table(rows: list[list[str]], base_label: str) -> str:
    head = ["benchmark", f"{base_label} median s", "this median s", "change", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] * len(head)) + " |"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=None, help="the commit to compare against (default: the parent, HEAD~1)")
    ap.add_argument("--config", default=str(ROOT / "benchmarks/gate.yaml"))
    ap.add_argument("--out", default=str(ROOT / "reports/bench"))
    a = ap.parse_args()
    cfg = read_config(Path(a.config))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    asked, a.base = a.base is not None, a.base or "HEAD~1"
    rev = git("rev-parse", "--verify", "--quiet", f"{a.base}^{{commit}}")
    if asked and not rev:  # a typo must not pass as "nothing to compare against"
        fail(f"--base {a.base} is not a commit here; give a commit, branch or tag (git log --oneline)")
    has_bench = bool(rev) and bool(git("ls-tree", "-d", rev, BENCH_DIR))
    if not has_bench:
        why = f"no commit {a.base} here (a shallow clone or the first commit)" if not rev else \
              f"{a.base} ({rev[:8]}) has no {BENCH_DIR} yet"
        print(f"bench gate: skipped: {why}; running this checkout's benchmarks once so they must still pass")
        try:
            head = run_benchmarks(ROOT, out / "this-0.json", "this checkout")
        except RuntimeError as e:
            fail(str(e))
        print("\n".join(f"  {n}: median {s:.4f} s" for n, s in sorted(head.items())))
        return

    label = f"{a.base} ({rev[:8]})"
    tree = Path(tempfile.mkdtemp(prefix="vlv-bench-base-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(tree), rev], cwd=ROOT, check=True)
    try:
        try:
            base_runs = [run_benchmarks(tree, out / "base-0.json", label)]
        except RuntimeError as e:
            print(f"bench gate: skipped: {e}\nnothing to compare against; this checkout's benchmarks still run")
            run_benchmarks(ROOT, out / "this-0.json", "this checkout")
            return
        head_runs = []
        for r in range(cfg["repeats"]):  # base this | this base | base this ...: a machine that drifts favours no side
            if r % 2 == 0 and r:
                base_runs.append(run_benchmarks(tree, out / f"base-{r}.json", label))
            head_runs.append(run_benchmarks(ROOT, out / f"this-{r}.json", "this checkout"))
            if r % 2 == 1:
                base_runs.append(run_benchmarks(tree, out / f"base-{r}.json", label))
        base, head = lowest(base_runs), lowest(head_runs)
        rows, regressions = compare(base, head, cfg)
        confirmations: dict[str, list[float]] = {}
        for name in regressions:  # re-run each flagged benchmark alone, both sides, alternating
            changes = confirmations[name] = []
            while len(changes) < cfg["confirm"] and (not changes or changes[-1] > cfg["threshold"]):
                c = len(changes)
                sides = [(tree, "base", label), (ROOT, "this", "this checkout")][:: 1 if c % 2 else -1]  # this first, then base first
                t = {side: run_benchmarks(where, out / f"confirm-{name}-{side}-{c}.json", lab, only=name)[name]
                     for where, side, lab in sides}
                changes.append(t["this"] / t["base"] - 1)
    except RuntimeError as e:
        fail(str(e))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT)
        shutil.rmtree(tree.parent, ignore_errors=True)

    regressions = [n for n in regressions if all(c > cfg["threshold"] for c in confirmations[n])]
    for row in rows:
        if row[0] in confirmations:
            verdict = "REGRESSION" if row[0] in regressions else "ok (not confirmed)"
            row[-1] = f"{verdict}; re-runs {', '.join(f'{c:+.1%}' for c in confirmations[row[0]])}"
    text = table(rows, label)
    (out / "gate.md").write_text(f"threshold +{cfg['threshold']:.0%}, {cfg['repeats']} alternating runs per side, "
                                 f"{cfg['confirm']} confirmation re-runs of a flagged benchmark\n\n{text}\n")
    print(text)
    if regressions:
        fail(f"{len(regressions)} benchmark(s) slower than {label} by more than {cfg['threshold']:.0%}: "
             f"{', '.join(regressions)} (table above; threshold in {a.config})")
    print(f"bench gate: passed: no benchmark more than {cfg['threshold']:.0%} slower than {label}")


if __name__ == "__main__":
    main()
