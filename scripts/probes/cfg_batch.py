"""Probe (issue 7.5): generate() with 77-token conditioning, one batched UNet call for both halves of
classifier-free guidance vs two calls (76 tokens force the two-call path), alternating, in one run.
    .venv/bin/python scripts/probes/cfg_batch.py
"""
import time, torch, statistics, sys
sys.path.insert(0, "src")
from vlv import autoencoder, components, vocab, world
torch.set_num_threads(2)
caps = [s.caption() for s in world.sample_scenes(0, 500)]
torch.manual_seed(0)
t2i = components.build_t2i("t2i-tiny", vocab.clip_tokenizer(caps))
enc = autoencoder.VLVEncoder(components.build_vision("florence2-tiny"), 77, int(t2i.text_encoder.config.hidden_size))
m = autoencoder.VLVAutoencoder(enc, t2i).eval()
cond = m.clip.from_text(caps[:16]).detach()
orig_cat = torch.cat
def run(batched):
    c = cond if batched else cond[:, :76]  # 76 tokens: forces the two-call path (same work per call within 1%)
    t0 = time.perf_counter(); m.generate(c, 32, 2.0, 20); return time.perf_counter() - t0
res = {True: [], False: []}
for r in range(6):
    for b in (True, False):
        res[b].append(run(b))
print({("batched" if k else "two calls"): round(statistics.median(v), 4) for k, v in res.items()},
      "ratio two/batched", round(statistics.median(res[False]) / statistics.median(res[True]), 3))
