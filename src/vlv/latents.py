"""Latents of a frozen VAE, computed once per stage instead of once per training step.

The teacher (pretrain) and stage 1 train against a frozen AutoencoderKL. Encoding every batch
again at every step was about half of the teacher's step time (scripts/probes/teacher_colour.py:
0.16 s/step from cached latents against 0.30 s/step in the pipeline, batch 16, 2 cores).
``encode`` runs the encoder once over a dataset and keeps the posterior's mean and std;
``WithLatents`` adds them to every item; ``draw`` samples ``z = mean + std * eps`` with
per-sample noise, as encoding each step did.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .train import per_sample_randn


@torch.no_grad()
def encode(vae, dataset: Dataset, batch_size: int = 256, desc: str = "encode latents") -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the VAE posterior of every item's ``pixel_values``, in dataset order."""
    was_training = vae.training
    vae.eval()
    device = next(vae.parameters()).device
    means, stds = [], []
    for i in tqdm(range(0, len(dataset), batch_size), desc=desc, unit="batch"):
        x = torch.stack([dataset[j]["pixel_values"] for j in range(i, min(i + batch_size, len(dataset)))]).to(device)
        dist = vae.encode(x).latent_dist
        means.append(dist.mean.cpu())
        stds.append(dist.std.cpu())
    vae.train(was_training)
    return torch.cat(means), torch.cat(stds)


class WithLatents(Dataset):
    """``dataset`` items plus ``latent_mean`` and ``latent_std`` (from ``encode``)."""

    def __init__(self, dataset: Dataset, mean: torch.Tensor, std: torch.Tensor):
        if len(mean) != len(dataset) or len(std) != len(dataset):
            raise ValueError(f"{len(mean)} cached latents for {len(dataset)} items")
        self.dataset, self.mean, self.std = dataset, mean, std

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return {**self.dataset[i], "latent_mean": self.mean[i], "latent_std": self.std[i]}


def posterior(vae, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the batch: cached when the dataset carries them, else encoded now."""
    if "latent_mean" in batch:
        return batch["latent_mean"], batch["latent_std"]
    with torch.no_grad():
        dist = vae.encode(batch["pixel_values"]).latent_dist
    return dist.mean, dist.std


def draw(mean: torch.Tensor, std: torch.Tensor, generators: list[torch.Generator], scaling: float) -> torch.Tensor:
    """A sample of the posterior, per-sample seeded, times the VAE's scaling factor."""
    eps = per_sample_randn(tuple(mean.shape[1:]), generators).to(mean)
    return (mean + std * eps) * scaling
