"""What a run costs: device-hours and dollars per stage, the budget guard, and the projection.

- ``device()``: the device kind this process computes on, as a price key (``h200``,
  ``h100-sxm``, ``a100-80gb``, ..., or ``cpu``), and how many devices the run holds
  (processes x 1 GPU; on CPU the cores in use: threads per process x processes).
- ``Meter``: one per stage run, opened by ``tracking.stage_run`` and reachable as
  ``cost.active()`` (as mlflow's active run is). It measures the stage's wall seconds x
  devices -> device-hours -> USD at ``cost.prices_usd_per_hour``, counts samples, and
  adds what resumed checkpoints had already spent (so a killed-and-resumed stage is not
  counted twice). ``tracking.record`` writes its snapshot into the stage's metrics JSON
  and to MLflow as ``cost/*`` metrics plus ``vlv.device_kind`` / ``vlv.device_count`` tags.
- The budget guard: the training loop calls ``Meter.check`` before its first step, after
  it, and every ``cost.guard_every`` steps: spent by this pipeline + the projected rest of
  the loop > ``cost.budget_usd`` -> stop (the loop checkpoints first) or warn.
- The report (pipelines/cost_report.py) reads the stage runs back, totals them against
  the budget, and projects the paper recipe from measured throughput records
  (benchmarks/throughput.csv); a record of a tiny card never projects the paper card.
"""

from __future__ import annotations

import csv
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import VLVError

# lowercased CUDA device name -> price key; the first rule whose words all occur wins
GPU_RULES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("gh200",), "gh200"),
    (("h200",), "h200"),
    (("h100", "pcie"), "h100-pcie"),
    (("h100", "nvl"), "h100-nvl"),
    (("h100",), "h100-sxm"),
    (("b200",), "b200"),
    (("a100", "80"), "a100-80gb"),
    (("a100",), "a100-40gb"),
    (("l40s",), "l40s"),
    (("l40",), "l40"),
    (("rtx", "6000", "ada"), "rtx-6000-ada"),
    (("a10g",), "a10g"),
    (("l4",), "l4"),
    (("t4",), "t4"),
)
RECORD_FIELDS = ("device_kind", "device_count", "card", "stage", "samples_per_s", "precision", "commit", "date")
PROJECTED_STAGES = ("stage1", "stage2")


def gpu_price_key(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100-sxm', 'NVIDIA A100-SXM4-80GB' -> 'a100-80gb', ...;
    an unknown name -> its lowercase slug without the vendor (the key to add a price for)."""
    low = name.lower()
    tokens = [t for t in re.split(r"[^a-z0-9]+", low) if t]

    def has(word: str) -> bool:  # "80" matches "80gb", "l4" does not match "l40s"
        return any(t == word or (t.startswith(word) and t[len(word):].isalpha()) for t in tokens)

    for needed, key in GPU_RULES:
        if all(has(w) for w in needed):
            return key
    slug = re.sub(r"[^a-z0-9]+", "-", low.replace("nvidia", "")).strip("-")
    return slug or "gpu"


def cpu_cores_in_use() -> int:
    """Threads torch computes with, capped by the cores this process may run on."""
    import torch

    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), available))


def device(processes: int = 1, device_type: str | None = None) -> tuple[str, int]:
    """(price key, devices held by the whole run) for this process's device."""
    import torch

    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda":
        return gpu_price_key(torch.cuda.get_device_name()), processes
    return "cpu", processes * cpu_cores_in_use()


def price_for(kind: str, prices: dict[str, float]) -> float:
    if kind not in prices:
        raise VLVError(
            f"cost: no price for device kind {kind!r}; add it under cost.prices_usd_per_hour in params.yaml "
            f"(USD per device-hour{', per core for cpu' if kind == 'cpu' else ''}), e.g. `{kind}: 2.5`"
        )
    return float(prices[kind])


# ------------------------------------------------------------------------------ the meter
@dataclass
class Meter:
    """Device-hours and dollars of one stage run (this process's view of the whole run)."""

    stage: str
    kind: str
    devices: int  # devices held by the run: GPUs, or CPU cores
    price: float  # USD per device-hour
    budget: float = float("inf")
    on_over: str = "stop"  # stop | warn
    guard_every: int = 50
    spent_elsewhere: float = 0.0  # USD of the other stage runs of this pipeline, read at the start
    clock: Callable[[], float] = time.perf_counter
    carried_hours: float = 0.0  # device-hours spent before a kill, read back from checkpoints
    carried_samples: int = 0
    samples: int = 0  # processed by this run
    warned: bool = False
    logged: bool = False  # tracking.record logged the snapshot
    guard_events: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def seconds(self) -> float:
        return self.clock() - self.started

    def device_hours(self) -> float:
        return self.seconds() * self.devices / 3600 + self.carried_hours

    def usd(self) -> float:
        return self.device_hours() * self.price

    def hours_for(self, seconds: float) -> float:
        return seconds * self.devices / 3600

    def add_samples(self, n: int) -> None:
        self.samples += int(n)

    def carry(self, device_hours: float, samples: int = 0) -> None:
        """Add what a resumed checkpoint had spent before the process was killed."""
        self.carried_hours += float(device_hours)
        self.carried_samples += int(samples)

    def snapshot(self) -> dict:
        seconds = self.seconds()
        return {
            "device_kind": self.kind, "device_count": self.devices, "price_usd_per_hour": self.price,
            "seconds": seconds, "device_hours": self.device_hours(), "usd": self.usd(),
            "samples": self.samples + self.carried_samples,
            "samples_per_s": self.samples / seconds if seconds > 0 else 0.0,
            "carried_device_hours": self.carried_hours,
        }

    # ------------------------------------------------------------------------- the guard
    def due(self, done: int, start: int) -> bool:
        return done == start + 1 or done % self.guard_every == 0

    def check(self, name: str, remaining_steps: int = 0, seconds_per_step: float = 0.0, at_step: int | None = None) -> str | None:
        """None within budget; else the one line saying spent, projected and budget.
        ``at_step`` None: the check at the start of a stage (nothing projected yet)."""
        spent = self.spent_elsewhere + self.usd()
        projected = self.hours_for(remaining_steps * seconds_per_step) * self.price
        if spent + projected <= self.budget:
            return None
        where = "before it starts" if at_step is None else f"at step {at_step}"
        line = (f"{name}: over budget {where}: spent ${spent:.4g} by this pipeline + projected ${projected:.4g} "
                f"for the remaining {remaining_steps} steps > cost.budget_usd ${self.budget:g}")
        self.guard_events.append(line)
        return line


_ACTIVE: Meter | None = None


def active() -> Meter | None:
    """The meter of the stage run in progress (None outside one: tests, probes)."""
    return _ACTIVE


def activate(meter: Meter | None) -> None:
    global _ACTIVE
    _ACTIVE = meter


def add_samples(n: int) -> None:
    """Count work outside the training loop (images prepared, captioned, regenerated)."""
    if _ACTIVE is not None:
        _ACTIVE.add_samples(n)


def over_budget_action(meter: Meter, line: str) -> bool:
    """Apply ``cost.on_over_budget``: True = stop. Warnings print once per stage run."""
    if meter.on_over == "stop":
        return True
    if not meter.warned:
        print(f"warning: {line} (cost.on_over_budget: warn, continuing)")
        meter.warned = True
    return False


# ----------------------------------------------------------------- throughput + projection
@dataclass(frozen=True)
class ThroughputRecord:
    device_kind: str
    device_count: int
    card: str  # "paper" or a tiny card's name: only "paper" records project the paper recipe
    stage: str
    samples_per_s: float
    precision: str
    commit: str
    date: str


def read_records(path: str | Path) -> list[ThroughputRecord]:
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for i, row in enumerate(rows, start=2):
        try:
            out.append(ThroughputRecord(row["device_kind"], int(row["device_count"]), row["card"], row["stage"],
                                        float(row["samples_per_s"]), row["precision"], row["commit"], row["date"]))
        except (KeyError, TypeError, ValueError) as err:
            raise VLVError(f"{path}:{i}: bad throughput record ({type(err).__name__}: {err}); columns are {', '.join(RECORD_FIELDS)}") from None
    return out


def append_record(path: str | Path, record: ThroughputRecord) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file() or path.stat().st_size == 0
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=RECORD_FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: getattr(record, k) for k in RECORD_FIELDS})


def project(records: list[ThroughputRecord], recipe: dict[str, tuple[int, int]], prices: dict[str, float],
            card: str = "paper") -> list[dict]:
    """Device-hours and USD of ``recipe`` ({stage: (steps, global_batch)}) per device kind and
    precision that has a record of ``card`` for every stage; the latest record per key wins."""
    latest: dict[tuple[str, str, str], ThroughputRecord] = {}
    for r in records:
        if r.card == card and r.stage in recipe:
            key = (r.device_kind, r.precision, r.stage)
            if key not in latest or r.date >= latest[key].date:
                latest[key] = r
    out = []
    for kind, precision in sorted({(k, p) for k, p, _ in latest}):
        if not all((kind, precision, s) in latest for s in recipe):
            continue
        row: dict = {"device_kind": kind, "precision": precision, "device_hours": 0.0}
        for stage, (steps, batch) in recipe.items():
            r = latest[(kind, precision, stage)]
            hours = steps * batch / r.samples_per_s / 3600 * r.device_count
            row[f"{stage}_device_hours"] = hours
            row["device_hours"] += hours
        price = prices.get(kind)
        row["usd"] = row["device_hours"] * price if price is not None else None
        out.append(row)
    return out


# ---------------------------------------------------------------------------------- report
@dataclass(frozen=True)
class StageCost:
    stage: str
    source: str  # "this pipeline" (its MLflow run) or "cached: <metrics JSON>" (up to date, not re-run)
    status: str
    device_kind: str
    device_count: int
    device_hours: float
    usd: float
    samples: int
    samples_per_s: float
    run_id: str = ""


def stage_cost_from_run(run: dict) -> StageCost:
    c = run["cost"]
    return StageCost(run["stage"], "this pipeline", run["status"].lower(), run["device_kind"], int(c.get("device_count", 0)),
                     float(c.get("device_hours", 0.0)), float(c.get("usd", 0.0)), int(c.get("samples", 0)),
                     float(c.get("samples_per_s", 0.0)), run["run_id"])


def stage_cost_from_metrics(stage: str, path: Path) -> StageCost | None:
    """A stage DVC did not re-run: what producing its current outputs cost, from its metrics JSON."""
    import json

    if not path.is_file():
        return None
    c = json.loads(path.read_text()).get("cost")
    if not c:
        return None
    return StageCost(stage, f"cached: {path.as_posix()}", "finished", str(c.get("device_kind", "?")), int(c.get("device_count", 0)),
                     float(c["device_hours"]), float(c["usd"]), int(c.get("samples", 0)), float(c.get("samples_per_s", 0.0)))


def totals(rows: list[StageCost], budget: float) -> dict:
    total = sum(r.usd for r in rows)
    this = sum(r.usd for r in rows if r.source == "this pipeline")
    return {"total_usd": total, "this_pipeline_usd": this, "cached_usd": total - this, "budget_usd": budget,
            "remaining_usd": budget - total, "share_of_budget": total / budget,
            "device_hours": sum(r.device_hours for r in rows)}


def markdown(rows: list[StageCost], tot: dict, projection: list[dict], records_path: str, pipeline: str) -> str:
    lines = [f"# Cost report (pipeline {pipeline})", "",
             "| stage | source | status | device | count | device-hours | USD | samples | samples/s |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r.stage} | {r.source} | {r.status} | {r.device_kind} | {r.device_count} | {r.device_hours:.3g} | "
                     f"{r.usd:.3g} | {r.samples} | {r.samples_per_s:.1f} |")
    lines += ["", f"**Total: ${tot['total_usd']:.3g}** of the ${tot['budget_usd']:g} budget "
              f"({tot['share_of_budget']:.4%} spent, ${tot['remaining_usd']:.2f} left); "
              f"${tot['this_pipeline_usd']:.3g} spent by this pipeline run, ${tot['cached_usd']:.3g} by the runs that made "
              f"the cached stages' outputs. {tot['device_hours']:.3f} device-hours in all "
              "(on CPU a device-hour is a core-hour).", "",
              "## The paper recipe, projected", ""]
    if projection:
        lines += ["| device | precision | stage-1 device-hours | stage-2 device-hours | total device-hours | USD |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        for p in projection:
            usd = f"{p['usd']:,.0f}" if p["usd"] is not None else "no price"
            lines.append(f"| {p['device_kind']} | {p['precision']} | {p['stage1_device_hours']:,.0f} | "
                         f"{p['stage2_device_hours']:,.0f} | {p['device_hours']:,.0f} | {usd} |")
        lines += ["", f"From the measured throughput records in {records_path} (card `paper`)."]
    else:
        lines.append(f"No throughput record of the paper architecture (card `paper`) in {records_path}, so no projection: "
                     "measure one with `vlv bench-arch --card paper` on a GPU. Records of tiny cards are never used for it.")
    return "\n".join(lines) + "\n"
