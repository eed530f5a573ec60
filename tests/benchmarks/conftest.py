"""Shared parts of the benchmarks: the embedded world's real parts, built from the architecture
cards with random weights (timing does not depend on training) with the embedded params' query
count and trainable parts (stage1.num_queries, stage1.trainable, stage2.trainable), and a small
prepared dataset.

Every benchmark times real work of at least ~50 ms per round (DESIGN.md: micro-benchmarks fail a
25% gate by noise alone) for a fixed number of rounds after warm-up ones, about 3 s in all: this
shared machine has slow phases of a second or so, and a median over a few seconds rides them
out. Each records a throughput in ``extra_info`` so the JSON says images/s, not just seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlv import autoencoder, cards, components, config, data, latents, throughput, vocab, world
from vlv.captioner import Captioner

BATCH = 32                # the embedded default global batch of stage 1 and stage 2
PARAMS = config.Params()  # the embedded defaults: params.yaml's values (test_config's test_defaults_equal_params_yaml)


@pytest.fixture(scope="session", autouse=True)
def _threads():
    """Fixed intra-op threads: a run on a busy 2-core machine and one on a quiet one time the same work."""
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def captions() -> list[str]:
    return [s.caption() for s in world.sample_scenes(0, 2000)]


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """600 synthetic images through the real `prepare` (shards + manifest), default splits."""
    out = tmp_path_factory.mktemp("bench") / "prepared"
    data.prepare(config.validate({"seed": 0, "prepare": {"num_images": 600, "web_images": 0}}), out, progress=False)
    return out


@pytest.fixture(scope="session")
def t2i(captions):
    torch.manual_seed(0)
    return components.build_t2i("t2i-tiny", vocab.clip_tokenizer(captions))


@pytest.fixture(scope="session")
def images(prepared) -> torch.Tensor:
    ds = data.ShardDataset(prepared, "images")
    return torch.stack([ds[i]["pixel_values"] for i in range(BATCH)])


def encoder(t2i) -> autoencoder.VLVEncoder:
    torch.manual_seed(0)
    vision = components.build_vision("florence2-tiny")
    enc = autoencoder.VLVEncoder(vision, PARAMS.stage1.num_queries, int(t2i.text_encoder.config.hidden_size))
    enc.set_trainable(PARAMS.stage1.trainable)
    return enc


@pytest.fixture(scope="session")
def stage1_model(t2i) -> autoencoder.VLVAutoencoder:
    return autoencoder.VLVAutoencoder(encoder(t2i), t2i, seed=0)


@pytest.fixture(scope="session")
def stage1_batch(stage1_model, images) -> dict:
    """What stage 1's loader yields: images, sample ids and the cached VAE posterior."""
    mean, std = latents.encode(stage1_model.vae, [{"pixel_values": x} for x in images], desc="bench latents")
    return {"pixel_values": images, "sample_id": torch.arange(BATCH), "latent_mean": mean, "latent_std": std}


@pytest.fixture(scope="session")
def captioner(t2i, captions) -> Captioner:
    torch.manual_seed(0)
    tok = vocab.qwen2_tokenizer(captions)
    llm = cards.build("llm-tiny", "model", vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = Captioner(encoder(t2i), t2i.text_encoder, t2i.tokenizer, llm, tok, max_caption_tokens=32)
    model.set_trainable(PARAMS.stage2.trainable, PARAMS.stage1.trainable)
    return model


@pytest.fixture
def train_step():
    """``train_step(model)`` -> ``step(batch)``: one step as the shared loop takes it (forward =
    loss, backward, clip, AdamW update), the one bench-arch and bench_overhead.py time too."""
    return throughput.make_step


@pytest.fixture
def rate(benchmark):
    """``rate(key, count)``: record ``count`` per second of the median round in the JSON's extra_info
    (nothing under --benchmark-disable, where a test runs once untimed)."""

    def put(key: str, count: int) -> None:
        if benchmark.stats:
            benchmark.extra_info[key] = count / benchmark.stats.stats.median

    return put
