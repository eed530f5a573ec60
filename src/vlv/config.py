"""Typed params: the only reader of params.yaml (and of profiles/*.yaml).

``load(path)`` validates the whole file against the schema below before any compute.
An unknown key, a wrong type or an out-of-range value raises ``ParamsError`` with one
line naming the dotted key, what is allowed, and what was given. ``load_with_note`` (what
`vlv params` and every stage call) also checks what the params name on disk: ``check_paths``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ParamsError

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Beta = Annotated[float, Field(ge=0, lt=1)]
Channel = Annotated[int, Field(ge=0, le=255)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Splits(Section):
    """Shares of the accepted inputs; they must sum to 1.

    ``images`` feed stage 1 without captions, ``pairs`` (captioned only) feed stage 2,
    ``val`` and ``test`` are held out. The ``web`` split (the downloaded parts' corpus) is
    not a share: ``prepare.web_images`` more images from their own scene stream.
    """

    images: Fraction = 0.87
    pairs: Fraction = 0.10
    val: Fraction = 0.015
    test: Fraction = 0.015

    @model_validator(mode="after")
    def _sum_to_one(self) -> "Splits":
        total = self.images + self.pairs + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"the shares images+pairs+val+test must sum to 1, they sum to {total:g}")
        return self


class Prepare(Section):
    source: Literal["synthetic", "folder", "parquet", "webdataset"] = "synthetic"
    path: str | None = Field(None, description="input folder, parquet file/folder, or folder/glob of .tar shards")
    num_images: PosInt = Field(20000, description="synthetic only: accepted images to render (the images/pairs/val/test splits)")
    web_images: NonNegInt = Field(
        0, description="synthetic only: images of the web split, rendered from their own scene stream (disjoint "
                       "from the other splits): the corpus of the parts pretrain.mode train trains (T2I, LM, "
                       "classifier, the vision encoder's boxes)")
    image_size: Annotated[int, Field(ge=8, le=4096)] = 32
    splits: Splits = Splits()
    min_side: PosInt = Field(16, description="reject inputs whose short side is smaller")
    max_megapixels: PosFloat = Field(40.0, description="reject inputs larger than this (decompression bombs)")
    max_aspect: Annotated[float, Field(ge=1)] = Field(2.0, description="reject inputs with long/short side above this")
    composite_background: tuple[Channel, Channel, Channel] = (255, 255, 255)
    shard_size: PosInt = 4096
    image_column: str = "image"
    caption_column: str = "caption"
    key_column: str | None = "key"

    @model_validator(mode="after")
    def _path_for_source(self) -> "Prepare":
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"source {self.source!r} needs prepare.path (the input to ingest)")
        if self.source != "synthetic" and self.web_images:
            raise ValueError(f"web_images {self.web_images} needs source synthetic (got {self.source!r}): the web split is "
                             "rendered from the shapes world; with real data the paper downloads those parts; set prepare.web_images: 0")
        return self


class Tracking(Section):
    experiment: str = "vlv"
    system_metrics: bool = True
    system_metrics_interval_s: PosFloat = 2.0
    model_name: str | None = Field("vlv-captioner", description="MLflow registered-model name of the captioner; null = log, don't register")


# The folders `pretrain` writes in mode train, per component: a component that names its folder
# is trained in this run; any other folder is loaded as it is (shipped, or the user's own).
MADE_HERE = {"t2i": "models/pretrained/t2i", "llm": "models/pretrained/llm", "vision": "models/pretrained/vision",
             "classifier": "models/pretrained/classifier"}
SHIPPED = "pretrained/shapes-world"  # the shapes world's parts, trained once by profiles/pretrain.yaml
T2I_CARD = "t2i-tiny"  # the architecture card (src/vlv/cards/) pretrain builds models/pretrained/t2i from


class Components(Section):
    """Where the pretrained parts come from: local folders, never hub ids."""

    t2i: str = Field(f"{SHIPPED}/t2i", description="diffusers folder (stable-diffusion-2-1-base layout)")
    vision: str | None = Field(f"{SHIPPED}/vision", description="Florence-2 folder; null = random weights from vision_card")
    vision_card: str = "florence2-tiny"
    vision_task: str = Field("<MORE_DETAILED_CAPTION>", pattern=r"^<[A-Z_]+>$",
                             description="Florence-2 task token; its prompt comes from the processor's own table")
    llm: str = Field(f"{SHIPPED}/llm", description="transformers causal-LM folder")
    classifier: str | None = Field(f"{SHIPPED}/classifier", description="shapes-world attribute classifier (evaluate); null = none")


class Optim(Section):
    lr: PosFloat
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    weight_decay: NonNegFloat = 0.01
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.0, description="cosine only: decay to this share of lr instead of to 0 (a flatter end)")
    warmup_steps: NonNegInt = 0
    grad_clip: PosFloat | None = 1.0

    @model_validator(mode="after")
    def _floor_needs_cosine(self) -> "Optim":
        if self.min_lr_ratio and self.schedule != "cosine":
            raise ValueError(f"min_lr_ratio {self.min_lr_ratio:g} needs schedule cosine (got {self.schedule!r}); set it to 0")
        return self


class Loop(Section):
    """Settings of one run of the shared training loop (vlv.train)."""

    steps: PosInt = 100
    global_batch: PosInt = 32
    micro_batch: PosInt | None = Field(None, description="per process; null = global_batch / processes (no accumulation)")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="compute: fp32, or bf16 autocast over fp32 weights")
    weights_dtype: Literal["fp32", "bf16"] = Field(
        "fp32", description="dtype the weights are loaded and updated in; bf16 halves their memory but AdamW "
                            "updates smaller than bf16's resolution are lost (a warning says so)")
    optim: Optim = Optim(lr=1e-3)
    checkpoint_every: NonNegInt = Field(100, description="steps between checkpoints; 0 = only at the end")
    log_every: PosInt = 10
    num_workers: NonNegInt = 0

    @model_validator(mode="after")
    def _bf16_weights_need_bf16_compute(self) -> "Loop":
        if self.weights_dtype == "bf16" and self.precision != "bf16":
            raise ValueError("weights_dtype bf16 needs precision bf16 (fp32 compute on bf16 weights mixes dtypes); "
                             "set precision: bf16, or weights_dtype: fp32")
        return self


class VAELoop(Loop):
    steps: PosInt = 400
    optim: Optim = Optim(lr=3e-3, warmup_steps=20, min_lr_ratio=0.25)
    kl_weight: NonNegFloat = 1e-6


class ClipLoop(Loop):
    """CLIP-style contrastive pretraining of the teacher's text encoder against a tiny ViT
    (SD's text encoder is a frozen, contrastively pretrained CLIP); steps 0 = skip it."""

    steps: NonNegInt = 0
    global_batch: PosInt = 64
    optim: Optim = Optim(lr=1e-3, warmup_steps=30)


class TeacherLoop(Loop):
    steps: PosInt = 500
    global_batch: PosInt = 64
    optim: Optim = Optim(lr=1e-3, warmup_steps=100, min_lr_ratio=0.1)
    train_text_encoder: bool = Field(True, description="train the text encoder with the UNet (false: frozen, as SD's CLIP)")
    caption_dropout: Fraction = 0.1
    high_noise_share: Fraction = Field(0.5, description="share of samples with t from the noisiest part of the schedule")
    high_noise_from: Fraction = Field(0.7, description="where that noisiest part starts, as a share of the timesteps")
    snr_gamma: PosFloat | None = Field(None, description="min-SNR loss weighting; null = plain MSE")


class LMLoop(Loop):
    steps: PosInt = 200
    optim: Optim = Optim(lr=2e-3, warmup_steps=20)


class VisionLoop(Loop):
    """The vision encoder (Florence-2 from ``components.vision_card``) pretrained on Florence-2's
    <OD> task with one generic label, on the web split's images and object boxes (no caption);
    trained when components.vision is models/pretrained/vision."""

    steps: PosInt = 1500
    global_batch: PosInt = 32
    optim: Optim = Optim(lr=1e-3, warmup_steps=50, min_lr_ratio=0.25)
    val_images: PosInt = Field(300, description="val images its detections, caption attempt and linear probe are scored on")


class ClassifierLoop(Loop):
    """The world's attribute classifier (its "Inception"), used by evaluate."""

    steps: PosInt = 300
    global_batch: PosInt = 64
    optim: Optim = Optim(lr=2e-3, warmup_steps=20)


class PretrainEval(Section):
    prompts: PosInt = Field(120, description="world captions the saved teacher paints, read back per field")
    steps: PosInt = Field(25, description="DDIM steps per picture")
    guidance_scale: NonNegFloat = 3.0


class Pretrain(Section):
    """``mode: train`` (embedded): train the parts the paper downloads, saved as HF folders.
    ``mode: verify`` (paper): load the component folders and run one tiny batch through every
    part, so that a broken or mismatched folder fails in the first minute."""

    mode: Literal["train", "verify"] = "verify"
    vae: VAELoop = VAELoop()
    clip: ClipLoop = ClipLoop()
    teacher: TeacherLoop = TeacherLoop()
    llm: LMLoop = LMLoop()
    vision: VisionLoop = VisionLoop()
    classifier: ClassifierLoop = ClassifierLoop()
    eval: PretrainEval = PretrainEval()


EncoderPart = Literal["queries", "projection", "language_model", "image_projector", "vision_tower"]


class Stage1Eval(Section):
    images: PosInt = Field(256, description="val images for the conditioning comparison")
    noise_draws: PosInt = Field(2, description="noise/timestep draws per image (shared by every condition)")
    recon_images: PosInt = 8
    recon_steps: PosInt = 25
    guidance_scale: NonNegFloat = 3.0


class Stage1(Loop):
    steps: PosInt = 3000
    optim: Optim = Optim(lr=1e-3, warmup_steps=50)
    num_queries: Annotated[int, Field(gt=0, le=512)] = 24
    trainable: list[EncoderPart] = Field(
        default_factory=lambda: ["queries", "projection", "language_model", "image_projector", "vision_tower"],  # images only
        min_length=1,
    )
    high_noise_share: Fraction = Field(
        1.0, description="share of training samples with t from the noisiest part of the schedule (where the frozen decoder "
                         "needs the conditioning: docs/NOTES.md 2026-12-06); 0 = uniform t, as the paper")
    high_noise_from: Fraction = Field(0.8, description="where that noisiest part starts, as a share of the timesteps")
    token_scale: bool = Field(
        True, description="end the projection with a LayerNorm whose affine starts at the CLIP token table's per-dimension "
                          "std and mean, so the query tokens enter the frozen text encoder at the scale of its own tokens")
    eval: Stage1Eval = Stage1Eval()


class PartLR(Section):
    """Stage 2's learning rate per part, as multiples of ``stage2.optim.lr``."""

    encoder: PosFloat = 1.0
    mlp: PosFloat = 1.0
    llm: PosFloat = 1.0


class Stage2(Loop):
    steps: PosInt = 1800
    lr_scale: PartLR = Field(PartLR(), description="per-part multiples of optim.lr (encoder, mlp, llm); a frozen part ignores its own")
    optim: Optim = Optim(lr=3e-4, schedule="linear", warmup_steps=50)
    trainable: Literal["mlp", "mlp+llm", "mlp+llm+encoder"] = "mlp+llm+encoder"
    max_caption_tokens: PosInt = 32
    num_beams: PosInt = 1
    max_new_tokens: PosInt = 32
    init: Literal["stage1", "random"] = Field("stage1", description="encoder weights: stage 1's, or random (the no-stage-1 ablation)")
    num_pairs: PosInt | None = Field(None, description="use only the first N pairs (data-efficiency runs); null = all")
    val_images: PosInt = Field(300, description="val images captioned for the attribute accuracy after training")


class Evaluate(Section):
    images: PosInt | None = Field(None, description="test images to evaluate; null = the whole test split")
    batch_size: PosInt = 32
    regen_steps: PosInt = Field(10, description="DDIM steps of the regeneration (caption -> frozen T2I -> image)")
    guidance_scale: NonNegFloat = 4.0
    gallery: PosInt = Field(16, description="worst-captioned test images shown in the gallery PNG")
    inception: str | None = Field(None, description="local FID Inception weights (safetensors); null = no FID")
    meteor: bool = Field(True, description="METEOR (a Java program, slow to start); false = skip it")


PriceKey = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*$")]

# Editable on-demand list prices (USD per device-hour; "cpu" is per core-hour), rounded,
# as cloud price lists showed them in 2026. They are inputs, not measurements: put your own.
DEFAULT_PRICES = {
    "cpu": 0.04, "t4": 0.35, "l4": 0.80, "a10g": 1.00, "l40": 1.40, "l40s": 1.80, "rtx-6000-ada": 1.60,
    "a100-40gb": 1.50, "a100-80gb": 1.90, "h100-pcie": 2.50, "h100-sxm": 3.00, "h100-nvl": 3.00,
    "h200": 3.80, "gh200": 3.50, "b200": 6.00,
}


class RecipeStage(Section):
    steps: PosInt
    global_batch: PosInt


class Projection(Section):
    """The paper recipe the cost report projects from measured throughput (docs/METHOD.md)."""

    stage1: RecipeStage = RecipeStage(steps=200_000, global_batch=512)
    stage2: RecipeStage = RecipeStage(steps=100_000, global_batch=64)


class Cost(Section):
    budget_usd: PosFloat = 1000.0
    prices_usd_per_hour: dict[PriceKey, NonNegFloat] = Field(default_factory=lambda: dict(DEFAULT_PRICES))
    on_over_budget: Literal["stop", "warn"] = "stop"
    guard_every: PosInt = Field(50, description="training steps between budget checks")
    throughput_records: str = Field("benchmarks/throughput.csv", description="measured throughput records (vlv bench-arch)")
    projection: Projection = Projection()


class SearchDim(Section):
    """One dimension of the sweep's search space: ``choices``, or a ``low``..``high`` range
    (``log`` for log-uniform, ``integer`` for whole numbers)."""

    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> "SearchDim":
        ranged = self.low is not None or self.high is not None
        if (self.choices is not None) == ranged:
            raise ValueError("give either choices: [...] or low: and high:")
        if self.choices is not None and not self.choices:
            raise ValueError("choices is empty")
        if ranged:
            if self.low is None or self.high is None or not self.low < self.high:
                raise ValueError(f"a range needs low < high (got low {self.low}, high {self.high})")
            if self.log and self.low <= 0:
                raise ValueError(f"a log range needs low > 0 (got {self.low:g})")
        return self


def _default_space() -> dict[str, SearchDim]:
    return {"stage1.num_queries": SearchDim(choices=[4, 8, 16, 32, 77]),
            "stage1.optim.lr": SearchDim(low=1e-4, high=2e-3, log=True),
            "stage2.optim.lr": SearchDim(low=1e-4, high=2e-3, log=True)}


class Sweep(Section):
    """`vlv sweep`: Optuna over any params, each trial stage 1 + stage 2 on a reduced budget."""

    objective: Literal["accuracy", "stage1_loss"] = Field(
        "accuracy", description="accuracy: stage-2 val attribute accuracy (maximised); stage1_loss: stage-1 val loss (minimised)")
    storage: str | None = Field(None, description="Optuna storage URL (postgresql://... for many nodes); null = sqlite:///mlruns/optuna.db")
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    report_every: PosInt = Field(100, description="stage-2 steps between intermediate val accuracies (what the pruner sees)")
    val_images: PosInt = Field(64, description="val images captioned for each intermediate and final value")
    heartbeat_s: PosInt = Field(60, description="a worker silent this long has its trial marked failed (then retried)")
    retries: NonNegInt = Field(2, description="times a failed trial is retried with the same params")
    budget: dict[str, Any] = Field(default_factory=lambda: {"stage1.steps": 200, "stage2.steps": 400},
                                   description="each trial's reduced budget: dotted param -> value")
    space: dict[str, SearchDim] = Field(default_factory=_default_space, description="dotted param -> SearchDim")

    @model_validator(mode="after")
    def _known_params(self) -> "Sweep":
        for where, keys in (("space", self.space), ("budget", self.budget)):
            for key in keys:
                problem = _leaf_problem(key)
                if problem:
                    raise ValueError(f"{where}: {key}: {problem}")
        both = set(self.space) & set(self.budget)
        if both:
            raise ValueError(f"{sorted(both)[0]} is in both space and budget; keep it in one")
        return self


class Params(Section):
    seed: NonNegInt = 0
    profile: str = Field("embedded", pattern=r"^[a-z0-9][a-z0-9_-]*$",
                         description="embedded (params.yaml as it is) or the name of a file in profiles/ overlaid on it")
    prepare: Prepare = Prepare()
    components: Components = Components()
    pretrain: Pretrain = Pretrain()
    stage1: Stage1 = Stage1()
    stage2: Stage2 = Stage2()
    evaluate: Evaluate = Evaluate()
    tracking: Tracking = Tracking()
    cost: Cost = Cost()
    sweep: Sweep = Field(default_factory=Sweep)  # built on use: its check reads the Params schema

    def made_here(self) -> list[str]:
        """The component folders `pretrain` trains in this run (mode train: those naming MADE_HERE)."""
        if self.pretrain.mode != "train":
            return []
        return [part for part, folder in MADE_HERE.items() if getattr(self.components, part) == folder]

    @model_validator(mode="after")
    def _made_here_means_train(self) -> "Params":
        named = [part for part, folder in MADE_HERE.items() if getattr(self.components, part) == folder]
        if self.pretrain.mode == "verify" and named:
            raise ValueError(f"components.{named[0]}: {MADE_HERE[named[0]]} is written by pretrain in mode train, but "
                             f"pretrain.mode is verify; set pretrain.mode: train, or point it at a folder ({SHIPPED}/{named[0]})")
        if self.pretrain.mode == "train" and not named:
            raise ValueError(f"pretrain.mode train trains the components that name {'/'.join(MADE_HERE.values())}, and none "
                             f"does; point one at its models/pretrained folder, or set pretrain.mode: verify")
        return self


# ------------------------------------------------------------------------------ loading
def load(path: str | Path = "params.yaml", check_folders: bool = False) -> Params:
    """Read and validate a params file (with its profile overlaid); raise ParamsError (one line) on
    any problem. The schema only unless ``check_folders`` (a script reading a recipe whose folders
    live on another machine, e.g. profiles/paper.yaml, needs no folders)."""
    return load_with_note(path, check_folders)[0]


def load_with_note(path: str | Path = "params.yaml", check_folders: bool = True) -> tuple[Params, str | None]:
    """``load``, plus one line saying what the profile overlaid (None when it overlaid nothing).
    This is what `vlv params` and every stage call: with ``check_folders`` (the default) it also
    runs ``check_paths`` (missing or empty component folders, more stage-1 queries than CLIP positions).

    Profiles: ``profile: NAME`` overlays ``profiles/NAME.yaml`` (beside the params file) on the
    schema's defaults, and then every value params.yaml changes from those defaults wins over
    the profile. So ``dvc exp run -S profile=paper -S stage1.steps=4`` runs the paper recipe
    with 4 stage-1 steps, and params.yaml itself stays the embedded default. A value in
    params.yaml equal to the default does not override the profile: change it in the profile
    file (``-S profiles/paper.yaml:stage1.steps=250``)."""
    path = Path(path)
    raw = _read_yaml(path, "params file")
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    name = raw.get("profile", "embedded")
    folder = path.parent if path.parent.name == "profiles" else path.parent / "profiles"  # a profile file read directly
    profile_file = folder / f"{name}.yaml"
    if not isinstance(name, str) or (name != "embedded" and not profile_file.is_file()):
        known = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        raise ParamsError(f"{path}: profile: {name!r} has no file {profile_file}; profiles here: {', '.join(known) or 'none'}")
    if not profile_file.is_file():
        params = validate(raw, source=str(path))
        if check_folders:
            check_paths(params, str(path))
        return params, None
    overlay = _read_yaml(profile_file, "profile file")
    if not isinstance(overlay, dict):
        raise ParamsError(f"{profile_file}: expected a mapping of sections at the top level, got {type(overlay).__name__}")
    for key, value in overlay.items():
        if key == "profile" and value != name:
            raise ParamsError(f"{profile_file}: profile: {value!r} but the file is profile {name!r}; make them the same")
        if key != "profile" and not isinstance(value, dict):
            raise ParamsError(f"{profile_file}: {key}: a profile overlays sections ({', '.join(SECTIONS)}); "
                              f"set {key} in {path.name} instead")
    defaults = Params().model_dump(mode="json")
    changes = _changed(raw, defaults)
    merged = _merged(_merged(defaults, {k: v for k, v in overlay.items() if k != "profile"}), changes)
    params = validate(merged, source=f"{path} + {profile_file}")
    if check_folders:
        check_paths(params, str(path))
    set_by_profile = set(flatten({k: v for k, v in overlay.items() if k != "profile"}))
    won = sorted(k for k in flatten(changes) if k in set_by_profile)
    if not set_by_profile:
        return params, None
    note = f"profile {name}: {len(set_by_profile)} values from {profile_file}"
    if won:
        note += f"; {path.name} overrides {', '.join(won)}"
    return params, note


def check_paths(params: Params, source: str = "params.yaml") -> None:
    """What the params name on disk, checked when they load rather than when a stage reaches it:
    every components folder exists and is not empty (but those pretrain writes in this run:
    ``made_here``), and ``stage1.num_queries`` is at most the T2I text encoder's positions
    (``max_position_embeddings`` of components.t2i's text_encoder/config.json when it is readable,
    or of the card pretrain builds it from). Relative folders are relative to the working
    directory, as when the stages run. One line (ParamsError) naming the key otherwise."""
    c, made = params.components, params.made_here()
    for part in ("t2i", "vision", "llm", "classifier"):
        folder = getattr(c, part)
        if folder is None or part in made:
            continue
        where = Path(folder)
        if not where.is_dir():
            raise ParamsError(f"{source}: components.{part}: folder {folder} does not exist; point it at the {part} model folder")
        try:
            empty = not any(where.iterdir())
        except OSError as err:
            raise ParamsError(f"{source}: components.{part}: cannot list folder {folder} ({err.strerror}); fix its permissions") from None
        if empty:
            raise ParamsError(f"{source}: components.{part}: folder {folder} is empty; point it at the {part} model folder")
    positions, said = _text_positions(c.t2i, "t2i" in made)
    if positions is not None and params.stage1.num_queries > positions:
        raise ParamsError(f"{source}: stage1.num_queries: {params.stage1.num_queries} query tokens exceed the {positions} "
                          f"positions of the T2I text encoder ({said}); set it to at most {positions}")


def _text_positions(t2i: str, built_here: bool) -> tuple[int | None, str]:
    """(max_position_embeddings of the T2I text encoder, where it was read), or (None, "") when
    nothing readable says (the stage that loads the folder then says what is wrong with it)."""
    folder_config = Path(t2i) / "text_encoder" / "config.json"
    positions = _json_int(folder_config, ["max_position_embeddings"])
    if positions is not None:
        return positions, str(folder_config)
    if built_here:  # pretrain builds it from the card in this run
        card = Path(__file__).with_name("cards") / f"{T2I_CARD}.json"
        positions = _json_int(card, ["parts", "text_encoder", "config", "max_position_embeddings"])
        if positions is not None:
            return positions, f"card {T2I_CARD}"
    return None, ""


def _json_int(path: Path, keys: list[str]) -> int | None:
    """The int at ``keys`` in JSON file ``path``, or None when the file or the value is not there."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        for key in keys:
            value = value[key]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


SECTIONS = ("prepare", "components", "pretrain", "stage1", "stage2", "evaluate", "tracking", "cost", "sweep")


def _read_yaml(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: {what} not found; run from the project root or pass --params") from None
    except UnicodeDecodeError as err:
        raise ParamsError(f"{path}: {what} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise ParamsError(f"{path}: cannot read {what} ({err.strerror})") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        if isinstance(err, yaml.reader.ReaderError):  # a character YAML does not allow (a NUL, a control byte)
            code = err.character if isinstance(err.character, int) else ord(err.character)
            raise ParamsError(f"{path}: {what} holds character U+{code:04X} (at character {err.position}), "
                              f"which YAML does not allow; save it as plain UTF-8 text") from None
        mark = getattr(err, "problem_mark", None)
        where = f": line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ParamsError(f"{path}{where}: {problem}; fix the YAML syntax") from None


def _section(model: Any, key: str) -> Any:
    """The sub-model class of field ``key`` of ``model`` when it is a section, else None (a leaf,
    also for mapping-valued params such as sweep.space, which are replaced whole)."""
    field = model.model_fields.get(key) if model is not None else None
    annotation = field.annotation if field is not None else None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _changed(raw: dict, defaults: dict, model: Any = None) -> dict:
    """The part of ``raw`` that differs from ``defaults``."""
    model = model or Params
    out: dict = {}
    for key, value in raw.items():
        sub_model, base = _section(model, key), defaults.get(key)
        if sub_model is not None and isinstance(value, dict) and isinstance(base, dict):
            sub = _changed(value, base, sub_model)
            if sub:
                out[key] = sub
        elif key not in defaults or _plain(value) != _plain(base):
            out[key] = value
    return out


def _plain(x: Any) -> Any:
    """YAML and JSON spellings of one value compare equal (tuples as lists, ints as floats)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, (int, float)):
        return float(x)
    return x


def _merged(base: dict, top: dict, model: Any = None) -> dict:
    model = model or Params
    out = dict(base)
    for key, value in top.items():
        sub_model = _section(model, key)
        nested = sub_model is not None and isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value, sub_model) if nested else value
    return out


def validate(raw: Any, source: str = "params") -> Params:
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        errors = err.errors()
        line = _describe(errors[0])
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise ParamsError(f"{source}: {line}{more}") from None


def _describe(e: dict) -> str:
    loc = [p for p in e["loc"] if isinstance(p, (str, int))]
    key = ".".join(str(p) for p in loc) or "(top level)"
    kind = e["type"]
    if kind == "extra_forbidden":
        allowed = ", ".join(_fields_at(loc[:-1]))
        return f"{key}: unknown key; allowed keys here: {allowed}"
    msg = e["msg"].removeprefix("Value error, ")
    given = e.get("input")
    shown = "" if kind == "value_error" or isinstance(given, dict) else f" (got {given!r})"
    return f"{key}: {msg}{shown}"


def _fields_at(loc: list) -> list[str]:
    model: Any = Params
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


def _leaf_problem(key: str) -> str | None:
    """None when ``key`` (dotted) names one param of the schema; else why not."""
    model: Any = Params
    parts = key.split(".")
    if parts[0] == "sweep":
        return "the sweep's own params cannot be searched"
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            return f"no such param (allowed here: {', '.join(fields)})"
        annotation = fields[part].annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if i == len(parts) - 1:
            return f"is a section, name one of its params ({', '.join(annotation.model_fields)})" if is_section else None
        if not is_section:
            return f"{'.'.join(parts[: i + 1])} is a single param, not a section"
        model = annotation
    return None


def override(params: Params, values: dict[str, Any], source: str = "override") -> Params:
    """``params`` with dotted ``values`` set, validated again (ParamsError, one line, names the key)."""
    raw = params.model_dump(mode="json")
    for key, value in values.items():
        node = raw
        *path, leaf = key.split(".")
        for part in path:
            node = node[part]
        node[leaf] = value
    return validate(raw, source=source)


def check_sweep(params: Params, source: str = "params.yaml") -> None:
    """Every budget value and every end of the search space must make valid params: one line
    (ParamsError) before any trial otherwise."""
    s = params.sweep
    try:
        override(params, s.budget, source="")
    except ParamsError as err:
        raise ParamsError(f"{source}: sweep.budget: {str(err).removeprefix(': ')}") from None
    for key, dim in s.space.items():
        values = dim.choices if dim.choices is not None else [int(dim.low), int(dim.high)] if dim.integer else [dim.low, dim.high]
        for value in values:
            try:
                override(params, {**s.budget, key: value}, source="")
            except ParamsError as err:
                raise ParamsError(f"{source}: sweep.space.{key}: {value!r} is not a valid value "
                                  f"({str(err).removeprefix(': ')})") from None


def dump(params: Params) -> dict:
    """Plain dict of every param (defaults filled in), for logging and display."""
    return params.model_dump(mode="json")


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: the dotted keys DVC and MLflow show."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
