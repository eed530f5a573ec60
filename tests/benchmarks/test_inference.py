"""Inference: captioning (greedy, 32 new tokens) and stage-1 reconstruction (CFG, DDIM)."""

import pytest
import torch

pytestmark = pytest.mark.benchmark(group="inference")

RECON_IMAGES, RECON_STEPS = 8, 10


def test_caption_generation(benchmark, rate, captioner, images):
    """32 images -> captions; the random LM never says end-of-text, so every round makes 32 tokens."""
    captioner.eval()
    out = benchmark.pedantic(captioner.generate, args=(images,), kwargs={"num_beams": 1, "max_new_tokens": 32},
                             rounds=20, warmup_rounds=2)
    assert len(out) == len(images)
    rate("images_per_s", len(images))


def test_reconstruction(benchmark, rate, stage1_model, images):
    """8 images -> VLV embeddings -> 10 DDIM steps with classifier-free guidance -> VAE decode."""
    stage1_model.eval()
    x = images[:RECON_IMAGES]
    out = benchmark.pedantic(stage1_model.reconstruct, args=(x,), kwargs={"guidance_scale": 2.0, "steps": RECON_STEPS},
                             rounds=8, warmup_rounds=1)
    assert out.shape == x.shape and torch.isfinite(out).all()
    rate("images_per_s", RECON_IMAGES)
