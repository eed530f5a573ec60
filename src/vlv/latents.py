"""Latents of a frozen VAE, computed once per stage instead of once per training step.

The teacher (pretrain) and stage 1 train against a frozen AutoencoderKL. Encoding every batch
again at every step repeats the same frozen forward pass, a large share of a small teacher's step
(measured: docs/NOTES.md, 2026-11-29, fitting the default run into 15 minutes).
``encode`` runs the encoder once over a dataset and keeps the posterior's mean and std;
``WithLatents`` adds them to every item; ``draw`` samples ``z = mean + std * eps`` with
per-sample noise, as encoding each step did.

``encode_cached`` keeps what ``encode`` returns in a folder (``cache/latents`` in the
pipeline), named by a fingerprint of the VAE's weights and of the images' pixels: the teacher
in ``pretrain`` and stage 1 encode the same ``images`` split with the same frozen VAE, so stage
1 reads what pretrain wrote instead of encoding it again. A different VAE or different images
give a different name, so a stale file is never read. Not a DVC out (like checkpoints/): it is
a scratch cache, safe to delete; the newest ``KEEP`` files are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

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


KEEP = 2  # cached latent files kept per folder (each is 8 x latent size x images bytes)


def fingerprint(vae, dataset: Dataset) -> str:
    """sha256 over the VAE's config and weights and every item's pixels, in dataset order."""
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}  # not _name_or_path etc.
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    pixels = getattr(dataset, "pixels", None)  # ShardDataset: the stored uint8 bytes, no decode
    for i in range(len(dataset)):
        h.update(pixels(i).tobytes() if pixels else dataset[i]["pixel_values"].numpy().tobytes())
    return h.hexdigest()[:32]


def encode_cached(vae, dataset: Dataset, cache_dir: str | Path | None, desc: str = "encode latents") -> tuple[torch.Tensor, torch.Tensor]:
    """``encode``, read from ``cache_dir`` when this VAE already encoded these images (None: no cache)."""
    if cache_dir is None:
        return encode(vae, dataset, desc=desc)
    from safetensors.torch import load_file, save_file

    cache_dir = Path(cache_dir)
    path = cache_dir / f"{fingerprint(vae, dataset)}.safetensors"
    if path.exists():
        found = load_file(path)
        if len(found["mean"]) == len(dataset):
            print(f"{desc}: {len(dataset)} latents read from {path}", flush=True)
            os.utime(path)  # most recently used: kept longest
            return found["mean"], found["std"]
    mean, std = encode(vae, dataset, desc=desc)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({"mean": mean.contiguous(), "std": std.contiguous()}, str(tmp))
    os.replace(tmp, path)  # atomic: a killed run leaves no half-written file under the real name
    for old in sorted(cache_dir.glob("*.safetensors"), key=lambda f: f.stat().st_mtime, reverse=True)[KEEP:]:
        old.unlink(missing_ok=True)
    return mean, std


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
