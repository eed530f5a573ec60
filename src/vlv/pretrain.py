"""The embedded world's "pretrained" parts: what the paper downloads, trained here.

- the text-to-image decoder: AutoencoderKL (first, on images), then a CLIP-architecture
  text encoder + UNet2DConditionModel on (latents, captions) with caption dropout for
  classifier-free guidance; saved as one standard diffusers folder;
- the caption LM: a Qwen2-architecture causal LM on the caption corpus; saved as a
  standard transformers folder with its tokenizer.
Each is trained by the shared loop (vlv.train). The corpus is the ``images`` split with
its captions: in the paper these parts were pretrained on web-scale pairs before VLV ever
saw them; here the teacher plays that role for the world.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from . import world
from .components import T2IParts
from .train import per_sample_randint, per_sample_randn, sample_generators


class VAEObjective(nn.Module):
    """AutoencoderKL: reconstruction MSE + kl_weight * KL to the unit Gaussian."""

    def __init__(self, vae, kl_weight: float, seed: int):
        super().__init__()
        self.vae, self.kl_weight, self.seed = vae, kl_weight, seed

    def forward(self, batch: dict) -> torch.Tensor:
        x = batch["pixel_values"]
        dist = self.vae.encode(x).latent_dist
        eps = per_sample_randn(tuple(dist.mean.shape[1:]), sample_generators(batch["sample_id"], self.seed, salt=1)).to(x)
        recon = self.vae.decode(dist.mean + dist.std * eps).sample
        return ((recon - x) ** 2).mean() + self.kl_weight * dist.kl().mean()


@torch.no_grad()
def latent_scaling(vae, images: torch.Tensor) -> float:
    """1 / std of the latents, as SD's 0.18215 was chosen: unit-variance diffusion space."""
    vae.eval()
    z = torch.cat([vae.encode(images[i : i + 64]).latent_dist.mean for i in range(0, len(images), 64)])
    return float(1.0 / z.std())


class TeacherObjective(nn.Module):
    """Text encoder + UNet on frozen-VAE latents; captions dropped to "" with probability p."""

    def __init__(self, t2i: T2IParts, caption_dropout: float, seed: int, snr_gamma: float | None = None,
                 high_noise_share: float = 0.0, high_noise_from: float = 0.7):
        super().__init__()
        self.snr_gamma, self.high_noise_share, self.high_noise_from = snr_gamma, high_noise_share, high_noise_from
        self.vae, self.text_encoder, self.unet = t2i.vae, t2i.text_encoder, t2i.unet
        self.tokenizer, self.scheduler = t2i.tokenizer, t2i.scheduler
        self.vae.requires_grad_(False)
        self.p, self.seed = caption_dropout, seed
        self.scaling = float(self.vae.config.scaling_factor)

    def train(self, mode: bool = True):
        super().train(mode)
        self.vae.eval()
        return self

    def forward(self, batch: dict) -> torch.Tensor:
        x = batch["pixel_values"]
        gens = sample_generators(batch["sample_id"], self.seed, salt=2)
        with torch.no_grad():
            dist = self.vae.encode(x).latent_dist
            z = (dist.mean + dist.std * per_sample_randn(tuple(dist.mean.shape[1:]), gens).to(x)) * self.scaling
        drop = [float(torch.rand((), generator=g)) < self.p for g in gens]
        captions = ["" if d else c for d, c in zip(drop, batch["caption"])]
        ids = self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(x.device)
        cond = self.text_encoder(ids).last_hidden_state
        noise = per_sample_randn(tuple(z.shape[1:]), gens).to(z)
        t = self.timesteps(gens).to(x.device)
        noisy = self.scheduler.add_noise(z, noise, t)
        target = noise if self.scheduler.config.prediction_type == "epsilon" else self.scheduler.get_velocity(z, noise, t)
        pred = self.unet(noisy, t, encoder_hidden_states=cond).sample
        per_sample = ((pred.float() - target.float()) ** 2).flatten(1).mean(1)
        return (per_sample * self.loss_weights(t)).mean()

    def timesteps(self, gens: list[torch.Generator]) -> torch.Tensor:
        """Uniform timesteps, except that a ``high_noise_share`` of samples draw from the
        noisiest ``1 - high_noise_from`` of the schedule: there the noisy latent no longer
        shows the layout and only the caption can, so that is where conditioning is learnt."""
        n = int(self.scheduler.config.num_train_timesteps)
        lo = int(self.high_noise_from * n)
        out = []
        for g in gens:
            high = float(torch.rand((), generator=g)) < self.high_noise_share
            out.append(torch.randint(lo if high else 0, n, (), generator=g))
        return torch.stack(out)

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Min-SNR-gamma weights (Hang et al., 2023): low-noise steps, where the caption
        barely matters, stop dominating the loss; 1 everywhere when snr_gamma is None."""
        if not self.snr_gamma:
            return torch.ones(t.shape, device=t.device)
        alpha_bar = self.scheduler.alphas_cumprod.to(t.device)[t]
        snr = alpha_bar / (1 - alpha_bar)
        w = torch.clamp(snr, max=self.snr_gamma) / snr
        return w if self.scheduler.config.prediction_type == "epsilon" else w * snr / (snr + 1)


class LMObjective(nn.Module):
    """Causal LM on captions, each followed by end-of-text so the model learns to stop."""

    def __init__(self, model, tokenizer, max_tokens: int = 48):
        super().__init__()
        self.model, self.tokenizer, self.max_tokens = model, tokenizer, max_tokens

    def forward(self, batch: dict) -> torch.Tensor:
        eos = self.tokenizer.eos_token
        enc = self.tokenizer([c + eos for c in batch["caption"]], padding=True, truncation=True,
                             max_length=self.max_tokens, return_tensors="pt")
        ids, mask = enc.input_ids.to(self.model.device), enc.attention_mask.to(self.model.device)
        labels = ids.masked_fill(mask == 0, -100)
        return self.model(input_ids=ids, attention_mask=mask, labels=labels).loss


# ---------------------------------------------------------------------------- checks
PALETTE_NAMES = list(world.BACKGROUNDS) + list(world.COLOURS)
PALETTE = np.array([*world.BACKGROUNDS.values(), *world.COLOURS.values()], dtype=np.float32)


def _palette_counts(image: np.ndarray) -> np.ndarray:
    px = image.reshape(-1, 3).astype(np.float32)
    nearest = np.argmin(((px[:, None, :] - PALETTE[None]) ** 2).sum(-1), axis=1)
    return np.bincount(nearest, minlength=len(PALETTE))


def dominant_colour(image: np.ndarray, min_pixels: int = 4) -> str | None:
    """The object colour covering most pixels (nearest spec colour), or None if none does."""
    counts = _palette_counts(image)[len(world.BACKGROUNDS):]
    if counts.max() < min_pixels:
        return None
    return list(world.COLOURS)[int(counts.argmax())]


def dominant_background(image: np.ndarray) -> str:
    """The background colour covering most pixels (nearest spec colour)."""
    return list(world.BACKGROUNDS)[int(_palette_counts(image)[: len(world.BACKGROUNDS)].argmax())]


def single_object_prompts(n: int, seed: int, size: int) -> list[world.Attributes]:
    out, i = [], 0
    while len(out) < n:
        a = world.scene_at(seed, i, size).attributes
        i += 1
        if len(a.objects) == 1:
            out.append(a)
    return out


@dataclass
class ColourCheck:
    rate: float
    background_rate: float
    n: int
    images: np.ndarray  # n x S x S x 3 uint8
    prompts: list[str]
    predicted: list[str | None]


def colour_check(folder: str | Path, n: int, steps: int, guidance_scale: float, size: int, seed: int = 1234) -> ColourCheck:
    """Load the saved folder as a StableDiffusionPipeline; prompt single-object captions;
    rate = share of images whose dominant object colour is the prompted one (chance 1/6)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, use_safetensors=True, local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    attrs = single_object_prompts(n, seed, size)
    prompts = [world.caption(a) for a in attrs]
    images = []
    for i in range(0, n, 16):
        out = pipe(prompts[i : i + 16], height=size, width=size, num_inference_steps=steps, guidance_scale=guidance_scale,
                   generator=torch.Generator().manual_seed(seed + i), output_type="np")
        images.append((out.images * 255).round().astype(np.uint8))
    images = np.concatenate(images)
    predicted = [dominant_colour(im) for im in images]
    hits = [p == a.objects[0].colour for p, a in zip(predicted, attrs)]
    bg_hits = [dominant_background(im) == a.background for im, a in zip(images, attrs)]
    return ColourCheck(float(np.mean(hits)), float(np.mean(bg_hits)), n, images, prompts, predicted)


def lm_check(model, tokenizer, starts: Sequence[str] = ("a small red", "a large blue", "a small green circle at the")) -> dict:
    """Greedy continuations of caption starts; share that parse as shapes-world captions."""
    model.eval()
    samples = []
    with torch.no_grad():
        for s in starts:
            ids = tokenizer(s, return_tensors="pt").input_ids.to(model.device)
            out = model.generate(ids, max_new_tokens=40, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
            samples.append(tokenizer.decode(out[0], skip_special_tokens=True).strip())
    ok = [world.try_parse(t) is not None for t in samples]
    return {"grammatical_rate": float(np.mean(ok)), "samples": samples}
