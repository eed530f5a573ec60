"""One training loop for every stage (pretrain's parts, stage 1, stage 2), on Accelerate.

The module trained is a ``torch.nn.Module`` whose ``forward(batch)`` returns the mean
training loss of that micro-batch (so DDP sees the forward and syncs gradients). It may
define ``param_groups(lr)`` -> list of ``{"params": [...], "lr": ...}`` for per-part learning
rates (``lr`` is the stage's ``optim.lr``; a group without an "lr" takes it); otherwise every
parameter with ``requires_grad`` trains at ``optim.lr``.

Data order is a pure function of (seed, global sample position): global step ``s`` consumes
positions ``s*G .. s*G+G-1`` (G = global batch) of an endless stream of per-epoch seeded
permutations. Each process takes its share of every accumulation chunk, and every sample
carries its ``sample_id`` (the position) so that per-sample randomness (noise, timesteps)
is seeded by it. Hence a run resumed from a checkpoint, or split over N processes with the
same global batch, sees exactly the same samples with the same noise.

Checkpoints (every ``checkpoint_every`` steps and at the end) are folders written to a
temporary name and renamed: trainable weights (safetensors), optimizer and LR-scheduler
state, per-process RNG state, and meta.json (step, losses, seconds, fingerprint). A stage
restarted after a crash or kill -9 resumes from the newest checkpoint whose fingerprint
(the params and data it was made for) matches; any other checkpoint is discarded. A newest
checkpoint that cannot be read (a truncated file, an optimizer.pt that is more than tensors,
non-finite weights) is passed over with one warning line for the one before it; when none reads,
one line names them to delete. A checkpoint is written only while the weights are finite, so
the one the NaN guard calls last good, and a re-run resumes from, never holds blown-up weights.

Inside a stage run the loop feeds the stage's cost meter (vlv.cost): samples per step, and
the device-hours a resumed checkpoint had already spent (kept in meta.json, so they are not
counted twice); and it runs the budget guard before the first step, after it, and every
``cost.guard_every`` steps (over budget -> checkpoint, then stop with one line, or warn).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from . import cost
from .config import Optim
from .errors import VLVError

KEEP_CHECKPOINTS = 2


@dataclass(frozen=True)
class LoopSpec:
    name: str  # for messages, checkpoint folders and metric names
    steps: int
    global_batch: int
    micro_batch: int
    optim: Optim
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    weights_dtype: str = "fp32"  # fp32 | bf16: the dtype the trainable weights are held and updated in
    seed: int = 0
    checkpoint_every: int = 0  # 0 = only at the end
    log_every: int = 10
    num_workers: int = 0


@dataclass
class Result:
    steps: int
    losses: list[float]
    seconds: float
    samples: int
    resumed_from: int = 0

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else float("nan")


# ----------------------------------------------------------------------------- processes
_ACCELERATOR = None
MIXED = {"fp32": "no", "bf16": "bf16"}  # a stage's precision -> Accelerate's mixed_precision


def accelerator(precision: str | None = None):
    """The process's Accelerator (created once; DDP over gloo on CPU, NCCL on GPUs). Its mixed
    precision comes from the params of the first stage that asks (``precision``: fp32 -> "no",
    bf16 -> "bf16"; DVC records params, not launcher flags), passed to Accelerator explicitly.
    ``accelerate launch`` exports its own setting as ACCELERATE_MIXED_PRECISION (its
    ``--mixed_precision`` flag, else its config file's, else "no"), which Accelerate reads only
    when no value is passed: here it is never used, and rank 0 says so in one line when it differs."""
    global _ACCELERATOR
    if _ACCELERATOR is None:
        from accelerate import Accelerator

        mixed = MIXED[precision or "fp32"]
        launched = os.environ.get("ACCELERATE_MIXED_PRECISION")
        if launched and launched != mixed and int(os.environ.get("RANK", "0")) == 0:
            print(f"note: accelerate launch's mixed precision {launched!r} (its --mixed_precision, its config file or its "
                  f"default) is not used: the stage's params say precision {precision or 'fp32'} "
                  f"(set it with -S <stage>.precision=...)")
        _ACCELERATOR = Accelerator(mixed_precision=mixed)
    return _ACCELERATOR


def spec_from(section, name: str, seed: int) -> LoopSpec:
    """A LoopSpec from a params section (config.Loop); micro_batch null = no accumulation."""
    world = accelerator(section.precision).num_processes
    micro = section.micro_batch or max(1, section.global_batch // world)
    return LoopSpec(name=name, steps=section.steps, global_batch=section.global_batch, micro_batch=micro,
                    optim=section.optim, precision=section.precision, weights_dtype=section.weights_dtype, seed=seed,
                    checkpoint_every=section.checkpoint_every, log_every=section.log_every,
                    num_workers=section.num_workers)


def accumulation(spec: LoopSpec, world_size: int) -> int:
    per_step = spec.micro_batch * world_size
    if spec.global_batch % per_step:
        raise VLVError(
            f"{spec.name}: global_batch={spec.global_batch} is not a multiple of micro_batch x processes "
            f"= {spec.micro_batch} x {world_size}; change {spec.name}.global_batch or {spec.name}.micro_batch"
        )
    return spec.global_batch // per_step


# ----------------------------------------------------------------------------- sampling
class Stream(Dataset):
    """Position p -> dataset item of a seeded per-epoch permutation, plus its ``sample_id``."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.n = dataset, seed, len(dataset)
        if self.n == 0:
            raise VLVError("the training split is empty; check prepare.splits and the prepared data")
        self._perms: dict[int, torch.Tensor] = {}

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        perm = self._perms.get(epoch)
        if perm is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = self._perms[epoch] = torch.randperm(self.n, generator=g)
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
        return int(perm[offset])

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, position: int) -> dict:
        item = dict(self.dataset[self.index(position)])
        item["sample_id"] = position
        return item


class MicroBatches(Sampler):
    """This process's micro-batches of positions, from ``start_step`` to ``steps``."""

    def __init__(self, spec: LoopSpec, start_step: int, rank: int, world: int, accum: int):
        self.spec, self.start, self.rank, self.world, self.accum = spec, start_step, rank, world, accum

    def __iter__(self) -> Iterator[list[int]]:
        m, g = self.spec.micro_batch, self.spec.global_batch
        for step in range(self.start, self.spec.steps):
            for k in range(self.accum):
                first = step * g + (k * self.world + self.rank) * m
                yield list(range(first, first + m))

    def __len__(self) -> int:
        return (self.spec.steps - self.start) * self.accum


def sample_generators(sample_ids: torch.Tensor, seed: int, salt: int = 0) -> list[torch.Generator]:
    """One generator per sample, seeded by its position: randomness independent of batching."""
    return [torch.Generator().manual_seed((seed * 7919 + salt) * 1_000_003 + int(i)) for i in sample_ids]


def per_sample_randn(shape: tuple[int, ...], generators: list[torch.Generator]) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


def per_sample_randint(high: int, generators: list[torch.Generator]) -> torch.Tensor:
    return torch.stack([torch.randint(0, high, (), generator=g) for g in generators])


# --------------------------------------------------------------------------- checkpoints
def timesteps(n: int, generators: list[torch.Generator], high_share: float = 0.0, high_from: float = 0.7) -> torch.Tensor:
    """One diffusion timestep per sample, uniform over ``[0, n)``, except that a ``high_share``
    of samples draw from the noisiest ``1 - high_from`` of the schedule: there the noisy latent
    no longer shows the layout and only the conditioning can, so that is where it is learnt."""
    lo = int(high_from * n)
    out = []
    for g in generators:
        high = high_share > 0 and float(torch.rand((), generator=g)) < high_share
        out.append(torch.randint(lo if high else 0, n, (), generator=g))
    return torch.stack(out)


def _step_dirs(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.glob("step-*") if (p / "meta.json").is_file())


def _meta(d: Path) -> dict | None:
    """A checkpoint's meta.json, or None when it cannot be read (truncated, not JSON)."""
    try:
        meta = json.loads((d / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def latest_checkpoint(ckpt_dir: Path, fingerprint: str) -> Path | None:
    """The newest checkpoint made for ``fingerprint`` whose meta.json reads (its other files
    are read only on resume, which falls back further when one cannot be)."""
    for d in reversed(_step_dirs(ckpt_dir)):
        meta = _meta(d)
        if meta is not None and meta.get("fingerprint") == fingerprint:
            return d
    return None


def clear_checkpoints(ckpt_dir: str | Path) -> None:
    shutil.rmtree(ckpt_dir, ignore_errors=True)


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def _save(ckpt_dir: Path, step: int, model, optimizer, scheduler, meta: dict, acc) -> None:
    tmp = ckpt_dir / f".tmp-step-{step:08d}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(tmp / f"rng-{acc.process_index}.safetensors"))
    if acc.is_main_process:
        save_file(_trainable_state(acc.unwrap_model(model)), str(tmp / "weights.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "meta.json").write_text(json.dumps(meta))
    acc.wait_for_everyone()
    if acc.is_main_process:
        final = ckpt_dir / f"step-{step:08d}"
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in _step_dirs(ckpt_dir)[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


class Unreadable(VLVError):
    """A checkpoint file that cannot be read (truncated, corrupt, not plain tensors)."""


def _read(file: Path, reader: Callable[[Path], Any]) -> Any:
    """``reader(file)``, or Unreadable saying in one line which file and why."""
    try:
        with warnings.catch_warnings():  # torch.load warns about a foreign pickle before refusing it
            warnings.simplefilter("ignore")
            return reader(file)
    except pickle.UnpicklingError:
        raise Unreadable(f"{file.name} holds more than tensors and torch.load(weights_only=True) refused it") from None
    except (OSError, ValueError, RuntimeError, EOFError, SafetensorError) as err:
        why = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise Unreadable(f"{file.name}: {why}") from None


def _load(path: Path, model, optimizer, scheduler, acc) -> dict:
    """Read every file of checkpoint ``path`` (Unreadable if one cannot be), then load it into
    the model, optimizer, scheduler and RNG. Returns its meta."""
    meta = _meta(path)
    if meta is None or not all(k in meta for k in ("step", "losses", "seconds")):
        raise Unreadable("meta.json is not the JSON a checkpoint writes (truncated?)")
    weights = _read(path / "weights.safetensors", lambda f: load_file(str(f)))
    target = acc.unwrap_model(model)
    missing = [n for n, p in target.named_parameters() if p.requires_grad and n not in weights]
    if missing:
        raise Unreadable(f"weights.safetensors lacks {len(missing)} trainable tensors (e.g. {missing[0]})")
    bad = [n for n, w in weights.items() if w.is_floating_point() and not bool(torch.isfinite(w).all())]
    if bad:
        raise Unreadable(f"weights.safetensors holds non-finite values (e.g. {bad[0]})")
    optim_state = _read(path / "optimizer.pt", lambda f: torch.load(f, weights_only=True, map_location="cpu"))
    sched_state = _read(path / "scheduler.pt", lambda f: torch.load(f, weights_only=True))
    rng_file = path / f"rng-{acc.process_index}.safetensors"
    rng = _read(rng_file, lambda f: load_file(str(f))) if rng_file.is_file() else None
    with torch.no_grad():
        for n, p in target.named_parameters():
            if n in weights:
                p.copy_(weights[n].to(p.device, p.dtype))
    try:
        optimizer.load_state_dict(optim_state)
        scheduler.load_state_dict(sched_state)
    except (ValueError, KeyError, TypeError) as err:
        raise Unreadable(f"optimizer.pt or scheduler.pt does not fit this model ({err})") from None
    if rng is not None:
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return meta


def _resume(ckpt_dir: Path, fingerprint: str, model, optimizer, scheduler, acc, name: str) -> tuple[Path, dict] | None:
    """Load the newest checkpoint made for ``fingerprint`` that reads; one warning line for each
    newer one that does not (a truncated file, a planted pickle, non-finite weights). None when
    there is no checkpoint for it; VLVError when there are some and none reads."""
    bad: list[tuple[Path, str]] = []
    for d in reversed(_step_dirs(ckpt_dir)):
        meta = _meta(d)
        if meta is not None and meta.get("fingerprint") != fingerprint:
            continue  # made for other params or data
        try:
            meta = _load(d, model, optimizer, scheduler, acc)
        except Unreadable as err:
            bad.append((d, str(err)))
            if acc.is_main_process:
                print(f"warning: {name}: checkpoint {d} cannot be read ({err}); trying the one before it")
            continue
        return d, meta
    if bad:
        names = ", ".join(str(d) for d, _ in bad)
        raise VLVError(f"{name}: no checkpoint in {ckpt_dir} can be read ({bad[0][0].name}: {bad[0][1]}); "
                       f"delete {names} to start fresh")
    return None


# ---------------------------------------------------------------------------------- loop
def _param_groups(model: torch.nn.Module, optim: Optim) -> list[dict]:
    groups = model.param_groups(optim.lr) if hasattr(model, "param_groups") else [
        {"params": [p for p in model.parameters() if p.requires_grad], "lr": optim.lr}
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise VLVError("nothing to train: every parameter is frozen; check the stage's trainable setting")
    return groups


def _schedule(optimizer, optim: Optim, steps: int):
    from transformers import get_scheduler

    warmup = min(optim.warmup_steps, steps)
    if optim.min_lr_ratio:  # cosine that ends at min_lr_ratio x lr (validated in config)
        return get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=warmup, num_training_steps=steps,
                             scheduler_specific_kwargs={"min_lr_rate": optim.min_lr_ratio})
    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[optim.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=steps)


def _weights_dtype(model: torch.nn.Module, spec: LoopSpec, main: bool) -> None:
    """Trainable weights are fp32 master weights unless ``weights_dtype`` says bf16 (explicit, warned)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if spec.weights_dtype == "bf16":
        if main:
            print(f"warning: {spec.name}.weights_dtype bf16: the weights are held and updated in bf16 (half the memory), "
                  f"so AdamW updates smaller than bf16's resolution are lost; fp32 keeps them")
        model.to(torch.bfloat16)
        return
    wrong = sorted({str(p.dtype).removeprefix("torch.") for p in trainable if p.dtype != torch.float32})
    if wrong:
        raise VLVError(f"{spec.name}: trainable weights are {', '.join(wrong)}, not the float32 master weights "
                       f"weights_dtype fp32 asks for; load the parts with dtype=torch.float32")


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def train(
    model: torch.nn.Module,
    dataset: Dataset,
    spec: LoopSpec,
    ckpt_dir: str | Path,
    fingerprint: str,
    collate: Callable | None = None,
    log: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> Result:
    """Train ``model`` for ``spec.steps`` optimizer steps; resume from a matching checkpoint.

    ``on_step(done)`` runs after every step and its checkpoint (single process only): a sweep
    scores the model there, and may raise to stop (Optuna's TrialPruned); the model is back
    in training mode after it returns."""
    acc = accelerator()
    if on_step is not None and acc.num_processes > 1:
        raise VLVError(f"{spec.name}: on_step callbacks run in one process only (got {acc.num_processes})")
    ckpt_dir = Path(ckpt_dir)
    accum = accumulation(spec, acc.num_processes)
    if acc.num_processes > 1 and acc.mixed_precision != MIXED[spec.precision]:
        raise VLVError(f"{spec.name}: precision {spec.precision}, but this process's Accelerator was made for "
                       f"mixed precision {acc.mixed_precision!r}; run loops of other precisions in their own process")
    _weights_dtype(model, spec, acc.is_main_process)
    groups = _param_groups(model, spec.optim)
    # lr=optim.lr is the default of every group that names none (torch's own default is 1e-3)
    optimizer = torch.optim.AdamW(groups, lr=spec.optim.lr, betas=spec.optim.betas, weight_decay=spec.optim.weight_decay)
    scheduler = _schedule(optimizer, spec.optim, spec.steps)
    model = model.to(acc.device)
    ddp_model = acc.prepare_model(model) if acc.num_processes > 1 else model

    start, losses, seconds_before, hours_before = 0, [], 0.0, 0.0
    meter = cost.active()  # the stage's cost meter; None outside a stage run
    resumed = _resume(ckpt_dir, fingerprint, ddp_model, optimizer, scheduler, acc, spec.name)
    if acc.num_processes > 1:  # every process must resume from the same step (each reads its own RNG file)
        steps = acc.gather(torch.tensor([resumed[1]["step"] if resumed else -1], device=acc.device))
        if int(steps.min()) != int(steps.max()):
            raise VLVError(f"{spec.name}: the processes resume from different checkpoints in {ckpt_dir} "
                           f"(steps {sorted(set(steps.tolist()))}); delete the newer one to resume from the older")
    if resumed is None and _step_dirs(ckpt_dir) and acc.is_main_process:
        print(f"{spec.name}: checkpoints in {ckpt_dir} are for other params or data; starting fresh")
        clear_checkpoints(ckpt_dir)
    acc.wait_for_everyone()
    if resumed is not None:
        found, meta = resumed
        start, losses, seconds_before = meta["step"], meta["losses"], meta["seconds"]
        hours_before = meta.get("cost", {}).get("device_hours", 0.0)
        if meter is not None:  # spent before the kill: carried, not counted again
            meter.carry(hours_before, meta.get("cost", {}).get("samples", 0))
        if acc.is_main_process:
            print(f"{spec.name}: resuming from {found} (step {start} of {spec.steps})")

    loader = DataLoader(
        Stream(dataset, spec.seed),
        batch_sampler=MicroBatches(spec, start, acc.process_index, acc.num_processes, accum),
        num_workers=spec.num_workers,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(spec.seed),  # keeps the global RNG (dropout) untouched
    )
    autocast = (
        torch.autocast(acc.device.type, dtype=torch.bfloat16) if spec.precision == "bf16" else contextlib.nullcontext()
    )
    t0 = time.perf_counter()

    def meta(step: int) -> dict:
        elapsed = time.perf_counter() - t0
        spent = {"device_hours": hours_before + (meter.hours_for(elapsed) if meter else 0.0), "samples": step * spec.global_batch}
        return {"step": step, "losses": losses, "seconds": seconds_before + elapsed, "cost": spent,
                "fingerprint": fingerprint, "world_size": acc.num_processes, "name": spec.name}

    def over_budget(done: int) -> str | None:
        """The budget guard's verdict, the same on every process (main decides)."""
        if meter is None:
            return None
        per_step = (time.perf_counter() - t0) / (done - start) if done > start else 0.0
        line = meter.check(spec.name, spec.steps - done, per_step, done)
        stop = line is not None and cost.over_budget_action(meter, line)
        if acc.num_processes > 1:
            stop = bool(acc.reduce(torch.tensor(float(stop), device=acc.device), reduction="max"))
        return (line or f"{spec.name}: over budget (another process's check)") if stop else None

    def checkpoint(done: int) -> None:
        """Save step ``done``, only with finite weights: the NaN guard's "last good" checkpoint
        (and the one a re-run resumes from) never holds weights an update blew up."""
        trainable = [p for g in groups for p in g["params"]]
        if not bool(torch.stack([torch.isfinite(p).all() for p in trainable]).all()):
            bar.close()
            kept = latest_checkpoint(ckpt_dir, fingerprint)
            raise VLVError(
                f"{spec.name}: the weights are not finite after step {done} (the update blew up; the loss was "
                f"{losses[-1]}); not saved. Last good checkpoint: {kept or 'none'}. Lower {spec.name} lr or check the inputs"
            )
        _save(ckpt_dir, done, ddp_model, optimizer, scheduler, meta(done), acc)

    line = over_budget(start)
    if line:
        raise VLVError(f"{line}; nothing run. Raise cost.budget_usd to go on")

    bar = tqdm(total=spec.steps, initial=start, desc=spec.name, unit="step", disable=not (progress and acc.is_main_process))
    batches = iter(loader)
    ddp_model.train()
    for step in range(start, spec.steps):
        total = torch.zeros((), device=acc.device)
        for k in range(accum):
            batch = _to_device(next(batches), acc.device)
            sync = contextlib.nullcontext() if k == accum - 1 or acc.num_processes == 1 else acc.no_sync(ddp_model)
            with sync:
                with autocast:
                    loss = ddp_model(batch)
                (loss.float() / accum).backward()
            total += loss.detach().float() / accum
        mean_loss = float(acc.reduce(total, reduction="mean")) if acc.num_processes > 1 else float(total)
        if not math.isfinite(mean_loss):
            bar.close()
            kept = latest_checkpoint(ckpt_dir, fingerprint)
            raise VLVError(
                f"{spec.name}: loss is {mean_loss} at step {step + 1}; stopped before the update. "
                f"Last good checkpoint: {kept or 'none'}. Lower {spec.name} lr or check the inputs"
            )
        grad_norm = None
        if spec.optim.grad_clip:
            grad_norm = acc.clip_grad_norm_([p for g in groups for p in g["params"]], spec.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(mean_loss)
        done = step + 1
        if meter is not None:
            meter.add_samples(spec.global_batch)
        bar.update()
        if done % max(1, spec.log_every) == 0 or done == spec.steps:
            bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
            if log is not None and acc.is_main_process:
                window = losses[-max(1, spec.log_every):]
                metrics = {"loss": sum(window) / len(window), "lr": scheduler.get_last_lr()[0]}
                if grad_norm is not None:
                    metrics["grad_norm"] = float(grad_norm)
                log(done, metrics)
        saved = (spec.checkpoint_every and done % spec.checkpoint_every == 0) or done == spec.steps
        if saved:
            checkpoint(done)
        line = over_budget(done) if meter is not None and meter.due(done, start) and done < spec.steps else None
        if line:
            if not saved:
                checkpoint(done)
            bar.close()
            raise VLVError(f"{line}; stopped, checkpoint {ckpt_dir / f'step-{done:08d}'} kept: raise cost.budget_usd and re-run to resume")
        if on_step is not None:
            try:
                on_step(done)
            except BaseException:
                bar.close()
                raise
            ddp_model.train()
    bar.close()
    final = meta(spec.steps)
    return Result(steps=spec.steps, losses=losses, seconds=final["seconds"],
                  samples=(spec.steps - start) * spec.global_batch, resumed_from=start)


def fingerprint(*parts: Any) -> str:
    """A short hash of what a checkpoint was made for (params sections, data hash, ...)."""
    import hashlib

    def plain(x: Any) -> Any:
        return x.model_dump(mode="json") if hasattr(x, "model_dump") else x

    blob = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
