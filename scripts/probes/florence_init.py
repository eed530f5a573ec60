"""Probe (issue 4): does the random tiny Florence-2 let the query decoder learn where objects are?
Trains the VLV encoder (every part trainable) with linear heads on the first object's cell
(9 classes), colour, shape and size, supervised, on the 2000 pairs; prints train-batch and val accuracy every 100 steps.
--init card: the card as committed (init_std 0.1, position embeddings std 1);
--init library: the library's initialisation (std 0.02 everywhere).
--tap: where the head reads: vision (image tokens, flattened), encoder (BART encoder, flattened),
encmean (BART encoder, mean of tokens), decoder (the Nq query outputs, flattened), clip (the frozen
CLIP text encoder's output for the projected queries: what stage 2 reads).
Flattened taps can read position from the token index alone; encmean and decoder need each token's
content to say where it is. From the repo root, after `prepare`:
    .venv/bin/python scripts/probes/florence_init.py --init library --tap decoder --steps 300
"""
import sys, time, argparse; sys.path.insert(0, "src")
import numpy as np, torch, torch.nn.functional as F
from vlv import cards, components, data, world
from vlv.autoencoder import VLVEncoder
ap = argparse.ArgumentParser()
ap.add_argument("--init", choices=["card", "library"], default="card")
ap.add_argument("--tap", choices=["vision", "encoder", "encmean", "decoder", "clip"], default="decoder")
ap.add_argument("--img-pos-std", type=float, default=None); ap.add_argument("--enc-pos-std", type=float, default=None); ap.add_argument("--init-std", type=float, default=None)
ap.add_argument("--vision", default="", help="vision_config overrides, e.g. 'depths=[2,2]'")
ap.add_argument("--steps", type=int, default=300); ap.add_argument("--lr", type=float, default=3e-4); ap.add_argument("--nq", type=int, default=24)
ap.add_argument("--size", type=int, default=None, help="resize the 32-px images to this side before the tower (bilinear)")
ap.add_argument("--train-split", default="pairs", help="pairs (2000, what stage 2 sees) or images (17,400: what a pretrained tower could have seen)")
ap.add_argument("--n-train", type=int, default=None)
a = ap.parse_args()
torch.manual_seed(0)
card = cards.load_card("florence2-tiny")
if a.init == "library":
    card["parts"]["model"].pop("init", None); card["parts"]["model"]["config"]["text_config"].pop("init_std", None)
model = card["parts"]["model"]
for kv in filter(None, a.vision.split(";")):
    k, v = kv.split("="); model["config"]["vision_config"][k] = eval(v)
if a.init_std is not None: model["config"]["text_config"]["init_std"] = a.init_std
for arg, key in ((a.img_pos_std, "model.multi_modal_projector.image_position_embed.*"), (a.enc_pos_std, "model.language_model.encoder.embed_positions.weight")):
    if arg is not None: model.setdefault("init", {})[key] = arg
clip = None
if a.tap == "clip":  # the frozen CLIP text encoder of the committed T2I folder, as stage 2 reads the embedding
    from vlv.autoencoder import CLIPConditioner
    t2i = components.load_t2i("models/pretrained/t2i")
    clip = CLIPConditioner(t2i.text_encoder, t2i.tokenizer).eval().requires_grad_(False)
enc = VLVEncoder(components.build_vision(card), a.nq, 128)
m = enc.florence.model
def feats(x):
    if a.size: x = F.interpolate(x, size=(a.size, a.size), mode="bilinear", align_corners=False, antialias=True)
    x = ((x + 1) / 2 - enc.mean) / enc.std
    image = m.get_image_features(x).pooler_output
    if a.tap == "vision": return image.flatten(1)
    prompt = m.get_input_embeddings()(enc.prompt_ids).unsqueeze(0).expand(x.shape[0], -1, -1)
    encoded = m.language_model.encoder(inputs_embeds=torch.cat([image, prompt], 1)).last_hidden_state
    if a.tap == "encoder": return encoded.flatten(1)
    if a.tap == "encmean": return encoded.mean(1)
    q = enc.queries.unsqueeze(0).expand(x.shape[0], -1, -1)
    decoded = m.language_model.decoder(inputs_embeds=q, encoder_hidden_states=encoded).last_hidden_state
    if a.tap == "decoder": return decoded.flatten(1)
    return clip.from_embeddings(enc.projection(decoded)).flatten(1)
def load(split, n):
    ds = data.ShardDataset("data/prepared", split, captions=True, limit=n)  # the images split has captions too (pretrain reads them)
    x = torch.stack([ds[i]["pixel_values"] for i in range(len(ds))])
    objs = [world.parse(c).objects[0] for c in ds.rows["caption"]]
    return x, torch.tensor([[o.cell, list(world.COLOURS).index(o.colour), world.SHAPES.index(o.shape), list(world.SIZES).index(o.size)] for o in objs])
xt, yt = load(a.train_split, a.n_train); xv, yv = load("val", 300)
FIELDS = {"cell": 9, "colour": 6, "shape": 3, "size": 2}
with torch.no_grad(): head = torch.nn.Linear(feats(xt[:2]).shape[1], sum(FIELDS.values()))
def split(out): return torch.split(out, list(FIELDS.values()), dim=1)
opt = torch.optim.AdamW(list(enc.parameters()) + list(head.parameters()), lr=a.lr)
g = torch.Generator().manual_seed(0); t0 = time.time(); acc = []
for step in range(a.steps):
    idx = torch.randint(0, len(xt), (32,), generator=g)
    outs = split(head(feats(xt[idx]))); loss = sum(F.cross_entropy(o, yt[idx, i]) for i, o in enumerate(outs))
    opt.zero_grad(); loss.backward(); opt.step()
    acc.append([float((o.argmax(1) == yt[idx, i]).float().mean()) for i, o in enumerate(outs)])
    if step % 100 == 99:
        with torch.no_grad(): va = [float((o.argmax(1) == yv[:, i]).float().mean()) for i, o in enumerate(split(head(feats(xv))))]
        tr = np.mean(acc[-100:], axis=0)
        print(f"init={a.init} size={a.size} vision={a.vision} img_pos={a.img_pos_std} enc_pos={a.enc_pos_std} init_std={a.init_std} tap={a.tap} step {step + 1}: "
              + " ".join(f"{f} {t:.2f}/{v:.2f}" for f, t, v in zip(FIELDS, tr, va)) + f" (train/val, {time.time() - t0:.0f}s)", flush=True)
