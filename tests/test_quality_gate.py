"""The CI quality gate (scripts/quality_gate.py): its verdicts, its config checks, the shipped
config, baseline and negative control. The gate's own run (the whole pipeline under
profiles/smoke.yaml) is CI's, not this suite's."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vlv import config

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("quality_gate", ROOT / "scripts/quality_gate.py")
gate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gate)
METRICS = {"acc": {"file": "metrics/evaluate.json", "key": "attributes.mean", "max_drop": 0.05},
           "recon": {"file": "metrics/stage1.json", "key": "recon_reader_mean", "max_drop": 0.08}}


def test_a_metric_fails_only_when_it_fell_by_more_than_its_max_drop():
    rows = gate.compare(METRICS, {"acc": 0.80, "recon": 0.50}, {"acc": 0.76, "recon": 0.41})
    verdict = {r["metric"]: r["ok"] for r in rows}
    assert verdict == {"acc": True, "recon": False}  # -0.04 within 0.05; -0.09 beyond 0.08
    text = gate.table(rows)
    assert "| metrics/stage1.json | recon_reader_mean | 0.5000 | 0.4100 | -0.0900 | 0.08 | FAIL: fell 0.090 > 0.08 |" in text
    assert all(r["ok"] for r in gate.compare(METRICS, {"acc": 0.8, "recon": 0.5}, {"acc": 0.95, "recon": 0.5}))


def test_a_metric_missing_from_the_run_fails_and_one_without_a_baseline_passes():
    rows = {r["metric"]: r for r in gate.compare(METRICS, {"acc": 0.8}, {"acc": None, "recon": 0.3})}
    assert not rows["acc"]["ok"] and rows["acc"]["why"] == "missing from this run"
    assert rows["recon"]["ok"] and "no baseline" in rows["recon"]["why"]


def test_metrics_are_read_by_dotted_key(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/evaluate.json").write_text(json.dumps({"attributes": {"mean": 0.7, "flag": True}}))
    got = gate.read_metrics(tmp_path, {**METRICS, "flag": {"file": "metrics/evaluate.json", "key": "attributes.flag", "max_drop": 0}})
    assert got == {"acc": 0.7, "recon": None, "flag": None}


@pytest.mark.parametrize("text", ["profile: smoke\nmetrics: {}\n",
                                  "profile: smoke\nbaseline: b.json\nmetrics: {a: {file: f, key: k}}\n",
                                  "profile: smoke\nbaseline: b.json\nmetrics: {a: {file: f, key: k, max_drop: -1}}\n"])
def test_a_bad_gate_config_is_one_line(tmp_path, text):
    bad = tmp_path / "quality.yaml"
    bad.write_text(text)
    r = subprocess.run([sys.executable, str(ROOT / "scripts/quality_gate.py"), "--config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("quality gate:")


def test_the_shipped_config_baseline_profile_and_negative_control_fit_together():
    cfg = gate.read_config(ROOT / "benchmarks/quality.yaml")
    params = config.load(ROOT / "profiles" / f"{cfg['profile']}.yaml")  # the profile validates
    assert params.profile == cfg["profile"]
    baseline = json.loads((ROOT / cfg["baseline"]).read_text())
    assert baseline["profile"] == cfg["profile"] and set(baseline["metrics"]) == set(cfg["metrics"])
    assert all(isinstance(v, float) for v in baseline["metrics"].values())
    r = subprocess.run(["git", "apply", "--check", str(ROOT / "benchmarks/negative/zero_projection.patch")], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, f"the negative control no longer applies: {r.stderr}"
