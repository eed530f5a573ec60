"""Probe (issue 3's 15 minutes): is data-parallel training on 2 processes (one thread each, gloo)
faster than one process on this 2-core machine? Each process takes teacher-UNet steps at batch
16 (channels-last), MODE=ddp (DistributedDataParallel), manual (one all_reduce of the flattened
gradients) or none (no communication: the compute alone). From the repo root:
    for m in ddp manual none; do MODE=$m OMP_NUM_THREADS=1 PYTHONPATH=src \
        .venv/bin/torchrun --nproc_per_node 2 scripts/probes/gloo_allreduce.py; done
"""
import os
import time

import torch
import torch.distributed as dist

from vlv import components, vocab, world

dist.init_process_group("gloo")
torch.set_num_threads(1)
torch.manual_seed(0)
corpus = [world.caption(world.scene_at(0, i, 32).attributes) for i in range(500)]
t2i = components.build_t2i("t2i-tiny", vocab.clip_tokenizer(corpus))
unet = t2i.unet.to(memory_format=torch.channels_last)
mode = os.environ.get("MODE", "ddp")
model = torch.nn.parallel.DistributedDataParallel(unet) if mode == "ddp" else unet
opt = torch.optim.AdamW(unet.parameters(), 1e-3)
B = 16
ids = t2i.tokenizer(corpus[:B], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
with torch.no_grad():
    cond = t2i.text_encoder(ids).last_hidden_state
z, t = torch.randn(B, 4, 16, 16), torch.randint(0, 1000, (B,))


def step():
    ((model(z, t, encoder_hidden_states=cond).sample - z) ** 2).mean().backward()
    if mode == "manual":
        dist.all_reduce(torch.cat([p.grad.flatten() for p in unet.parameters()]))
    opt.step()
    opt.zero_grad()


for _ in range(3):
    step()
t0 = time.perf_counter()
for _ in range(10):
    step()
n = sum(p.numel() for p in unet.parameters())
print(f"{mode} rank {dist.get_rank()}: {(time.perf_counter() - t0) / 10:.3f} s/step, {n / 1e6:.2f}M parameters", flush=True)
