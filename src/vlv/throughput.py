"""`vlv bench-arch`: training throughput of a card set's architecture, with random weights.

Builds the stage-1 model (Florence-2 -> queries -> projection -> frozen CLIP -> frozen UNet,
frozen VAE) and the stage-2 model (encoder -> frozen CLIP -> MLP -> LLM prefix) from the
architecture cards (nothing is downloaded), with the trainable parts its profile's params give
the stages (stage1.trainable, stage2.trainable: profiles/paper.yaml for the paper card set, the
embedded defaults for the embedded one), and times training steps in two settings:

- ``official``: the reference recipe's setting: stage 1 in fp32 with UNet gradient
  checkpointing and the frozen VAE encoding every batch again, stage 2 in bf16 (docs/METHOD.md);
  Florence-2 with eager attention (the reference runs the hub's remote-code Florence-2, whose
  attention is written out by hand), the other parts with their libraries' defaults;
- ``ours``: this project's: bf16 autocast (or ``--precision fp32``), SDPA attention, VAE
  latents read from the cache (encoded once per dataset, vlv.latents), optional torch.compile.

For each stage and setting: samples/s (median step), peak device memory, FLOPs of one step
(torch.utils.flop_counter; recomputation under checkpointing included) and MFU against the
device's dense peak for the setting's precision. A CUDA run appends one throughput record per
stage and setting to benchmarks/throughput.csv (read by the cost projection, [D]) and the full
numbers to benchmarks/bench_arch.jsonl. ``--device meta`` counts FLOPs per sample only (no
memory, no time): what a paper-size step costs, on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import cards, components, config, cost, vocab, world
from .autoencoder import VLVAutoencoder, VLVEncoder
from .captioner import Captioner
from .errors import VLVError


@dataclass(frozen=True)
class CardSet:
    """The parts and the step shape of one benchmark (per device: micro-batches)."""

    t2i: str
    vision: str
    llm: str
    resolution: int       # image side fed to the VAE and to Florence-2
    num_queries: int
    stage1_batch: int
    stage2_batch: int
    caption_tokens: int   # target tokens per caption in stage 2
    profile: str          # the profile whose params say which parts train (stage1.trainable, stage2.trainable)


CARD_SETS = {
    # docs/METHOD.md: resolution 384 (latents 48x48), Nq 77; stage 1 batch 512 on 8 GPUs = 64 per GPU;
    # stage 2 batch 64 on 8 GPUs = 8 per GPU, captions of 227 tokens on average
    "paper": CardSet("sd-2.1-base", "florence2-large", "qwen2.5-3b", 384, 77, 64, 8, 227, "paper"),
    # the embedded world (params.yaml defaults): a CPU check of the code path
    "embedded": CardSet("t2i-tiny", "florence2-tiny", "llm-tiny", 32, 24, 32, 32, 24, "embedded"),
}

# Dense peak TFLOP/s per device from vendor datasheets: (bf16 tensor core, fp32 non-tensor).
PEAK_TFLOPS = {  # keys: cost.GPU_RULES' device kinds
    "gh200": (989.0, 67.0),
    "h200": (989.0, 67.0),
    "h100-sxm": (989.0, 67.0),
    "h100-nvl": (835.0, 60.0),
    "h100-pcie": (756.0, 51.0),
    "a100-80gb": (312.0, 19.5),
    "a100-40gb": (312.0, 19.5),
    "l40s": (362.0, 91.6),
    "rtx-6000-ada": (364.0, 91.1),
    "l4": (121.0, 30.3),
}


@dataclass(frozen=True)
class Setting:
    name: str               # official | ours
    precision: str          # fp32 | bf16 (autocast; weights stay fp32)
    checkpointing: bool     # UNet gradient checkpointing
    cached_latents: bool    # False: the frozen VAE encodes every batch
    eager_vision: bool      # Florence-2 with eager attention (else SDPA)
    compile: bool = False

    @property
    def label(self) -> str:
        """The throughput record's ``precision`` column: the setting, for the cost projection."""
        return "official" if self.name == "official" else self.precision + ("+compile" if self.compile else "")


@dataclass
class Measurement:
    stage: str
    setting: str
    precision: str
    batch: int
    seconds_per_step: list[float] = field(default_factory=list)
    samples_per_s: float | None = None
    peak_memory_gib: float | None = None
    flops_per_step: float | None = None
    tflops_per_sample: float | None = None
    mfu: float | None = None


def settings(stage: str, precision: str, compile: bool) -> list[Setting]:
    official = "fp32" if stage == "stage1" else "bf16"  # docs/METHOD.md: stage 1 FP32 "for stability", stage 2 bf16
    return [Setting("official", official, checkpointing=True, cached_latents=False, eager_vision=True),
            Setting("ours", precision, checkpointing=False, cached_latents=True, eager_vision=False, compile=compile)]


def _tokenizer():
    """A real Qwen2 tokenizer over the shapes world's words: stage 2 needs eos/pad ids; the
    benchmark's caption ids are random, so the vocabulary itself does not matter."""
    return vocab.qwen2_tokenizer([s.caption() for s in world.sample_scenes(0, 200)])


def recipe(cs: CardSet) -> config.Params:
    """The params of the card set's profile (profiles/<profile>.yaml of this project over the
    defaults): the stages' trainable parts come from them, as in the stages."""
    from .tracking import root_dir

    return config.load(root_dir() / "profiles" / f"{cs.profile}.yaml")


def build_stage1(cs: CardSet, setting: Setting, params: config.Params) -> VLVAutoencoder:
    t2i = components.build_t2i(cs.t2i)
    vision = components.build_vision(_vision_card(cs))
    vision.image_size = cs.resolution
    encoder = VLVEncoder(vision, cs.num_queries, int(t2i.text_encoder.config.hidden_size))
    encoder.set_trainable(params.stage1.trainable)
    model = VLVAutoencoder(encoder, t2i)
    _attention(model, setting)
    if setting.checkpointing:
        model.unet.enable_gradient_checkpointing()
    return model


def build_stage2(cs: CardSet, setting: Setting, params: config.Params) -> Captioner:
    t2i_text = cards.build(cs.t2i, "text_encoder")
    tok = _tokenizer()
    extra = {"vocab_size": len(tok)} if cs.llm.endswith("tiny") else {}  # paper: the card's 151936
    llm = cards.build(cs.llm, "model", eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra)
    vision = components.build_vision(_vision_card(cs))
    vision.image_size = cs.resolution
    encoder = VLVEncoder(vision, cs.num_queries, int(t2i_text.config.hidden_size))
    model = Captioner(encoder, t2i_text, None, llm, tok, max_caption_tokens=cs.caption_tokens)
    model.set_trainable(params.stage2.trainable, params.stage1.trainable)
    _attention(model, setting)
    return model


def _vision_card(cs: CardSet) -> dict:
    card = cards.load_card(cs.vision)
    if "prompt_ids" not in card:  # the paper card names its prompt in words; timing needs only its length
        card["prompt_ids"] = [0] + [3] * 10 + [2]
    return card


def _attention(model: torch.nn.Module, setting: Setting) -> None:
    """Florence-2 eager or SDPA; every other transformers part SDPA; the UNet's processor SDPA."""
    model.encoder.florence.set_attn_implementation("eager" if setting.eager_vision else "sdpa")
    unet = getattr(model, "unet", None)
    if unet is not None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        unet.set_attn_processor(AttnProcessor2_0())


def stage1_batch(model: VLVAutoencoder, cs: CardSet, setting: Setting, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.rand((cs.stage1_batch, 3, cs.resolution, cs.resolution), generator=g) * 2 - 1
    batch = {"pixel_values": x.to(device), "sample_id": torch.arange(cs.stage1_batch)}
    if setting.cached_latents:
        c, h, w = model.latent_shape(cs.resolution)
        batch["latent_mean"] = torch.randn((cs.stage1_batch, c, h, w), generator=g).to(device)
        batch["latent_std"] = torch.full((cs.stage1_batch, c, h, w), 0.01).to(device)
    return batch


def stage2_batch(model: Captioner, cs: CardSet, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.rand((cs.stage2_batch, 3, cs.resolution, cs.resolution), generator=g) * 2 - 1
    ids = torch.randint(3, len(model.tokenizer), (cs.stage2_batch, cs.caption_tokens), generator=g)
    ids[:, -1] = model.tokenizer.eos_token_id
    return {"x": x.to(device), "ids": ids.to(device), "mask": torch.ones_like(ids).to(device)}


def make_step(model: torch.nn.Module, loss_fn: Callable[[dict], torch.Tensor] | None = None,
              device: torch.device = torch.device("cpu"), bf16: bool = False) -> Callable[[dict], torch.Tensor]:
    """``step(batch)``: one bare training step as the shared loop takes it (forward = loss,
    backward, clip to 1.0, AdamW update), nothing logged; returns the detached loss. On the meta
    device there is no update (FLOP counting only). Also used by tests/benchmarks and
    scripts/bench_overhead.py, so the three time the same step."""
    loss_fn = loss_fn or model
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=device.type == "cuda") if device.type != "meta" else None
    bf16 = bf16 and device.type != "meta"  # meta only counts FLOPs: the count is the same
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step(batch: dict) -> torch.Tensor:
        with autocast:
            loss = loss_fn(batch)
        loss.float().backward()
        if optimizer is not None:
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            for p in trainable:
                p.grad = None
        return loss.detach()

    return step


def count_flops(step: Callable[[dict], None], batch: dict) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(batch)
    return float(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(stage: str, cs: CardSet, setting: Setting, device: torch.device, warmup: int, steps: int,
            peak_tflops: float | None, params: config.Params) -> Measurement:
    """Build (trainable parts from ``params``), warm up, count the FLOPs of one step, time
    ``steps`` steps; free the model."""
    ctx = torch.device("meta") if device.type == "meta" else contextlib.nullcontext()
    with ctx:
        model = build_stage1(cs, setting, params) if stage == "stage1" else build_stage2(cs, setting, params)
    model = model.to(device)
    model.train()
    if device.type == "meta":  # SDPA's mask shortcuts read values (.item()); eager attention counts the same matmuls
        from transformers import PreTrainedModel

        for sub in model.modules():
            if isinstance(sub, PreTrainedModel):
                sub.set_attn_implementation("eager")
    if stage == "stage1":
        batch, loss_fn = stage1_batch(model, cs, setting, device), model
        n = cs.stage1_batch
    else:
        batch, n = stage2_batch(model, cs, device), cs.stage2_batch
        loss_fn = lambda b: model.loss(b["x"], b["ids"], b["mask"])  # noqa: E731
    step = make_step(model, loss_fn, device, bf16=setting.precision == "bf16")
    m = Measurement(stage, setting.name, setting.label, n)
    m.flops_per_step = count_flops(step, batch)  # before compiling: the counter sees eager ops
    m.tflops_per_sample = m.flops_per_step / n / 1e12
    if device.type == "meta":
        return m
    if setting.compile:  # the loss looks these up at call time, so the compiled modules run
        model.encoder = torch.compile(model.encoder)
        if stage == "stage1":
            model.unet = torch.compile(model.unet)
        else:
            model.llm = torch.compile(model.llm)
    for _ in range(warmup):
        step(batch)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(steps):
        t0 = time.perf_counter()
        step(batch)
        _sync(device)
        m.seconds_per_step.append(time.perf_counter() - t0)
    if device.type == "cuda":
        m.peak_memory_gib = torch.cuda.max_memory_allocated(device) / 2**30
    median = statistics.median(m.seconds_per_step)
    m.samples_per_s = n / median
    if peak_tflops:
        m.mfu = m.flops_per_step / median / (peak_tflops * 1e12)
    del model, step, batch
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return m


def check_device(device: str, card: str) -> torch.device:
    """One line, before any compute, when this machine cannot run the request."""
    if device == "cuda" and not torch.cuda.is_available():
        raise VLVError("bench-arch: no CUDA GPU on this machine (torch.cuda.is_available() is False); run it on a GPU "
                       "machine, or `--device meta` to count the FLOPs only, or `--card embedded --device cpu` to check the code path")
    if device == "cpu" and card == "paper":
        raise VLVError("bench-arch: the paper card on CPU needs tens of GB and minutes per step; use --device cuda, "
                       "or --device meta to count its FLOPs only")
    if device not in ("cuda", "cpu", "meta"):
        raise VLVError(f"bench-arch: --device {device!r}; choose cuda, cpu or meta")
    return torch.device(device)


def run(card: str = "paper", device: str = "cuda", precision: str = "bf16", compile: bool = False, warmup: int = 2,
        steps: int = 5, stages: tuple[str, ...] = ("stage1", "stage2"), records: str | Path | None = "benchmarks/throughput.csv",
        details: str | Path | None = "benchmarks/bench_arch.jsonl", batch_scale: float = 1.0) -> list[Measurement]:
    if card not in CARD_SETS:
        raise VLVError(f"bench-arch: --card {card!r}; choose one of {sorted(CARD_SETS)}")
    if precision not in ("bf16", "fp32"):
        raise VLVError(f"bench-arch: --precision {precision!r}; choose bf16 or fp32")
    if steps < 1 or warmup < 0 or batch_scale <= 0:
        raise VLVError(f"bench-arch: need --steps >= 1, --warmup >= 0, --batch-scale > 0 (got {steps}, {warmup}, {batch_scale})")
    dev = check_device(device, card)
    cs = CARD_SETS[card]
    if batch_scale != 1.0:
        cs = CardSet(**{**asdict(cs), "stage1_batch": max(1, round(cs.stage1_batch * batch_scale)),
                        "stage2_batch": max(1, round(cs.stage2_batch * batch_scale))})
    kind = cost.device(device_type="cuda" if dev.type == "cuda" else "cpu")[0] if dev.type != "meta" else "meta"
    peaks = PEAK_TFLOPS.get(kind)
    params = recipe(cs)
    out = []
    for stage in stages:
        for s in settings(stage, precision, compile):
            peak = (peaks[0] if s.precision == "bf16" else peaks[1]) if peaks else None
            m = measure(stage, cs, s, dev, warmup, steps, peak, params)
            out.append(m)
            print(line(m), flush=True)
    if dev.type == "cuda":
        write(out, card, cs, kind, torch.cuda.get_device_name(), records, details)
    elif dev.type == "meta":  # FLOPs only: no throughput record, the counts go to the details
        write(out, card, cs, "meta", "meta (FLOPs counted, nothing timed)", None, details)
    return out


def line(m: Measurement) -> str:
    parts = [f"{m.stage} {m.setting} ({m.precision}, batch {m.batch}):"]
    if m.samples_per_s is not None:
        parts.append(f"{m.samples_per_s:.2f} samples/s")
    if m.peak_memory_gib is not None:
        parts.append(f"peak {m.peak_memory_gib:.1f} GiB")
    parts.append(f"{m.tflops_per_sample:.3g} TFLOP/sample")
    if m.mfu is not None:
        parts.append(f"MFU {m.mfu:.1%}")
    return " ".join(parts)


def ratios(ms: list[Measurement]) -> dict[str, float]:
    """ours / official samples/s per stage."""
    by = {(m.stage, m.setting): m for m in ms}
    return {st: by[(st, "ours")].samples_per_s / by[(st, "official")].samples_per_s
            for st in {m.stage for m in ms}
            if by.get((st, "ours")) and by.get((st, "official")) and by[(st, "official")].samples_per_s}


def write(ms: list[Measurement], card: str, cs: CardSet, kind: str, device_name: str, records, details) -> None:
    from .tracking import git_commit

    commit, today = git_commit()[0], dt.date.today().isoformat()
    if records:
        for m in ms:
            cost.append_record(records, cost.ThroughputRecord(kind, 1, card, m.stage, m.samples_per_s, m.precision, commit, today))
    if details:
        Path(details).parent.mkdir(parents=True, exist_ok=True)
        with open(details, "a") as fh:
            fh.write(json.dumps({"date": today, "commit": commit, "device_kind": kind,
                                 "device_name": device_name, "card": card, "card_set": asdict(cs),
                                 "torch": torch.__version__, "ratios": ratios(ms),
                                 "measurements": [asdict(m) for m in ms]}) + "\n")
