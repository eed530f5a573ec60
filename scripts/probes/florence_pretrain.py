"""Probe (issue 4): does captioning pretraining of the tiny Florence-2 (as the real one is
pretrained) make its decoder's query outputs carry where the objects are? Trains
Florence2ForConditionalGeneration from the card as an image -> caption model on the images
split (Qwen2-style tokenizer of models/pretrained/llm), then trains queries + a linear head on
the first object's position (9 cells), supervised, with Florence frozen except its decoder;
compare with --pre_steps 0 (random Florence). From the repo root:
    .venv/bin/python scripts/probes/florence_pretrain.py --pre_steps 600
"""
import sys, time, argparse; sys.path.insert(0, "src")
import numpy as np, torch, torch.nn.functional as F
from vlv import cards, components, data, world
from vlv.autoencoder import VLVEncoder
ap = argparse.ArgumentParser(); ap.add_argument("--pre_steps", type=int, default=600); ap.add_argument("--steps", type=int, default=300)
ap.add_argument("--lr", type=float, default=1e-3)
a = ap.parse_args()
torch.manual_seed(0)
tok = components.load_llm("models/pretrained/llm").tokenizer
card = cards.load_card("florence2-tiny")
cfg = card["parts"]["model"]["config"]
cfg["text_config"].update(vocab_size=len(tok) + 1, pad_token_id=0, bos_token_id=0, eos_token_id=0, decoder_start_token_id=0, forced_eos_token_id=0)
cfg["image_token_id"] = len(tok)
vis = components.build_vision(card)
enc = VLVEncoder(vis, 24, 128)
fl = enc.florence; m = fl.model
ds = data.ShardDataset("data/prepared", "images", captions=True)
N = len(ds)
def encode(x):
    x = ((x + 1) / 2 - enc.mean) / enc.std
    image = m.get_image_features(x).pooler_output
    prompt = m.get_input_embeddings()(enc.prompt_ids.clamp(max=len(tok) - 1)).unsqueeze(0).expand(x.shape[0], -1, -1)
    return m.language_model.encoder(inputs_embeds=torch.cat([image, prompt], 1)).last_hidden_state
opt = torch.optim.AdamW(fl.parameters(), lr=a.lr, weight_decay=0.01)
g = torch.Generator().manual_seed(0); t0 = time.time()
for step in range(a.pre_steps):
    idx = torch.randint(0, N, (32,), generator=g)
    x = torch.stack([ds[int(i)]["pixel_values"] for i in idx])
    rows = [ids + [0] for ids in tok([ds._caption[int(i)] for i in idx]).input_ids]
    w = max(map(len, rows))
    lab = torch.full((32, w), -100); dec_in = torch.zeros((32, w), dtype=torch.long)
    for r, ids in enumerate(rows):
        lab[r, : len(ids)] = torch.tensor(ids); dec_in[r, 1 : len(ids)] = torch.tensor(ids[:-1])
    h = m.language_model.decoder(input_ids=dec_in, encoder_hidden_states=encode(x)).last_hidden_state
    loss = F.cross_entropy(fl.lm_head(h).flatten(0, 1), lab.flatten())
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(fl.parameters(), 1.0); opt.step()
    if step % 100 == 99: print("pretrain", step + 1, round(loss.item(), 3), f"{time.time() - t0:.0f}s", flush=True)
# position probe: queries + decoder + head trainable
def load(split, n):
    d = data.ShardDataset("data/prepared", split, captions=True, limit=n)
    return torch.stack([d[i]["pixel_values"] for i in range(len(d))]), torch.tensor([world.parse(c).objects[0].cell for c in d.rows["caption"]])
xt, yt = load("pairs", 2000); xv, yv = load("val", 300)
head = torch.nn.Linear(24 * 128, 9)
enc.set_trainable(["queries", "projection", "language_model"])
params = [p for p in enc.parameters() if p.requires_grad] + list(head.parameters())
opt = torch.optim.AdamW(params, lr=3e-4); acc = []
for step in range(a.steps):
    idx = torch.randint(0, len(xt), (32,), generator=g)
    out = head(enc(xt[idx]).flatten(1)); loss = F.cross_entropy(out, yt[idx])
    opt.zero_grad(); loss.backward(); opt.step(); acc.append(float((out.argmax(1) == yt[idx]).float().mean()))
    if step % 100 == 99:
        with torch.no_grad(): va = float((head(enc(xv).flatten(1)).argmax(1) == yv).float().mean())
        print("position", step + 1, "train", round(np.mean(acc[-50:]), 3), "val", round(va, 3), flush=True)
