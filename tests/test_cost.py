"""Cost accounting: the meter's arithmetic (incl. resume and processes), prices, the budget
guard in the training loop, the projection and the report's totals."""

import json
import sys
from pathlib import Path

import mlflow
import pytest

from vlv import config, cost, tracking
from vlv.errors import VLVError
from vlv.train import latest_checkpoint, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loop_toy  # noqa: E402


class Clock:
    def __init__(self, t=0.0):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture
def meter():
    """A stage meter made active as tracking.stage_run does; deactivated after the test."""
    made = []

    def make(**kw):
        m = cost.Meter(**{"stage": "toy", "kind": "cpu", "devices": 2, "price": 0.04, **kw})
        cost.activate(m)
        made.append(m)
        return m

    yield make
    cost.activate(None)


@pytest.mark.parametrize("name, key", [
    ("NVIDIA H200", "h200"), ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA H100 PCIe", "h100-pcie"),
    ("NVIDIA A100-SXM4-80GB", "a100-80gb"), ("NVIDIA A100-SXM4-40GB", "a100-40gb"), ("NVIDIA L40S", "l40s"),
    ("NVIDIA L4", "l4"), ("NVIDIA RTX 6000 Ada Generation", "rtx-6000-ada"), ("NVIDIA GH200 480GB", "gh200"),
    ("NVIDIA GeForce RTX 4090", "geforce-rtx-4090"),
])
def test_gpu_names_normalise_to_price_keys(name, key):
    assert cost.gpu_price_key(name) == key


def test_meter_arithmetic_with_carried_hours():
    clock = Clock(100.0)
    m = cost.Meter("s", "h100-sxm", devices=4, price=3.0, clock=clock)
    clock.t += 1800  # half an hour on 4 GPUs
    m.add_samples(9000)
    assert m.device_hours() == pytest.approx(2.0) and m.usd() == pytest.approx(6.0)
    m.carry(1.5, samples=1000)  # spent before a kill, read from the checkpoint
    snap = m.snapshot()
    assert snap["device_hours"] == pytest.approx(3.5) and snap["usd"] == pytest.approx(10.5)
    assert snap["samples"] == 10000 and snap["samples_per_s"] == pytest.approx(9000 / 1800)


def test_devices_held_multiply_by_processes(monkeypatch):
    import torch

    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    monkeypatch.setattr(cost.os, "sched_getaffinity", lambda _: set(range(16)))
    assert cost.device(processes=2, device_type="cpu") == ("cpu", 6)  # 2 processes x 3 cores
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    assert cost.device(processes=8, device_type="cuda") == ("h200", 8)


def test_a_device_without_a_price_fails_with_one_line_naming_the_key():
    with pytest.raises(VLVError) as info:
        cost.price_for("geforce-rtx-4090", config.Params().cost.prices_usd_per_hour)
    msg = str(info.value)
    assert "\n" not in msg and "cost.prices_usd_per_hour" in msg and "geforce-rtx-4090" in msg


def test_a_bad_price_key_is_a_params_error():
    from vlv.errors import ParamsError

    with pytest.raises(ParamsError, match="cost.prices_usd_per_hour"):
        config.validate({"cost": {"prices_usd_per_hour": {"H100 SXM": 3.0}}})


def test_resume_carries_what_the_killed_run_spent_and_does_not_count_it_twice(tmp_path, meter):
    first = meter()
    with pytest.raises(VLVError):  # the NaN guard stops it at step 8; the step-6 checkpoint stays
        train(loop_toy.Regressor(nan_at=2 * 7 + 1), loop_toy.Points(), loop_toy.spec(checkpoint_every=3), tmp_path, "t", progress=False)
    ckpt = latest_checkpoint(tmp_path, "t")
    saved = json.loads((ckpt / "meta.json").read_text())["cost"]
    assert ckpt.name == "step-00000006" and 0 < saved["device_hours"] <= first.device_hours()
    assert saved["samples"] == 6 * 8

    clock = Clock()
    second = meter(clock=clock)
    train(loop_toy.Regressor(), loop_toy.Points(), loop_toy.spec(checkpoint_every=3), tmp_path, "t", progress=False)
    assert second.carried_hours == pytest.approx(saved["device_hours"])
    assert second.samples == (20 - 6) * 8 and second.snapshot()["samples"] == 20 * 8
    clock.t = 3600.0  # an hour of this run on its 2 cores, on top of what the killed run spent
    assert second.device_hours() == pytest.approx(saved["device_hours"] + 2.0)


def test_the_budget_guard_stops_with_one_line_and_the_checkpoint_resumes(tmp_path, meter, capsys):
    meter(budget=1e-12, clock=Clock())  # nothing spent yet; the projection of the remaining steps is over
    with pytest.raises(VLVError) as info:
        train(loop_toy.Regressor(), loop_toy.Points(), loop_toy.spec(checkpoint_every=0), tmp_path, "t", progress=False)
    msg = str(info.value)
    assert "\n" not in msg and "over budget at step 1" in msg and "projected" in msg and "cost.budget_usd" in msg
    assert latest_checkpoint(tmp_path, "t").name == "step-00000001"

    meter(budget=1e6)  # raise the budget: the same command resumes and finishes
    res = train(loop_toy.Regressor(), loop_toy.Points(), loop_toy.spec(checkpoint_every=0), tmp_path, "t", progress=False)
    assert res.resumed_from == 1 and res.steps == 20


def test_the_guard_counts_what_the_pipeline_already_spent_and_can_warn(tmp_path, meter, capsys):
    meter(budget=5.0, spent_elsewhere=6.0, clock=Clock())
    with pytest.raises(VLVError, match="nothing run"):
        train(loop_toy.Regressor(), loop_toy.Points(), loop_toy.spec(), tmp_path / "a", "t", progress=False)
    warned = meter(budget=5.0, spent_elsewhere=6.0, on_over="warn", clock=Clock())
    res = train(loop_toy.Regressor(), loop_toy.Points(), loop_toy.spec(steps=4), tmp_path / "b", "t", progress=False)
    assert res.steps == 4 and warned.guard_events and capsys.readouterr().out.count("warning: ") == 1


def test_projection_uses_only_paper_records_and_does_the_arithmetic(tmp_path):
    path = tmp_path / "throughput.csv"
    rec = dict(device_count=8, precision="bf16", commit="abc", date="2026-11-29")
    cost.append_record(path, cost.ThroughputRecord("h200", card="paper", stage="stage1", samples_per_s=512.0, **rec))
    cost.append_record(path, cost.ThroughputRecord("h200", card="paper", stage="stage2", samples_per_s=64.0, **rec))
    cost.append_record(path, cost.ThroughputRecord("cpu", card="t2i-tiny", stage="stage1", samples_per_s=76.0,
                                                   **{**rec, "device_count": 2}))
    cost.append_record(path, cost.ThroughputRecord("cpu", card="t2i-tiny", stage="stage2", samples_per_s=140.0,
                                                   **{**rec, "device_count": 2}))
    records = cost.read_records(path)
    assert len(records) == 4
    recipe = {"stage1": (200_000, 512), "stage2": (100_000, 64)}
    (row,) = cost.project(records, recipe, {"h200": 4.0, "cpu": 0.04})
    # 200k steps x 512 samples at 512 samples/s on 8 GPUs = 200k s x 8 = 444.4 device-hours
    assert row["device_kind"] == "h200"
    assert row["stage1_device_hours"] == pytest.approx(200_000 * 8 / 3600)
    assert row["stage2_device_hours"] == pytest.approx(100_000 * 8 / 3600)
    assert row["usd"] == pytest.approx(300_000 * 8 / 3600 * 4.0)
    assert cost.project(records[2:], recipe, {"cpu": 0.04}) == [], "tiny-card records never project the paper card"
    text = cost.markdown([], cost.totals([], 1000.0), [], str(path), "p")
    assert "No throughput record of the paper architecture" in text


def test_a_stage_run_logs_its_cost_and_the_pipeline_total_reads_back(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("VLV_PIPELINE_ID", "pipe-cost-1")
    monkeypatch.setattr(tracking, "_pipeline_id", None)
    params = config.validate({"tracking": {"system_metrics": False}, "cost": {"budget_usd": 1.0}})
    try:
        with tracking.stage_run("prepare", params):
            cost.add_samples(10)
            tracking.record("prepare", {"accepted": 10}, tmp_path / "m.json")
        exp = tracking.setup("vlv")
        (run,) = tracking.pipeline_runs(exp)
        written = json.loads((tmp_path / "m.json").read_text())["cost"]
        assert run["stage"] == "prepare" and run["cost"]["usd"] == pytest.approx(written["usd"])
        assert run["cost"]["samples"] == 10 and run["device_kind"] == "cpu"
        mlflow.MlflowClient().log_metric(run["run_id"], "cost/usd", 2.5)  # pretend it was expensive
        assert tracking.pipeline_spent_usd(exp) == pytest.approx(2.5)
        with pytest.raises(VLVError, match="over budget before it starts"):
            with tracking.stage_run("pretrain", params):
                raise AssertionError("the stage body must not run")
        stopped = [r for r in tracking.pipeline_runs(exp) if r["stage"] == "pretrain"]
        assert stopped and stopped[0]["status"] == "FAILED"
        tags = mlflow.MlflowClient().get_run(stopped[0]["run_id"]).data.tags
        assert "over budget before it starts" in tags["vlv.budget_guard"]
    finally:
        mlflow.set_tracking_uri(None)
