"""The shared training loop: resume after kill -9, NaN guard, accumulation, 2 processes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlv.errors import VLVError
from vlv.train import MicroBatches, latest_checkpoint, train

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{HERE}"}
sys.path.insert(0, str(HERE))
import loop_toy  # noqa: E402


def script(*args, launcher=()):
    return subprocess.run([*launcher, str(HERE / "loop_toy.py"), *map(str, args)], env=ENV, capture_output=True, text=True, timeout=300)


def test_kill_9_then_rerun_finishes_with_the_same_loss_and_weights(tmp_path):
    straight = tmp_path / "straight.json"
    assert script(straight, tmp_path / "ck1", launcher=(sys.executable,)).returncode == 0
    killed = script(tmp_path / "never.json", tmp_path / "ck2", 12, launcher=(sys.executable,))
    assert killed.returncode == -9 and not (tmp_path / "never.json").exists()
    assert latest_checkpoint(tmp_path / "ck2", "toy-v1").name == "step-00000010"
    resumed = tmp_path / "resumed.json"
    r = script(resumed, tmp_path / "ck2", launcher=(sys.executable,))
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = json.loads(straight.read_text()), json.loads(resumed.read_text())
    assert b["resumed_from"] == 10
    assert b["losses"] == a["losses"]  # bit-identical: same data, noise, dropout RNG, optimizer state
    assert b["weights"] == a["weights"]


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    model = loop_toy.Regressor(nan_at=2 * 7 + 1)  # 2 micro-batches per step: step 8 goes bad
    with pytest.raises(VLVError) as info:
        train(model, loop_toy.Points(), loop_toy.spec(checkpoint_every=3), tmp_path / "ck", "toy-v1", progress=False)
    msg = str(info.value)
    assert "\n" not in msg and "loss is nan at step 8" in msg and "step-00000006" in msg
    assert latest_checkpoint(tmp_path / "ck", "toy-v1").name == "step-00000006"


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    a = train(loop_toy.Regressor(), loop_toy.Points(), loop_toy.spec(micro_batch=2, steps=6), tmp_path / "a", "x", progress=False)
    b = train(loop_toy.Regressor(), loop_toy.Points(), loop_toy.spec(micro_batch=8, steps=6), tmp_path / "b", "x", progress=False)
    assert a.losses[0] == pytest.approx(b.losses[0], rel=1e-6)
    assert a.final_loss == pytest.approx(b.final_loss, rel=1e-3)  # dropout masks differ with batching


def test_stale_checkpoints_are_discarded_when_the_fingerprint_changes(tmp_path, capsys):
    train(loop_toy.Regressor(), loop_toy.Points(), loop_toy.spec(steps=4), tmp_path / "ck", "old", progress=False)
    res = train(loop_toy.Regressor(), loop_toy.Points(), loop_toy.spec(steps=4), tmp_path / "ck", "new", progress=False)
    assert res.resumed_from == 0 and "starting fresh" in capsys.readouterr().out


def test_global_batch_must_split_evenly():
    with pytest.raises(VLVError, match="global_batch=8 is not a multiple of micro_batch x processes = 3 x 1"):
        train(loop_toy.Regressor(), loop_toy.Points(), loop_toy.spec(micro_batch=3), "/nonexistent-ck", "x", progress=False)


def test_processes_split_every_global_batch_exactly():
    spec = loop_toy.spec(steps=3, global_batch=8, micro_batch=2)
    one = [i for b in MicroBatches(spec, 0, 0, 1, 4) for i in b]
    two = [sorted(i for r in range(2) for b in MicroBatches(spec, 0, r, 2, 2) for i in b)]
    assert one == list(range(24)) and two[0] == one


@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None, reason="accelerate CLI not installed")
def test_two_processes_match_one_process(tmp_path):
    """`accelerate launch --num_processes 2` on CPU (gloo) vs 1 process, same global batch."""
    accel = str(Path(sys.executable).parent / "accelerate")
    one = tmp_path / "one.json"
    assert script(one, tmp_path / "c1", "-", 4, launcher=(sys.executable,)).returncode == 0
    two = tmp_path / "two.json"
    r = script(two, tmp_path / "c2", "-", 2, launcher=(accel, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                                                        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533"))
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    # Tolerance: float summation order differs (all-reduce); dropout masks are drawn per process.
    assert b["losses"][0] == pytest.approx(a["losses"][0], rel=1e-5)
    for k in a["weights"]:
        assert torch.allclose(torch.tensor(a["weights"][k]), torch.tensor(b["weights"][k]), atol=5e-3), k


def test_groups_without_an_lr_take_the_configured_one(tmp_path):
    class Grouped(loop_toy.Regressor):
        def param_groups(self, lr):
            return [{"params": list(self.net[0].parameters())}, {"params": list(self.net[3].parameters()), "lr": 50 * lr}]

    from vlv.config import Optim

    spec = loop_toy.spec(steps=1, optim=Optim(lr=0.01, schedule="constant"))
    model = Grouped()
    before = [p.detach().clone() for p in model.net[0].parameters()]
    train(model, loop_toy.Points(), spec, tmp_path / "ck", "x", progress=False)
    step = max((p.detach() - b).abs().max().item() for p, b in zip(model.net[0].parameters(), before))
    assert step == pytest.approx(0.01, rel=0.05)  # Adam's first step moves each weight by about lr


def test_bf16_precision_runs_the_loop_under_autocast_with_fp32_weights(tmp_path):
    """`precision: bf16` (the GPU default) on CPU: autocast bf16, weights and optimizer stay fp32,
    and the losses track the fp32 run's."""
    a = train(loop_toy.Regressor(), loop_toy.Points(), loop_toy.spec(steps=8), tmp_path / "a", "x", progress=False)
    model = loop_toy.Regressor()
    b = train(model, loop_toy.Points(), loop_toy.spec(steps=8, precision="bf16"), tmp_path / "b", "x", progress=False)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.isfinite(torch.tensor(b.losses)))
    assert b.losses[0] == pytest.approx(a.losses[0], rel=2e-2)  # bf16 keeps ~3 significant digits
    assert b.final_loss == pytest.approx(a.final_loss, rel=0.1)


@pytest.mark.parametrize("ratio", [0.0, 0.25])
def test_cosine_schedule_decays_to_min_lr_ratio_over_the_steps_run(ratio):
    from vlv.config import Optim
    from vlv.train import _schedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = _schedule(opt, Optim(lr=2.0, warmup_steps=10, min_lr_ratio=ratio), steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[10] == pytest.approx(2.0)  # warmup done: the peak
    assert lrs[55] == pytest.approx(2.0 * (ratio + (1 - ratio) * 0.5))  # cosine midpoint
    assert min(lrs[10:]) >= 2.0 * ratio - 1e-9
    assert sched.get_last_lr()[0] == pytest.approx(2.0 * ratio, abs=1e-9)  # the end: the floor


def test_the_launcher_comes_from_the_environment():
    from vlv import launch

    assert launch.command(["pipelines/stage1.py"], "") == [sys.executable, "pipelines/stage1.py"]
    assert launch.command(["pipelines/stage1.py"], "accelerate launch --multi_gpu --num_processes 8") == [
        "accelerate", "launch", "--multi_gpu", "--num_processes", "8", "pipelines/stage1.py"]
    two_nodes = 'srun --nodes 2 bash -c "accelerate launch --machine_rank $SLURM_NODEID {script}"'
    assert launch.command(["pipelines/stage1.py"], two_nodes) == [
        "srun", "--nodes", "2", "bash", "-c", "accelerate launch --machine_rank $SLURM_NODEID pipelines/stage1.py"]


def test_mixed_precision_comes_from_the_params_not_from_accelerate_launch():
    """`accelerate launch` without --mixed_precision exports "no"; a bf16 stage still runs bf16, and says so."""
    code = "from vlv.train import accelerator; print('mixed', accelerator('bf16').mixed_precision)"
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ACCELERATE_MIXED_PRECISION": "no", "RANK": "0"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    note, mixed = r.stdout.strip().splitlines()[-2:]
    assert mixed == "mixed bf16"
    assert note.startswith("note: accelerate launch's mixed precision 'no' (its --mixed_precision, its config file or its default) "
                           "is not used: the stage's params say precision bf16"), note


def test_weights_are_fp32_master_weights_unless_bf16_is_asked(tmp_path, capsys):
    """A part that arrives in bf16 (transformers 5 keeps a checkpoint's stored dtype) is refused
    under weights_dtype fp32; weights_dtype bf16 is explicit and warned."""
    with pytest.raises(VLVError, match="trainable weights are bfloat16, not the float32 master weights"):
        train(loop_toy.Regressor().to(torch.bfloat16), loop_toy.Points(), loop_toy.spec(steps=1), tmp_path / "a", "x", progress=False)
    model = loop_toy.Regressor()
    spec = loop_toy.spec(steps=2, precision="bf16", weights_dtype="bf16")
    train(model, loop_toy.Points(), spec, tmp_path / "b", "x", progress=False)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert "AdamW updates smaller than bf16's resolution are lost" in capsys.readouterr().out
