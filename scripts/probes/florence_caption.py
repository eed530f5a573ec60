"""Probe (issue 4): can the tiny Florence-2 (the committed card, its init) learn to caption the
shapes world itself when pretrained as Florence-2 is, image + task prompt -> caption, on the
17,400 captioned images of the `images` split? Greedy captions of val images are scored with
vlv.world every --eval-every steps. Optionally saves the result as a transformers Florence-2
folder (weights, the LLM's tokenizer, preprocessor_config.json) that `components.vision` loads.
From the repo root, after `pretrain`:
    .venv/bin/python scripts/probes/florence_caption.py --steps 1500 --lr 1e-3 --save /tmp/florence
"""
import argparse, copy, json, sys, time; sys.path.insert(0, "src")
import torch, torch.nn.functional as F
from vlv import cards, components, data, world

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=1500); ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--batch", type=int, default=32); ap.add_argument("--eval-every", type=int, default=500)
ap.add_argument("--val", type=int, default=300); ap.add_argument("--save", default=None)
ap.add_argument("--split", default="images")
a = ap.parse_args()
torch.manual_seed(0)
tok = components.load_llm("models/pretrained/llm").tokenizer
eos = tok.eos_token_id
card = copy.deepcopy(cards.load_card("florence2-tiny"))
cfg = card["parts"]["model"]["config"]
n_vocab = len(tok) + 1
cfg["text_config"].update(vocab_size=n_vocab, pad_token_id=eos, bos_token_id=eos, eos_token_id=eos,
                          decoder_start_token_id=eos, forced_eos_token_id=eos)
cfg["image_token_id"] = len(tok)
fl = cards.build(card, "model"); m = fl.model
prompt = "Describe in detail what is shown in the image."
prompt_ids = torch.tensor(tok(prompt).input_ids)


def encode(x):
    x = (x + 1) / 2
    x = (x - 0.5) / 0.5
    image = m.get_image_features(x).pooler_output
    p = m.get_input_embeddings()(prompt_ids).unsqueeze(0).expand(x.shape[0], -1, -1)
    return m.language_model.encoder(inputs_embeds=torch.cat([image, p], 1)).last_hidden_state


@torch.no_grad()
def greedy(x, max_new=32):
    fl.eval(); enc = encode(x); B = x.shape[0]
    ids = torch.full((B, 1), eos); done = torch.zeros(B, dtype=torch.bool)
    for _ in range(max_new):
        h = m.language_model.decoder(input_ids=ids, encoder_hidden_states=enc).last_hidden_state[:, -1]
        nxt = fl.lm_head(h)[:, : len(tok)].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
        ids = torch.cat([ids, nxt[:, None]], 1); done |= nxt == eos
        if done.all(): break
    fl.train()
    return [tok.decode([t for t in row[1:].tolist() if t != eos]).strip() for row in ids]


ds = data.ShardDataset("data/prepared", a.split, captions=True); N = len(ds)
vd = data.ShardDataset("data/prepared", "val", captions=True, limit=a.val)
xv = torch.stack([vd[i]["pixel_values"] for i in range(len(vd))]); rv = list(vd._caption)
opt = torch.optim.AdamW(fl.parameters(), lr=a.lr, weight_decay=0.01)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * (0.25 + 0.75 * 0.5 * (1 + torch.cos(torch.tensor(s / a.steps * 3.14159)).item())))
g = torch.Generator().manual_seed(0); t0 = time.time()
for step in range(a.steps):
    idx = torch.randint(0, N, (a.batch,), generator=g)
    x = torch.stack([ds[int(i)]["pixel_values"] for i in idx])
    rows = [ids + [eos] for ids in tok([ds._caption[int(i)] for i in idx]).input_ids]
    w = max(map(len, rows))
    lab = torch.full((a.batch, w), -100); dec_in = torch.full((a.batch, w), eos)
    for r, ids in enumerate(rows):
        lab[r, : len(ids)] = torch.tensor(ids); dec_in[r, 1 : len(ids)] = torch.tensor(ids[:-1])
    h = m.language_model.decoder(input_ids=dec_in, encoder_hidden_states=encode(x)).last_hidden_state
    loss = F.cross_entropy(fl.lm_head(h).flatten(0, 1), lab.flatten())
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(fl.parameters(), 1.0); opt.step(); sched.step()
    if (step + 1) % 100 == 0: print("step", step + 1, "loss", round(loss.item(), 4), f"{time.time() - t0:.0f}s", flush=True)
    if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
        preds = greedy(xv)
        s = world.score(preds, rv)
        print("val", step + 1, {k: round(v, 3) for k, v in s.items()}, "|", preds[0], "|", rv[0], flush=True)
if a.save:
    fl.save_pretrained(a.save, safe_serialization=True); tok.save_pretrained(a.save)
    json.dump({"crop_size": {"height": 32, "width": 32}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
              open(f"{a.save}/preprocessor_config.json", "w"))
    print("saved", a.save)
