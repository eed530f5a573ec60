"""Stage 2: the captioner (docs/METHOD.md, stage 2).

image -> VLV encoder (from stage 1) -> frozen CLIP text encoder through its embedding path
-> MLP (CLIP hidden -> LLM hidden) -> prefix ``inputs_embeds`` of a causal LM, which is
trained to continue the prefix with the caption and an end-of-text token (so it learns to
stop). Labels are -100 on the prefix and on padding. Every width comes from the configs.

A captioner folder holds everything it needs and loads in one call
(``Captioner.load(folder)``)::

    captioner.json              settings (max caption tokens, beams, resolution, ...)
    captioner_head.safetensors  the MLP
    encoder/                    the VLV encoder (vlv.autoencoder.VLVEncoder layout)
    clip/                       the frozen CLIP text encoder + its tokenizer
    llm/                        the causal LM + its tokenizer (transformers layout)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .autoencoder import ENCODER_FILES, CLIPConditioner, VLVEncoder
from .components import check_written
from .errors import VLVError

TRAINABLE_SETS = ("mlp", "mlp+llm", "mlp+llm+encoder")
CONFIG = "captioner.json"
HEAD = "captioner_head.safetensors"
# what save writes (an LLM's weights may be sharded; a tokenizer folder without tokenizer.json loads empty)
HF_FILES = ("config.json", "*.safetensors", "tokenizer.json", "tokenizer_config.json")
FILES = (CONFIG, HEAD, *(f"encoder/{f}" for f in ENCODER_FILES), *(f"{part}/{f}" for part in ("clip", "llm") for f in HF_FILES))


class Captioner(nn.Module):
    """VLV encoder -> frozen CLIP -> MLP -> LLM. ``forward(batch)`` = caption loss."""

    def __init__(self, encoder: VLVEncoder, text_encoder, clip_tokenizer, llm, tokenizer, max_caption_tokens: int = 32):
        super().__init__()
        self.encoder = encoder
        text_encoder.requires_grad_(False)
        self.clip = CLIPConditioner(text_encoder, clip_tokenizer)
        self.llm, self.tokenizer = llm, tokenizer
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise VLVError("the LLM's tokenizer needs an eos and a pad token (set them in its tokenizer_config.json)")
        hidden = int(llm.config.hidden_size)
        self.mlp = nn.Sequential(nn.Linear(self.clip.width, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.max_caption_tokens = max_caption_tokens
        self.config: dict = {}
        self.lr_scale: dict[str, float] = {}  # part -> multiple of the stage lr (build: stage2.lr_scale); absent = 1

    def train(self, mode: bool = True):
        super().train(mode)
        self.clip.eval()  # frozen: never in training behaviour
        return self

    def set_trainable(self, choice: str, encoder_parts: Sequence[str]) -> None:
        """``mlp`` | ``mlp+llm`` | ``mlp+llm+encoder`` (the encoder parts named by ``encoder_parts``)."""
        if choice not in TRAINABLE_SETS:
            raise VLVError(f"stage2.trainable={choice!r}; choose one of {list(TRAINABLE_SETS)}")
        self.requires_grad_(False)
        self.mlp.requires_grad_(True)
        if "llm" in choice:
            self.llm.requires_grad_(True)
        if "encoder" in choice:
            self.encoder.set_trainable(encoder_parts)

    def param_groups(self, lr: float) -> list[dict]:
        """The training loop's optimizer groups: each trainable part at ``lr`` x its ``lr_scale``."""
        groups = []
        for name in ("encoder", "mlp", "llm"):
            params = [p for p in getattr(self, name).parameters() if p.requires_grad]
            if params:
                groups.append({"params": params, "lr": lr * self.lr_scale.get(name, 1.0), "name": name})
        return groups

    # ------------------------------------------------------------------ model
    def prefix(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """B x Nq x LLM-hidden prefix embeddings of the images."""
        return self.mlp(self.clip.from_embeddings(self.encoder(pixel_values)))

    def caption_ids(self, captions: Sequence[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids of ``caption + eos`` (at most ``max_caption_tokens``, eos kept) and their mask."""
        tok = self.tokenizer
        rows = [ids[: self.max_caption_tokens - 1] + [tok.eos_token_id]
                for ids in tok(list(captions), add_special_tokens=False).input_ids]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return ids.to(device), mask.to(device)

    def forward(self, batch: dict) -> torch.Tensor:
        x = batch["pixel_values"]
        return self.loss(x, *self.caption_ids(batch["caption"], x.device))

    def loss(self, x: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Caption loss of images ``x`` against token ``ids`` (B x T, eos included) where ``mask`` is 1."""
        prefix = self.prefix(x)
        tokens = self.llm.get_input_embeddings()(ids)
        embeds = torch.cat([prefix.to(tokens.dtype), tokens], dim=1)
        n_prefix = prefix.shape[1]
        attention = torch.cat([torch.ones(x.shape[0], n_prefix, dtype=mask.dtype, device=x.device), mask], dim=1)
        labels = torch.cat([torch.full((x.shape[0], n_prefix), -100, dtype=torch.long, device=x.device),
                            ids.masked_fill(mask == 0, -100)], dim=1)
        return self.llm(inputs_embeds=embeds, attention_mask=attention, labels=labels).loss

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, num_beams: int = 1, max_new_tokens: int = 32) -> list[str]:
        """Captions by beam search (greedy when ``num_beams`` is 1); stops at end-of-text."""
        prefix = self.prefix(pixel_values)
        prefix = prefix.to(self.llm.get_input_embeddings().weight.dtype)
        mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
        out = self.llm.generate(
            inputs_embeds=prefix, attention_mask=mask, num_beams=num_beams, max_new_tokens=max_new_tokens,
            do_sample=False, eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
        )
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    # ------------------------------------------------------------------ save / load
    def save(self, folder: str | Path, **settings) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        provenance = getattr(self.encoder, "config", {})
        self.encoder.save(folder / "encoder", extra={k: provenance[k] for k in ("t2i", "resolution") if k in provenance})
        self.clip.text_encoder.save_pretrained(folder / "clip", safe_serialization=True)
        self.clip.tokenizer.save_pretrained(folder / "clip")
        self.llm.save_pretrained(folder / "llm", safe_serialization=True)
        self.tokenizer.save_pretrained(folder / "llm")
        save_file({k: v.detach().contiguous() for k, v in self.mlp.state_dict().items()}, str(folder / HEAD))
        self.config = {"max_caption_tokens": self.max_caption_tokens, **self.config, **settings}
        (folder / CONFIG).write_text(json.dumps(self.config, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Captioner":
        from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPTextModel

        folder = check_written(folder, FILES, "captioner", "stage2")  # missing, not JSON, truncated: one line
        cfg = json.loads((folder / CONFIG).read_text())
        st = dict(use_safetensors=True, local_files_only=True, dtype=torch.float32)
        model = cls(
            VLVEncoder.load(folder / "encoder"),
            CLIPTextModel.from_pretrained(folder / "clip", **st),
            AutoTokenizer.from_pretrained(folder / "clip", local_files_only=True),
            AutoModelForCausalLM.from_pretrained(folder / "llm", **st),
            AutoTokenizer.from_pretrained(folder / "llm", local_files_only=True),
            max_caption_tokens=cfg["max_caption_tokens"],
        )
        model.mlp.load_state_dict(load_file(str(folder / HEAD)))
        model.config = cfg
        return model.eval()

    @property
    def resolution(self) -> int:
        return int(self.config.get("resolution", self.encoder.image_size))


@torch.no_grad()
def build(params, encoder: VLVEncoder | None = None, stage1_dir: str | Path = "models/stage1") -> Captioner:
    """Stage 2's model from params (a ``config.Params``): the VLV encoder (``encoder`` if given,
    else the stage-1 folder, or for ``stage2.init: random`` components.vision's Florence-2 with fresh
    queries and projection), the frozen CLIP
    text encoder of the T2I folder, the LLM folder; ``stage2.trainable`` trainable."""
    from . import components

    c, s = params.components, params.stage2
    dtype = components.DTYPES[s.weights_dtype]
    text_encoder, clip_tokenizer = components.load_text_encoder(c.t2i, dtype=dtype)
    llm = components.load_llm(c.llm, dtype=dtype)
    torch.manual_seed(params.seed)
    if encoder is None and s.init == "stage1":
        encoder = VLVEncoder.load(stage1_dir, dtype=dtype)
    elif encoder is None:  # the no-stage-1 ablation: components.vision's Florence-2, fresh queries and projection
        encoder = VLVEncoder(components.vision(c.vision, c.vision_card, c.vision_task, dtype), params.stage1.num_queries,
                             int(text_encoder.config.hidden_size), token_scale=params.stage1.token_scale)
        encoder.config = {"t2i": c.t2i, "resolution": params.prepare.image_size}
    model = Captioner(encoder, text_encoder, clip_tokenizer, llm.model, llm.tokenizer, s.max_caption_tokens)
    model.set_trainable(s.trainable, params.stage1.trainable)
    model.lr_scale = s.lr_scale.model_dump()
    return model


def caption_batches(model: Captioner, images: torch.Tensor, num_beams: int, max_new_tokens: int,
                    batch_size: int = 32, desc: str = "caption") -> list[str]:
    """Captions of a stack of images (B x 3 x S x S in [-1, 1]) with a progress bar."""
    from tqdm.auto import tqdm

    model.eval()
    out: list[str] = []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch"):
        out += model.generate(images[i : i + batch_size], num_beams, max_new_tokens)
    return out
