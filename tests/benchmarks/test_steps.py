"""Training steps of stage 1 and stage 2 on the embedded world's parts (batch 32)."""

import pytest
import torch

BATCH = 32

pytestmark = pytest.mark.benchmark(group="train step")


def test_stage1_train_step(benchmark, rate, train_step, stage1_model, stage1_batch):
    """Florence-2 -> queries -> projection -> frozen CLIP -> frozen UNet, noise-prediction loss,
    latents from the cache as stage 1 reads them; backward through the frozen decoder."""
    stage1_model.train()
    loss = benchmark.pedantic(train_step(stage1_model), args=(stage1_batch,), rounds=12, warmup_rounds=1)
    assert torch.isfinite(loss)
    rate("samples_per_s", BATCH)


def test_stage2_train_step(benchmark, rate, train_step, captioner, images, captions):
    """Encoder -> frozen CLIP -> MLP -> LLM prefix, caption loss, mlp+llm+encoder trainable."""
    captioner.train()
    batch = {"pixel_values": images, "caption": captions[:BATCH]}
    loss = benchmark.pedantic(train_step(captioner), args=(batch,), rounds=15, warmup_rounds=1)
    assert torch.isfinite(loss)
    rate("samples_per_s", BATCH)
