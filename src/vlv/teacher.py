"""The embedded world's text-to-image teacher: its training objective, and the check that it
paints what a caption says.

The teacher is the knowledge source of the whole method: stage 1 can only distil what the frozen
UNet reads from its conditioning. ``paint_check`` measures that on the saved diffusers folder, as
a user would load it (StableDiffusionPipeline, DDIM, classifier-free guidance): world captions in,
pictures out, read back by the analytic reader of the spec (``world.read_image``) and by the
world's attribute classifier, per field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import latents, world
from .components import T2IParts
from .train import per_sample_randn, sample_generators, timesteps


class TeacherObjective(nn.Module):
    """UNet (+ text encoder unless it is frozen) on frozen-VAE latents; captions dropped to
    "" with probability p (classifier-free guidance)."""

    def __init__(self, t2i: T2IParts, caption_dropout: float, seed: int, snr_gamma: float | None = None,
                 high_noise_share: float = 0.0, high_noise_from: float = 0.7, train_text_encoder: bool = True):
        super().__init__()
        self.snr_gamma, self.high_noise_share, self.high_noise_from = snr_gamma, high_noise_share, high_noise_from
        self.vae, self.text_encoder, self.unet = t2i.vae, t2i.text_encoder, t2i.unet
        self.tokenizer, self.scheduler = t2i.tokenizer, t2i.scheduler
        self.vae.requires_grad_(False)
        self.train_text_encoder = train_text_encoder
        self.text_encoder.requires_grad_(train_text_encoder)
        self.p, self.seed = caption_dropout, seed
        self.scaling = float(self.vae.config.scaling_factor)

    def train(self, mode: bool = True):
        super().train(mode)
        self.vae.eval()
        if not self.train_text_encoder:
            self.text_encoder.eval()
        return self

    def forward(self, batch: dict) -> torch.Tensor:
        x = batch["pixel_values"]
        gens = sample_generators(batch["sample_id"], self.seed, salt=2)
        z = latents.draw(*latents.posterior(self.vae, batch), gens, self.scaling)
        drop = [float(torch.rand((), generator=g)) < self.p for g in gens]
        captions = ["" if d else c for d, c in zip(drop, batch["caption"])]
        ids = self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(x.device)
        cond = self.text_encoder(ids).last_hidden_state  # frozen: requires_grad is off, no graph
        noise = per_sample_randn(tuple(z.shape[1:]), gens).to(z)
        t = self.timesteps(gens).to(x.device)
        noisy = self.scheduler.add_noise(z, noise, t)
        target = noise if self.scheduler.config.prediction_type == "epsilon" else self.scheduler.get_velocity(z, noise, t)
        pred = self.unet(noisy, t, encoder_hidden_states=cond).sample
        per_sample = ((pred.float() - target.float()) ** 2).flatten(1).mean(1)
        return (per_sample * self.loss_weights(t)).mean()

    def timesteps(self, gens: list[torch.Generator]) -> torch.Tensor:
        return timesteps(int(self.scheduler.config.num_train_timesteps), gens, self.high_noise_share, self.high_noise_from)

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Min-SNR-gamma weights (Hang et al., 2023): low-noise steps, where the caption
        barely matters, stop dominating the loss; 1 everywhere when snr_gamma is None."""
        if not self.snr_gamma:
            return torch.ones(t.shape, device=t.device)
        alpha_bar = self.scheduler.alphas_cumprod.to(t.device)[t]
        snr = alpha_bar / (1 - alpha_bar)
        w = torch.clamp(snr, max=self.snr_gamma) / snr
        return w if self.scheduler.config.prediction_type == "epsilon" else w * snr / (snr + 1)


# ------------------------------------------------------------------------------- check
@dataclass
class PaintCheck:
    """What the teacher painted for ``prompts`` and how well each reader agrees with the prompts."""

    prompts: list[str]
    images: np.ndarray  # N x S x S x 3 uint8, one per prompt
    reader: dict[str, float]  # world.agreement_scores of the analytic reader
    classifier: dict[str, float] = field(default_factory=dict)  # the same, read by the attribute classifier
    seeds: dict[str, float] = field(default_factory=dict)  # the first prompts again from other noise
    again: np.ndarray | None = None  # those pictures

    def grid(self, path: str | Path, rows: int = 12) -> Path:
        """Prompt | picture | the same prompt from other noise, with what the reader saw."""
        from . import plots

        k = min(rows, len(self.prompts))
        pictures = [[self.images[i]] + ([self.again[i]] if self.again is not None and i < len(self.again) else []) for i in range(k)]
        titles = [f"{p}\n(read: {world.caption(world.read_image(self.images[i])) if world.read_image(self.images[i]).objects else 'nothing'})"
                  for i, p in enumerate(self.prompts[:k])]
        return plots.image_grid(pictures, path, row_titles=titles, col_titles=["sample", "other noise"],
                                title=f"teacher: prompt | sample (reader agreement {self.reader['mean']:.0%})")

    def metrics(self) -> dict:
        out = {"prompts": len(self.prompts), **{f"reader_{k}": v for k, v in self.reader.items()}}
        out |= {f"classifier_{k}": v for k, v in self.classifier.items()}
        return out | {f"seeds_{k}": v for k, v in self.seeds.items()}


def read_by_classifier(classifier, images: np.ndarray) -> list[world.Attributes]:
    from .data import to_tensor

    captions = []
    for i in range(0, len(images), 64):
        captions += classifier.predict(torch.stack([to_tensor(im) for im in images[i : i + 64]]))
    return [world.try_parse(c) or world.Attributes((), "unreadable") for c in captions]


def paint_check(folder: str | Path, n: int, steps: int, guidance_scale: float, size: int, seed: int,
                classifier=None, seed_prompts: int = 16) -> PaintCheck:
    """Prompt the saved T2I folder with ``n`` world captions drawn as the world draws scenes (1 or 2
    objects) and read the pictures back. The first ``seed_prompts`` prompts are painted again from
    other noise: ``seeds_changed`` is the share whose two pictures differ (not one memorised image
    per caption), ``seeds_mean`` the reader's agreement on the second pictures."""
    from .evaluation import regenerate

    truths = [sc.attributes for sc in world.sample_scenes(seed, n, size)]
    prompts = [world.caption(a) for a in truths]
    images = regenerate(folder, prompts, size, steps, guidance_scale, seed=seed, desc="teacher: paint prompts")
    check = PaintCheck(prompts, images, world.agreement_scores([world.read_image(im) for im in images], truths))
    if classifier is not None:
        check.classifier = world.agreement_scores(read_by_classifier(classifier, images), truths)
    k = min(seed_prompts, n)
    if k:
        again = regenerate(folder, prompts[:k], size, steps, guidance_scale, seed=seed + 1, desc="teacher: other noise")
        changed = [np.mean(np.abs(a.astype(int) - b.astype(int)).max(-1) > 32) > 0.02 for a, b in zip(images[:k], again)]
        check.again = again
        check.seeds = {"changed": float(np.mean(changed)),
                       "mean": world.agreement_scores([world.read_image(im) for im in again], truths[:k])["mean"]}
    return check
