"""The benchmark tools: the CI regression gate's verdicts and config, and `vlv bench-arch` on
the embedded card (CPU timing, meta FLOP counting, the records it writes for the projection)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from vlv import cost, throughput
from vlv.errors import VLVError

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_gate", ROOT / "scripts/bench_gate.py")
gate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gate)
CFG = {"threshold": 0.25, "repeats": 2, "min_seconds": 0.05, "confirm": 2}


def test_gate_flags_only_real_regressions_above_the_threshold():
    base = {"step": 1.0, "loader": 0.2, "tiny": 0.01, "old": 0.5}
    head = {"step": 1.3, "loader": 0.24, "tiny": 0.05 - 1e-9, "new": 0.7}
    rows, regressions = gate.compare(base, head, CFG)
    assert regressions == ["step"]  # +30%; loader +20% passes; tiny +400% is under min_seconds
    verdicts = {r[0]: r[-1] for r in rows}
    assert verdicts["loader"] == "ok" and verdicts["new"] == "new" and verdicts["old"] == "gone"
    assert verdicts["tiny"].startswith("ok (under min_seconds")
    assert "| step | 1.0000 | 1.3000 | +30.0% | REGRESSION |" in gate.table(rows, "parent")


def test_gate_keeps_each_sides_lowest_median():
    assert gate.lowest([{"a": 1.0, "b": 2.0}, {"a": 0.8, "b": 2.5}]) == {"a": 0.8, "b": 2.0}


@pytest.mark.parametrize("text", ["threshold: 0.25\nrepeats: 2\n", "threshold: x\nrepeats: 2\nmin_seconds: 0\nconfirm: 1\n",
                                  "threshold: 0\nrepeats: 2\nmin_seconds: 0\nconfirm: 1\n"])
def test_a_bad_gate_config_is_one_line(tmp_path, text):
    bad = tmp_path / "gate.yaml"
    bad.write_text(text)
    done = subprocess.run([sys.executable, str(ROOT / "scripts/bench_gate.py"), "--config", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("bench gate: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_base_that_is_not_a_commit_is_one_line():
    done = subprocess.run([sys.executable, str(ROOT / "scripts/bench_gate.py"), "--base", "no-such-rev"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "is not a commit" in done.stderr, done.stderr


def test_the_shipped_gate_config_is_valid():
    assert gate.read_config(ROOT / "benchmarks/gate.yaml")["threshold"] == 0.25


def test_bench_arch_without_a_gpu_says_so_in_one_line():
    done = subprocess.run([sys.executable, "-m", "vlv.cli", "bench-arch", "--card", "paper", "--device", "cuda"],
                          capture_output=True, text=True, timeout=120)
    if done.returncode == 0:
        pytest.skip("this machine has a GPU")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "no CUDA GPU" in done.stderr and "--device meta" in done.stderr


def test_bench_arch_refuses_unknown_cards_and_the_paper_card_on_cpu():
    with pytest.raises(VLVError, match="choose one of"):
        throughput.run(card="huge", device="cpu")
    with pytest.raises(VLVError, match="paper card on CPU"):
        throughput.run(card="paper", device="cpu")
    with pytest.raises(VLVError, match="--steps >= 1"):
        throughput.run(card="embedded", device="cpu", steps=0)


def test_bench_arch_times_both_settings_of_both_stages_on_cpu():
    ms = throughput.run(card="embedded", device="cpu", precision="fp32", warmup=0, steps=1, batch_scale=0.25,
                        records=None, details=None)
    assert [(m.stage, m.setting) for m in ms] == [("stage1", "official"), ("stage1", "ours"), ("stage2", "official"), ("stage2", "ours")]
    assert all(m.samples_per_s > 0 and m.batch == 8 and m.flops_per_step > 0 for m in ms)
    assert all(m.mfu is None and m.peak_memory_gib is None for m in ms)  # no CPU peak in the table, no CUDA memory
    s1 = {m.setting: m for m in ms if m.stage == "stage1"}
    # the official step also encodes the batch with the VAE and recomputes the checkpointed UNet
    assert s1["official"].flops_per_step > 1.2 * s1["ours"].flops_per_step
    assert set(throughput.ratios(ms)) == {"stage1", "stage2"}


def test_bench_arch_records_feed_the_cost_projection(tmp_path):
    ms = [throughput.Measurement("stage1", "ours", "bf16", 64, [1.0], 64.0, 40.0, 1e14, 1.6, 0.4),
          throughput.Measurement("stage2", "ours", "bf16", 8, [1.0], 8.0, 60.0, 5e13, 6.4, 0.4)]
    records, details = tmp_path / "throughput.csv", tmp_path / "details.jsonl"
    throughput.write(ms, "paper", throughput.CARD_SETS["paper"], "h200", "NVIDIA H200", records, details)
    rows = cost.read_records(records)
    assert [(r.card, r.stage, r.precision, r.samples_per_s) for r in rows] == [("paper", "stage1", "bf16", 64.0), ("paper", "stage2", "bf16", 8.0)]
    plan = cost.project(rows, {"stage1": (200_000, 512), "stage2": (100_000, 64)}, {"h200": 3.8})
    assert plan and plan[0]["device_hours"] == pytest.approx(200_000 * 512 / 64 / 3600 + 100_000 * 64 / 8 / 3600)
    assert '"ratios"' in details.read_text()


def test_every_peak_is_keyed_by_a_device_kind_the_cost_meter_names():
    kinds = {key for _, key in cost.GPU_RULES}
    assert set(throughput.PEAK_TFLOPS) <= kinds
    assert cost.gpu_price_key("NVIDIA H200") in throughput.PEAK_TFLOPS
