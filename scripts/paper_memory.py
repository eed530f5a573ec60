"""Memory the paper profile's weights and optimizer state take per GPU (a docs/RESULTS.md block), or --check it.

Arithmetic, not a measurement: the parts are built from their architecture cards on the meta
device (no weights), the stage modules mark what trains as the paper profile says, and each
parameter costs 4 bytes (fp32 weight) + for a trainable one 4 (gradient) + 8 (AdamW's two
moments); with `weights_dtype: bf16`, 2 + 2 + 4. Every GPU of a DDP run holds all of it.
Activations come on top and grow with the per-GPU micro-batch: measure them with
`vlv bench-arch --card paper` on the GPU.

    python scripts/paper_memory.py            # rewrite the block in docs/RESULTS.md
    python scripts/paper_memory.py --check    # exit 1 if it is stale (the tests run this)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import doc_block  # noqa: E402

from vlv import cards, components, config  # noqa: E402
from vlv.autoencoder import VLVEncoder  # noqa: E402

START, END = "<!-- paper-memory:start (scripts/paper_memory.py) -->", "<!-- paper-memory:end -->"
GIB = 1024**3


def counts(params: config.Params) -> dict[str, dict[str, int]]:
    """stage -> {"all": parameters held, "trainable": parameters AdamW updates}."""
    with torch.device("meta"):
        unet, vae = cards.build("sd-2.1-base", "unet"), cards.build("sd-2.1-base", "vae")
        clip = cards.build("sd-2.1-base", "text_encoder")
        florence = cards.build("florence2-large", "model")
        llm = cards.build("qwen2.5-3b", "model")
        card = cards.load_card("florence2-large")
        vision = components.VisionParts(florence, [0], card["image_size"], card["image_mean"], card["image_std"], "card")
        encoder = VLVEncoder(vision, params.stage1.num_queries, int(clip.config.hidden_size))
        hidden = int(llm.config.hidden_size)
        mlp = torch.nn.Sequential(torch.nn.Linear(int(clip.config.hidden_size), hidden), torch.nn.Linear(hidden, hidden))
    encoder.set_trainable(params.stage1.trainable)
    n = components.param_count
    enc_all, enc_train = n(encoder), n(encoder, trainable_only=True)
    frozen1 = n(unet) + n(vae) + n(clip)
    llm_train = n(llm) if "llm" in params.stage2.trainable else 0
    enc2 = enc_train if "encoder" in params.stage2.trainable else 0
    return {
        "stage1": {"all": frozen1 + enc_all, "trainable": enc_train},
        "stage2": {"all": n(clip) + enc_all + n(mlp) + n(llm), "trainable": enc2 + n(mlp) + llm_train},
        "llm": {"all": n(llm), "trainable": n(llm)},
    }


def gib(all_: int, trainable: int, weights_dtype: str) -> float:
    w, g, adam = (4, 4, 8) if weights_dtype == "fp32" else (2, 2, 4)
    return (all_ * w + trainable * (g + adam)) / GIB


def table(params: config.Params) -> str:
    c = counts(params)
    rows = ["| stage (paper profile) | parameters held | trained | fp32 master weights (default) | `weights_dtype: bf16` |",
            "| --- | ---: | ---: | ---: | ---: |"]
    names = {"stage1": "stage 1: SD-2.1 UNet + VAE + CLIP (frozen), Florence-2-large (DaViT frozen)",
             "stage2": "stage 2: CLIP (frozen), VLV encoder, MLP, Qwen2.5-3B",
             "llm": "of which Qwen2.5-3B alone"}
    for key, label in names.items():
        a, t = c[key]["all"], c[key]["trainable"]
        rows.append(f"| {label} | {a / 1e9:.2f} B | {t / 1e9:.2f} B | {gib(a, t, 'fp32'):.1f} GiB | {gib(a, t, 'bf16'):.1f} GiB |")
    return "\n".join(rows) + ("\n\nWeights, gradients and AdamW moments per GPU (every DDP replica holds them all), before "
                              "activations; from the architecture cards by `scripts/paper_memory.py`.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    params = config.load(ROOT / "profiles" / "paper.yaml")
    return doc_block.write(START, END, table(params), args.check, "paper_memory", "paper memory table")


if __name__ == "__main__":
    raise SystemExit(main())
