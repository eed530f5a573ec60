"""Stage 1: the VLV auto-encoder (docs/METHOD.md, stage 1).

image -> Florence-2 (vision tower + projector, merged with the task prompt, through its
language-model encoder) -> its decoder fed ``Nq`` learnable queries as input embeddings
(the bottleneck) -> projection MLP -> the frozen CLIP text encoder through its embedding
path -> ``encoder_hidden_states`` of the frozen UNet. Loss: the scheduler's target
(epsilon or v) MSE on the frozen VAE's latents of the image. Images only; no captions.

Every width comes from the parts' configs: the queries have Florence's ``d_model``, the
projection maps it to CLIP's ``hidden_size``, and CLIP's output width is the UNet's
``cross_attention_dim``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .components import T2IParts, VisionParts, check_written
from .errors import VLVError
from .latents import draw, posterior
from .train import per_sample_randint, per_sample_randn, sample_generators, timesteps

ENCODER_PARTS = ("queries", "projection", "language_model", "image_projector", "vision_tower")
ENCODER_CONFIG = "vlv_encoder.json"
ENCODER_HEAD = "vlv_head.safetensors"
ENCODER_FILES = (ENCODER_CONFIG, ENCODER_HEAD, "florence/config.json", "florence/*.safetensors")  # what save writes


class CLIPConditioner(nn.Module):
    """The frozen CLIP text encoder, fed either tokens or continuous input embeddings.

    transformers 5's ``CLIPTextModel.forward`` takes no ``inputs_embeds``; the continuous
    path repeats its steps: embeddings (adds positions) -> causal mask -> encoder ->
    final layer norm. ``from_embeddings(token_embedding(ids)) == forward(ids)``.
    """

    def __init__(self, text_encoder, tokenizer):
        super().__init__()
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.max_length = int(text_encoder.config.max_position_embeddings)

    @property
    def width(self) -> int:
        return int(self.text_encoder.config.hidden_size)

    def from_embeddings(self, embeds: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_causal_mask

        te = self.text_encoder
        if embeds.shape[1] > self.max_length:
            raise VLVError(f"{embeds.shape[1]} query tokens exceed CLIP's {self.max_length} positions; lower stage1.num_queries")
        hidden = te.embeddings(inputs_embeds=embeds)
        mask = create_causal_mask(config=te.config, inputs_embeds=hidden, attention_mask=None, cache=None)
        hidden = te.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
        return te.final_layer_norm(hidden)

    def token_ids(self, captions: Sequence[str], device=None) -> torch.Tensor:
        ids = self.tokenizer(list(captions), padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt").input_ids
        return ids.to(device) if device is not None else ids

    def from_text(self, captions: Sequence[str]) -> torch.Tensor:
        device = self.text_encoder.device
        return self.text_encoder(self.token_ids(captions, device)).last_hidden_state


class VLVEncoder(nn.Module):
    """Image -> ``Nq x CLIP-width`` embeddings that the frozen CLIP encoder reads like text."""

    def __init__(self, vision: VisionParts, num_queries: int, out_dim: int, token_scale: bool = False):
        super().__init__()
        self.florence = vision.model
        d_model = int(self.florence.config.text_config.d_model)
        self.queries = nn.Parameter(torch.randn(num_queries, d_model))
        self.out_dim, self.token_scale = out_dim, token_scale
        layers = [nn.Linear(d_model, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim)]
        # token_scale: a LayerNorm last, its affine set by match_tokens to the text encoder's token
        # table; a freshly initialised MLP alone emits tokens many times larger than CLIP's own
        self.projection = nn.Sequential(*layers, *([nn.LayerNorm(out_dim)] if token_scale else []))
        self.register_buffer("prompt_ids", torch.tensor(vision.prompt_ids, dtype=torch.long), persistent=False)
        self.register_buffer("mean", torch.tensor(vision.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(vision.image_std).view(1, 3, 1, 1), persistent=False)
        self.image_size, self.vision_source, self.task = vision.image_size, vision.source, vision.task

    @property
    def num_queries(self) -> int:
        return self.queries.shape[0]

    @torch.no_grad()
    def match_tokens(self, token_table: torch.Tensor) -> None:
        """Start the output LayerNorm's affine at the token table's per-dimension std and mean."""
        if not self.token_scale:
            raise VLVError("match_tokens needs an encoder built with token_scale=True")
        norm = self.projection[-1]
        norm.weight.copy_(token_table.float().std(0).to(norm.weight))
        norm.bias.copy_(token_table.float().mean(0).to(norm.bias))

    def parts(self) -> dict[str, list[nn.Parameter]]:
        m = self.florence.model
        return {
            "queries": [self.queries],
            "projection": list(self.projection.parameters()),
            "language_model": list(m.language_model.parameters()),
            "image_projector": list(m.multi_modal_projector.parameters()),
            "vision_tower": list(m.vision_tower.parameters()),
        }

    def set_trainable(self, names: Sequence[str]) -> None:
        unknown = set(names) - set(ENCODER_PARTS)
        if unknown:
            raise VLVError(f"unknown trainable part(s) {sorted(unknown)}; choose from {list(ENCODER_PARTS)}")
        self.requires_grad_(False)
        for name, params in self.parts().items():
            for p in params:
                p.requires_grad_(name in names)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values``: B x 3 x H x W in [-1, 1]."""
        x = pixel_values
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True)
        x = ((x + 1) / 2 - self.mean) / self.std
        m = self.florence.model
        image = m.get_image_features(x).pooler_output
        prompt = m.get_input_embeddings()(self.prompt_ids).unsqueeze(0).expand(x.shape[0], -1, -1)
        encoded = m.language_model.encoder(inputs_embeds=torch.cat([image.to(prompt.dtype), prompt], dim=1)).last_hidden_state
        queries = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1).to(encoded.dtype)
        decoded = m.language_model.decoder(inputs_embeds=queries, encoder_hidden_states=encoded).last_hidden_state
        return self.projection(decoded)

    # ------------------------------------------------------------------ save / load
    def save(self, folder: str | Path, extra: dict | None = None) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.florence.save_pretrained(folder / "florence", safe_serialization=True)
        head = {"queries": self.queries.detach().contiguous()}
        head.update({f"projection.{k}": v.detach().contiguous() for k, v in self.projection.state_dict().items()})
        save_file(head, str(folder / ENCODER_HEAD))
        config = {
            "num_queries": self.num_queries, "out_dim": self.out_dim, "token_scale": self.token_scale,
            "prompt_ids": self.prompt_ids.tolist(), "image_size": self.image_size,
            "image_mean": self.mean.flatten().tolist(), "image_std": self.std.flatten().tolist(),
            "vision_source": self.vision_source, "task": self.task, **(extra or {}),
        }
        (folder / ENCODER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path, dtype: torch.dtype = torch.float32) -> "VLVEncoder":
        from transformers import Florence2ForConditionalGeneration

        folder = check_written(folder, ENCODER_FILES, "VLV encoder", "stage1")  # missing, not JSON, truncated: one line
        cfg = json.loads((folder / ENCODER_CONFIG).read_text())
        florence = Florence2ForConditionalGeneration.from_pretrained(folder / "florence", use_safetensors=True, local_files_only=True,
                                                                     dtype=dtype)
        vision = VisionParts(florence, cfg["prompt_ids"], cfg["image_size"], cfg["image_mean"], cfg["image_std"], cfg["vision_source"],
                             task=cfg.get("task", "<MORE_DETAILED_CAPTION>"))
        enc = cls(vision, cfg["num_queries"], cfg["out_dim"], token_scale=cfg.get("token_scale", False))
        head = load_file(str(folder / ENCODER_HEAD))
        with torch.no_grad():
            enc.queries.copy_(head.pop("queries"))
            enc.projection.load_state_dict({k.removeprefix("projection."): v for k, v in head.items()})
        enc.to(dtype)
        enc.config = cfg
        return enc


class VLVAutoencoder(nn.Module):
    """Stage-1 model: trainable VLVEncoder + frozen CLIP, UNet, VAE. ``forward`` = loss."""

    def __init__(self, encoder: VLVEncoder, t2i: T2IParts, seed: int = 0, high_noise_share: float = 0.0,
                 high_noise_from: float = 0.8):
        super().__init__()
        self.high_noise_share, self.high_noise_from = high_noise_share, high_noise_from
        self.encoder = encoder
        t2i.frozen()
        self.vae, self.unet = t2i.vae, t2i.unet
        self.clip = CLIPConditioner(t2i.text_encoder, t2i.tokenizer)
        self.scheduler = t2i.scheduler
        self.seed = seed
        self.scaling = float(self.vae.config.scaling_factor)
        if encoder.num_queries > self.clip.max_length:
            raise VLVError(f"stage1.num_queries={encoder.num_queries} exceeds the CLIP text encoder's {self.clip.max_length} positions; lower it")
        cross = int(self.unet.config.cross_attention_dim)
        if self.clip.width != cross or encoder.out_dim != self.clip.width:
            raise VLVError(
                f"widths do not chain: projection -> {encoder.out_dim}, CLIP hidden {self.clip.width}, "
                f"UNet cross_attention_dim {cross}; the T2I folder's parts do not belong together"
            )

    def train(self, mode: bool = True):
        super().train(mode)
        for frozen in (self.vae, self.unet, self.clip):
            frozen.eval()  # the frozen decoder never switches to training behaviour
        return self

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return int(self.vae.config.latent_channels), image_size // factor, image_size // factor

    def condition(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.clip.from_embeddings(self.encoder(pixel_values))

    @torch.no_grad()
    def latents(self, batch: dict, generators: list[torch.Generator]) -> torch.Tensor:
        """The batch's scaled VAE latents: from the cache (vlv.latents) or encoded now."""
        return draw(*posterior(self.vae, batch), generators, self.scaling)

    def noised(self, latents: torch.Tensor, generators: list[torch.Generator], training: bool = False):
        """(noisy latents, timesteps, target) with per-sample noise and timesteps: uniform t, or
        when ``training`` the stage's high-noise share (``train.timesteps``)."""
        noise = per_sample_randn(tuple(latents.shape[1:]), generators).to(latents)
        n = int(self.scheduler.config.num_train_timesteps)
        if training and self.high_noise_share:
            t = timesteps(n, generators, self.high_noise_share, self.high_noise_from).to(latents.device)
        else:
            t = per_sample_randint(n, generators).to(latents.device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, t)
        else:
            raise VLVError(f"scheduler prediction_type {kind!r} is not supported; use epsilon or v_prediction")
        return noisy, t, target

    def denoise_error(self, noisy, t, target, cond) -> torch.Tensor:
        """Per-sample MSE of the UNet's prediction under conditioning ``cond``."""
        pred = self.unet(noisy, t, encoder_hidden_states=cond.to(noisy.dtype)).sample
        return ((pred.float() - target.float()) ** 2).flatten(1).mean(1)

    def forward(self, batch: dict) -> torch.Tensor:
        x = batch["pixel_values"]
        gens = sample_generators(batch["sample_id"], self.seed)
        z = self.latents(batch, gens)
        noisy, t, target = self.noised(z, gens, training=True)
        return self.denoise_error(noisy, t, target, self.condition(x)).mean()

    @torch.no_grad()
    def reconstruct(self, pixel_values: torch.Tensor, guidance_scale: float = 2.0, steps: int = 50, seed: int = 0) -> torch.Tensor:
        """Images back from their VLV embeddings: CFG against CLIP(""), DDIM, VAE decode; in [-1, 1]."""
        return self.generate(self.condition(pixel_values), pixel_values.shape[-1], guidance_scale, steps, seed)

    @torch.no_grad()
    def generate(self, cond: torch.Tensor, image_size: int, guidance_scale: float = 2.0, steps: int = 50, seed: int = 0) -> torch.Tensor:
        """Images of side ``image_size`` from conditioning ``cond`` (B x L x CLIP width)."""
        from diffusers import DDIMScheduler

        b = cond.shape[0]
        uncond = self.clip.from_text([""] * b).to(cond)
        sched = DDIMScheduler.from_config(self.scheduler.config)
        sched.set_timesteps(steps, device=cond.device)
        g = torch.Generator().manual_seed(seed)
        z = torch.randn((b, *self.latent_shape(image_size)), generator=g).to(cond.device, cond.dtype) * sched.init_noise_sigma
        for t in sched.timesteps:
            z = sched.step(self.guided(sched.scale_model_input(z, t), t, uncond, cond, guidance_scale), t, z).prev_sample
        return self.vae.decode(z / self.scaling).sample.clamp(-1, 1)

    def guided(self, z: torch.Tensor, t, uncond: torch.Tensor, cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """Classifier-free guidance ``e_u + g (e_c - e_u)``: one UNet call on both halves when they
        have the same length (Nq = 77, or captions); a shorter bottleneck cannot share a batch
        with CLIP("") padded to 77, so it takes two calls."""
        if uncond.shape[1] == cond.shape[1]:
            e_u, e_c = self.unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
        else:
            e_u = self.unet(z, t, encoder_hidden_states=uncond).sample
            e_c = self.unet(z, t, encoder_hidden_states=cond).sample
        return e_u + guidance_scale * (e_c - e_u)


def build(params) -> VLVAutoencoder:
    """Stage 1's model from params (a ``config.Params``): the frozen T2I folder, Florence-2 from
    its folder or card, ``stage1.num_queries`` queries, ``stage1.trainable`` trainable."""
    from . import components

    c, s = params.components, params.stage1
    dtype = components.DTYPES[s.weights_dtype]
    t2i = components.load_t2i(c.t2i, dtype=dtype)
    torch.manual_seed(params.seed)
    vision = components.vision(c.vision, c.vision_card, c.vision_task, dtype)
    encoder = VLVEncoder(vision, s.num_queries, int(t2i.text_encoder.config.hidden_size), token_scale=s.token_scale)
    if s.token_scale:
        encoder.match_tokens(t2i.text_encoder.get_input_embeddings().weight)
    encoder.set_trainable(s.trainable)
    return VLVAutoencoder(encoder, t2i, seed=params.seed, high_noise_share=s.high_noise_share, high_noise_from=s.high_noise_from)


def load_autoencoder(encoder_dir: str | Path, t2i_dir: str | Path | None = None) -> VLVAutoencoder:
    """The trained stage-1 model in one call: the encoder folder + the T2I folder it names."""
    from .components import load_t2i

    encoder = VLVEncoder.load(encoder_dir)
    t2i = t2i_dir or encoder.config.get("t2i")
    if not t2i:
        raise VLVError(f"{encoder_dir}: the encoder does not name its T2I folder; pass it explicitly")
    model = VLVAutoencoder(encoder, load_t2i(t2i, param="t2i folder"))
    return model.eval()


# ----------------------------------------------------------------------------- metrics
def _mean_se(x: torch.Tensor) -> tuple[float, float]:
    x = x.double()
    return float(x.mean()), float(x.std(unbiased=True) / max(1, len(x)) ** 0.5) if len(x) > 1 else 0.0


@torch.no_grad()
def conditioning_report(model: VLVAutoencoder, dataset, n_images: int, draws: int, seed: int, batch_size: int = 32) -> dict:
    """Denoising loss on held-out images under four conditionings, with the SAME latent
    noise, diffusion noise and timesteps for every condition (paired comparison):

    (a) ``vlv``: the image's own VLV embedding; (b) ``uncond``: CLIP(""); (c) ``caption``:
    CLIP(true caption); (d) ``shuffled``: the VLV embedding of a different image.
    Differences are averaged per image over ``draws`` and reported with standard errors.
    ``distillation_gap`` = (b - a) / (b - c): above 1, the embedding tells the frozen
    decoder more than the caption does.
    """
    model.eval()
    n = min(n_images, len(dataset))
    items = [dataset[i] for i in range(n)]
    device = next(model.parameters()).device
    x_all = torch.stack([it["pixel_values"] for it in items]).to(device)
    captions = [it["caption"] for it in items]
    vlv = torch.cat([model.condition(x_all[i : i + batch_size]) for i in range(0, n, batch_size)])
    shuffled = vlv.roll(1, dims=0)  # image i gets image i-1's embedding
    uncond = model.clip.from_text([""]).to(vlv)
    errs = {k: torch.zeros(n, draws) for k in ("vlv", "uncond", "caption", "shuffled")}
    from tqdm.auto import tqdm

    for i in tqdm(range(0, n, batch_size), desc="stage1 val", unit="batch"):
        sl = slice(i, min(n, i + batch_size))
        x = x_all[sl]
        cond = {
            "vlv": vlv[sl], "shuffled": shuffled[sl], "uncond": uncond.expand(x.shape[0], -1, -1),
            "caption": model.clip.from_text(captions[sl]),
        }
        for k in range(draws):
            gens = sample_generators(torch.arange(sl.start, sl.stop) + 1_000_000 * (k + 1), seed, salt=99)
            noisy, t, target = model.noised(model.latents({"pixel_values": x}, gens), gens)
            for name, c in cond.items():
                errs[name][sl, k] = model.denoise_error(noisy, t, target, c).cpu()
    per_image = {k: v.mean(1) for k, v in errs.items()}
    out: dict[str, float] = {"images": n, "draws": draws}
    for k, v in per_image.items():
        out[f"loss_{k}"], out[f"loss_{k}_se"] = _mean_se(v)
    for name, diff in {
        "gain_vlv": per_image["uncond"] - per_image["vlv"],
        "gain_caption": per_image["uncond"] - per_image["caption"],
        "vlv_minus_caption": per_image["vlv"] - per_image["caption"],
        "shuffled_minus_uncond": per_image["shuffled"] - per_image["uncond"],
    }.items():
        out[name], out[f"{name}_se"] = _mean_se(diff)
        out[f"{name}_z"] = out[name] / out[f"{name}_se"] if out[f"{name}_se"] > 0 else 0.0
    out["distillation_gap"] = out["gain_vlv"] / out["gain_caption"] if out["gain_caption"] != 0 else float("nan")
    return out
