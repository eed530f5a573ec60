"""The paper profile's first minute: the component folders load, and one tiny batch runs through
every part, before any data is prepared or latent encoded.

Stage 1's and stage 2's models are built by the same builders the stages use
(``autoencoder.build``, ``captioner.build``), so what is checked is what will run: the
dtypes the stage's params ask for, the widths chaining (Florence -> projection -> CLIP ->
UNet; CLIP -> MLP -> LLM), the tokenizers having the tokens they need, the task prompt, a
forward and backward of each stage's loss on two images (under the stage's precision, on the
stage's device), a few DDIM steps from their captions, a reconstruction and a short caption.
Any failure is one line naming the part, its folder and what did not match.

Two batches: ``builtin_batch`` (two pictures drawn here, no data at all) is what the `verify`
stage runs first under ``dvc repro``; ``prepared_batch`` (the first prepared pairs) is what
`pretrain` in verify mode runs after `prepare`, on the user's own images and captions.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import autoencoder, captioner, components, data, plots
from .config import Params
from .errors import VLVError
from .train import accelerator


def _autocast(precision: str, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def _check(part: str, folder: str | None, fn: Callable):
    """Run one check; turn whatever it raises into one line naming the part and its folder."""
    try:
        return fn()
    except VLVError as err:
        raise VLVError(f"verify {part}: {err}") from None
    except Exception as err:  # the libraries raise many types for a mismatched part
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise VLVError(f"verify {part} ({folder or 'from its card'}): {type(err).__name__}: {first}") from None


def _dtypes(part: str, folder: str | None, module: torch.nn.Module, want: torch.dtype) -> None:
    found = sorted({str(p.dtype).removeprefix("torch.") for p in module.parameters() if p.dtype != want})
    if found:
        raise VLVError(f"verify {part} ({folder}): weights are {', '.join(found)} after loading, the stage asks for "
                       f"{str(want).removeprefix('torch.')}")


def _grads(part: str, module: torch.nn.Module) -> None:
    frozen_path = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    if frozen_path:
        raise VLVError(f"verify {part}: no gradient reached {len(frozen_path)} trainable tensors (e.g. {frozen_path[0]}); "
                       f"the loss does not depend on them")


@dataclass(frozen=True)
class Batch:
    pixel_values: torch.Tensor  # B x 3 x S x S in [-1, 1]
    captions: list[str]
    source: str  # for the record: "built-in" or the prepared data's folder


def builtin_batch(size: int) -> Batch:
    """Two pictures drawn here at ``size`` px (a red-to-blue gradient, a black-and-white
    checkerboard) and their captions: the first-minute check needs no prepared data."""
    ramp = torch.linspace(-1.0, 1.0, size)
    gradient = torch.stack([-ramp, torch.full_like(ramp, -1.0), ramp])[:, None, :].expand(3, size, size)
    cells = (torch.arange(size) * 8 // size) % 2
    checker = ((cells[:, None] + cells[None, :]) % 2 * 2.0 - 1.0).expand(3, size, size)
    return Batch(torch.stack([gradient, checker]).contiguous(),
                 ["a smooth gradient from red on the left to blue on the right",
                  "a black and white checkerboard of eight by eight squares"], "built-in")


def prepared_batch(data_root: Path) -> Batch:
    """The first two captioned pairs of the prepared data (the user's own images and captions)."""
    pairs = data.ShardDataset(data_root, "pairs", captions=True, limit=2)
    if len(pairs) == 0:
        raise VLVError(f"verify: {data_root} has no pairs; the check needs captioned images (prepare.splits.pairs above 0)")
    return Batch(pairs.pixel_values(), pairs.rows["caption"].tolist(),
                 str(data_root))


def verify_folders(params: Params, batch: Batch, out: Path | None = None, plots_dir: Path | None = None) -> dict:
    """Load every component folder and run ``batch`` through every part; the numbers as a dict
    (``verify_seconds``: loading and running, the stage's start-up aside). ``out``: write
    out/VERIFIED.json; ``plots_dir``: the teacher's samples and the losses as PNGs."""
    c, s1, s2, ev = params.components, params.stage1, params.stage2, params.pretrain.eval
    t0 = time.perf_counter()
    device = accelerator(s1.precision).device
    x = batch.pixel_values.to(device)
    losses: dict[str, float] = {}

    # stage 1: Florence-2 -> queries -> projection -> frozen CLIP -> frozen UNet, loss and its gradients
    model = _check("stage 1 (components.t2i + components.vision)", c.t2i, lambda: autoencoder.build(params))
    want1 = components.DTYPES[s1.weights_dtype]
    _dtypes("T2I UNet", c.t2i, model.unet, want1)
    _dtypes("T2I text encoder", c.t2i, model.clip.text_encoder, want1)
    _dtypes("Florence-2", c.vision, model.encoder.florence, want1)
    model.to(device)

    def stage1_loss() -> float:
        model.train()
        with _autocast(s1.precision, device):
            loss = model({"pixel_values": x, "sample_id": torch.arange(len(x))})
        loss.float().backward()
        return float(loss.detach())

    losses["stage1_denoising"] = _check("stage 1 batch (Florence-2 -> CLIP -> UNet)", c.vision, stage1_loss)
    _grads("stage 1", model.encoder)
    model.zero_grad(set_to_none=True)
    model.eval()
    prompts = batch.captions[: max(1, min(4, ev.prompts))]
    with torch.no_grad(), _autocast(s1.precision, device):
        painted = _check("T2I sampling (components.t2i)", c.t2i, lambda: model.generate(
            model.clip.from_text(prompts), params.prepare.image_size, ev.guidance_scale, ev.steps, seed=params.seed))
        _check("stage 1 reconstruction", c.t2i, lambda: model.reconstruct(x[:1], s1.eval.guidance_scale, 2, seed=params.seed))

    # stage 2: the same encoder -> CLIP -> MLP -> LLM prefix, caption loss, gradients, a short caption
    cap = _check("stage 2 (components.t2i text encoder + components.llm)", c.llm,
                 lambda: captioner.build(params, encoder=model.encoder))
    _dtypes("LLM", c.llm, cap.llm, components.DTYPES[s2.weights_dtype])
    cap.to(device)

    def stage2_loss() -> float:
        cap.train()
        ids, mask = cap.caption_ids(batch.captions, device)
        with _autocast(s2.precision, device):
            loss = cap.loss(x, ids, mask)
        loss.float().backward()
        return float(loss.detach())

    losses["stage2_caption"] = _check("stage 2 batch (encoder -> CLIP -> MLP -> LLM)", c.llm, stage2_loss)
    _grads("stage 2 LLM", cap.llm if "llm" in s2.trainable else cap.mlp)
    cap.zero_grad(set_to_none=True)
    with torch.no_grad(), _autocast(s2.precision, device):
        sample = _check("stage 2 generation (components.llm)", c.llm, lambda: cap.generate(x[:1], 1, 4))
    seconds = time.perf_counter() - t0

    sizes = {"t2i_unet_params": components.param_count(model.unet), "vision_params": components.param_count(model.encoder.florence),
             "llm_params": components.param_count(cap.llm)}
    if plots_dir is not None:
        plots_dir.mkdir(parents=True, exist_ok=True)
        plots.image_grid([list(plots.to_uint8(painted.float().cpu()))], plots_dir / "teacher_samples.png",
                         col_titles=[p[:40] for p in prompts],
                         title=f"frozen T2I ({c.t2i}) from {batch.source} captions: CFG {ev.guidance_scale:g}, {ev.steps} DDIM steps")
        plots.bars(losses, plots_dir / "losses.png", title="verify: loss of one tiny batch per stage", ylabel="loss")
    if out is not None:
        report = {"t2i": c.t2i, "vision": c.vision, "llm": c.llm, "vision_task": c.vision_task, "batch": batch.source,
                  "prompt_tokens": len(model.encoder.prompt_ids), "device": str(device), **sizes}
        out.mkdir(parents=True, exist_ok=True)
        (out / "VERIFIED.json").write_text(json.dumps(report, indent=2) + "\n")
    return {**sizes, "verify_batch": batch.source, "verify_losses": losses, "verify_caption_sample": sample[0],
            "verify_seconds": seconds}
