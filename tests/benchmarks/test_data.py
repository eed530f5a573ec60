"""Data: `prepare` on synthetic images, and the training loader over the prepared shards."""

import pytest
from torch.utils.data import DataLoader

from vlv import config, data, latents
from vlv.train import MicroBatches, Stream, spec_from

pytestmark = pytest.mark.benchmark(group="data")

PREPARE_IMAGES = 300
LOADER_BATCHES = 40


def test_prepare_synthetic(benchmark, rate, tmp_path):
    """Render, validate, dedupe, shard and split 300 shapes-world images."""
    params = config.validate({"seed": 0, "prepare": {"num_images": PREPARE_IMAGES, "web_images": 0}})
    summary = benchmark.pedantic(data.prepare, args=(params, tmp_path / "out"), kwargs={"progress": False},
                                 rounds=30, warmup_rounds=2)
    assert summary.accepted == PREPARE_IMAGES
    rate("images_per_s", PREPARE_IMAGES)


def test_loader_images_per_s(benchmark, rate, prepared, stage1_model):
    """Stage 1's loader: memory-mapped shards + cached latents, shuffled stream, batches of 32."""
    images = data.ShardDataset(prepared, "images")
    dataset = latents.WithLatents(images, *latents.encode(stage1_model.vae, images, desc="bench latents"))
    spec = spec_from(config.Loop(steps=LOADER_BATCHES, global_batch=32), "bench.loader", seed=0)

    def read_all() -> int:
        loader = DataLoader(Stream(dataset, 0), batch_sampler=MicroBatches(spec, 0, 0, 1, 1), num_workers=0)
        return sum(len(b["pixel_values"]) for b in loader)

    n = benchmark.pedantic(read_all, rounds=40, warmup_rounds=2)
    assert n == LOADER_BATCHES * 32
    rate("images_per_s", n)
