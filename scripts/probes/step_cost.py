"""Probe (issue 3's 15 minutes): seconds per training step of the embedded parts (random weights
from their cards; timing does not depend on training) at several global batches, with the conv
weights in the default or the channels-last (NHWC) layout, on this machine's threads.
    .venv/bin/python scripts/probes/step_cost.py --part teacher --batch 16 32 64 --layout default channels_last
    .venv/bin/python scripts/probes/step_cost.py --part vae --batch 32 --layout default channels_last
    .venv/bin/python scripts/probes/step_cost.py --part stage1 stage2 --batch 32 64
Each cell: 2 warm-up steps, then the mean of --steps timed steps (forward, backward, clip, AdamW);
--rounds repeats the whole grid so drift shows. Prints one line per cell.
"""
import argparse
import sys
import time

import torch

sys.path.insert(0, "src")
sys.path.insert(0, "tests/benchmarks")
from vlv import autoencoder, cards, components, latents, throughput, vocab, world  # noqa: E402
from vlv.captioner import Captioner  # noqa: E402
import conftest as bench  # noqa: E402  (the benchmarks' encoder: the stage-1 trainable set)

ap = argparse.ArgumentParser()
ap.add_argument("--part", nargs="+", default=["teacher"], choices=["teacher", "vae", "stage1", "stage2"])
ap.add_argument("--batch", type=int, nargs="+", default=[32])
ap.add_argument("--layout", nargs="+", default=["default"], choices=["default", "channels_last"])
ap.add_argument("--steps", type=int, default=8)
ap.add_argument("--rounds", type=int, default=1)
ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
a = ap.parse_args()
if a.threads:
    torch.set_num_threads(a.threads)

captions = [s.caption() for s in world.sample_scenes(0, 2000)]
torch.manual_seed(0)
t2i = components.build_t2i("t2i-tiny", vocab.clip_tokenizer(captions))
t2i.text_encoder.requires_grad_(False)


class Teacher(torch.nn.Module):  # the teacher's UNet step on given latents and frozen-text-encoder states
    def __init__(self):
        super().__init__()
        self.unet = t2i.unet

    def forward(self, b):
        pred = self.unet(b["z"], b["t"], encoder_hidden_states=b["cond"]).sample
        return ((pred - b["z"]) ** 2).mean()


class VAE(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.vae = t2i.vae

    def forward(self, b):
        d = self.vae.encode(b["x"]).latent_dist
        return ((self.vae.decode(d.sample()).sample - b["x"]) ** 2).mean() + 1e-6 * d.kl().mean()


def model_and_batch(part: str, n: int):
    x = torch.rand(n, 3, 32, 32) * 2 - 1
    if part == "teacher":
        ids = t2i.tokenizer(captions[:n], padding="max_length", max_length=t2i.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            cond = t2i.text_encoder(ids).last_hidden_state
        return Teacher(), {"z": torch.randn(n, 4, 16, 16), "t": torch.randint(0, 1000, (n,)), "cond": cond}
    if part == "vae":
        return VAE(), {"x": x}
    if part == "stage1":
        m = autoencoder.VLVAutoencoder(bench.encoder(t2i), t2i, seed=0)
        mean, std = latents.encode(m.vae, [{"pixel_values": xi} for xi in x], desc="latents")
        return m, {"pixel_values": x, "sample_id": torch.arange(n), "latent_mean": mean, "latent_std": std}
    tok = vocab.qwen2_tokenizer(captions)
    llm = cards.build("llm-tiny", "model", vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    m = Captioner(bench.encoder(t2i), t2i.text_encoder, t2i.tokenizer, llm, tok, max_caption_tokens=32)
    m.set_trainable("mlp+llm+encoder", bench.STAGE1_TRAINABLE)
    return m, {"pixel_values": x, "caption": captions[:n]}


print("torch threads", torch.get_num_threads(), flush=True)
for r in range(a.rounds):
    for part in a.part:
        for n in a.batch:
            model, batch = model_and_batch(part, n)
            for layout in a.layout:
                model.to(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
                step = throughput.make_step(model)
                for _ in range(2):
                    step(batch)
                t0 = time.perf_counter()
                for _ in range(a.steps):
                    step(batch)
                s = (time.perf_counter() - t0) / a.steps
                print(f"round {r} {part:8s} batch {n:3d} {layout:13s} {s:.3f} s/step {n / s:6.1f} samples/s", flush=True)
