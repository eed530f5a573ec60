"""Model folders in the real Hugging Face layouts, shrunk, for the paper-profile test.

tests/test_paper_profile.py runs the project's paper profile (profiles/paper.yaml) end to end
on folders that look exactly like the three hub repos the paper uses, and on a LAION-style
webdataset; ``write_paper_layouts(root)`` writes them:

- ``stable-diffusion-2-1-base/``: the diffusers layout of stabilityai/stable-diffusion-2-1-base
  (model_index.json; unet/, vae/ with config.json + diffusion_pytorch_model.safetensors;
  text_encoder/ with config.json + model.safetensors; tokenizer/ with CLIP's vocab.json,
  merges.txt, special_tokens_map.json, tokenizer_config.json, padding with "!"; scheduler/ with
  the repo's PNDMScheduler config; feature_extractor/preprocessor_config.json). Weights float32.
- ``Florence-2-large/``: the native transformers-5 Florence-2 layout (florence-community):
  config.json (model_type florence2), model.safetensors stored float16, the BART tokenizer with
  Florence-2's 1024 added tokens and the "<image>" token named ``image_token``,
  preprocessor_config.json and processor_config.json.
- ``Qwen2.5-3B/``: Qwen/Qwen2.5-3B's layout: config.json in the v4 style the hub file has,
  generation_config.json, bf16 weights in two safetensors shards with their index, and a
  byte-level BPE tokenizer (tokenizer.json, tokenizer_config.json, vocab.json, merges.txt) with
  Qwen2.5's 22 added tokens in their real order.
- ``laion/``: webdataset shards (00000.tar, 00001.tar) of real photographs (scikit-image's
  bundled data), each key with .jpg, .txt (caption) and .json (LAION metadata).

Architectures keep their real features (block types, attention layout, activation, tied
embeddings, stored dtypes); only widths and depths shrink. Weights are random (seeded); the
tokenizers are trained here on a small generated English corpus. Nothing is downloaded.

Run ``python tests/paper_layouts.py OUT`` to write the folders to OUT and check that each loads
with the calls the project makes.
"""

from __future__ import annotations

import io
import json
import math
import random
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

SEED = 0
FOLDERS = {"t2i": "stable-diffusion-2-1-base", "vision": "Florence-2-large", "llm": "Qwen2.5-3B", "webdataset": "laion"}


# ------------------------------------------------------------------------------ helpers
def _write_json(path: Path, obj, indent: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def _read_json(path: Path):
    return json.loads(path.read_text())


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for the bytes 0..255, in the order
    GPT-2/CLIP list them: printable Latin-1 bytes as themselves first, then the rest mapped
    to code points from 256 up."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {b: chr(b) for b in kept}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in kept] + [symbols[b] for b in range(256) if b not in kept]


def train_bpe(tokenizer, corpus: list[str], merges: int, suffix: str = "", min_count: int = 2) -> list[tuple[str, str]]:
    """Byte-pair merges learnt from ``corpus`` as ``tokenizer`` (a ``tokenizers.Tokenizer``)
    normalises and pre-tokenises it; ``suffix`` marks a word's last symbol (CLIP's "</w>").
    A plain greedy BPE: the most frequent adjacent pair merges first, ties broken by the pair's
    text, so the result is the same on every run (the library's trainer breaks ties by hash order)."""
    from collections import Counter

    words: Counter = Counter()
    for line in corpus:
        text = tokenizer.normalizer.normalize_str(line) if tokenizer.normalizer else line
        for piece, _ in tokenizer.pre_tokenizer.pre_tokenize_str(text):
            symbols = list(piece)
            symbols[-1] += suffix
            words[tuple(symbols)] += 1
    learnt = []
    for _ in range(merges):
        pairs: Counter = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best, count = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if count < min_count:
            break
        learnt.append(best)
        merged: Counter = Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return learnt


def _vocab_from_merges(head: list[str], merges: list[tuple[str, str]], tail: list[str]) -> dict[str, int]:
    """head symbols, then every merge's result in merge order (once: two merges can spell the
    same token), then tail: ids in that order."""
    order = list(head)
    seen = set(order)
    for a, b in merges:
        assert a in seen and b in seen, (a, b)
        if a + b not in seen:
            order.append(a + b)
            seen.add(a + b)
    order += tail
    return {tok: i for i, tok in enumerate(order)}


def _write_vocab_merges(folder: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")


def _seed(offset: int = 0):
    import torch

    torch.manual_seed(SEED + offset)


def _checkpoint_like(model, offset: int, std: float = 0.02):
    """Random weights that look trained: every tensor gets seeded N(0, std) noise on top of its
    initialisation, so no bias is exactly 0, no norm weight exactly 1, no padding row all zeros
    (a zero-initialised element with no gradient would never move in training, unlike in a
    real checkpoint)."""
    import torch

    g = torch.Generator().manual_seed(SEED + offset)
    with torch.no_grad():
        for p in model.parameters():  # tied tensors come once
            p.add_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * std)
    return model


def _quietly(fn, *args, **kwargs):
    """Call fn with transformers/diffusers logging at error level (no 'randomly initialised' notes)."""
    from diffusers.utils import logging as d_logging
    from transformers.utils import logging as t_logging

    before = t_logging.get_verbosity(), d_logging.get_verbosity()
    t_logging.set_verbosity_error()
    d_logging.set_verbosity_error()
    try:
        return fn(*args, **kwargs)
    finally:
        t_logging.set_verbosity(before[0])
        d_logging.set_verbosity(before[1])


# ------------------------------------------------------------------------------- corpus
_PEOPLE = ["a man", "a woman", "a child", "an old man", "a young woman", "two friends", "a family", "a chef", "a farmer",
           "a runner", "a painter", "a fisherman", "a student", "a musician", "a couple", "a group of tourists", "an astronaut"]
_ANIMALS = ["a cat", "a dog", "a horse", "a bird", "two ducks", "a cow", "a fox", "a small puppy", "a tabby cat", "a brown bear",
            "a flock of sheep", "a butterfly", "an owl", "a goldfish", "a black dog"]
_THINGS = ["a red bicycle", "a wooden chair", "a cup of coffee", "a bowl of fruit", "an old camera", "a blue car", "a rocket",
           "a lighthouse", "a vase of flowers", "a stack of books", "a pair of shoes", "a laptop", "a teapot", "a guitar",
           "a yellow umbrella", "a sailing boat", "a clock tower", "a bridge", "a street lamp", "a basket of bread"]
_PLACES = ["on a beach", "in a park", "in the kitchen", "on a city street", "in a forest", "near the river", "on a mountain",
           "in a garden", "at the market", "in front of a house", "on a wooden table", "in the snow", "under a tree",
           "in a small cafe", "on the grass", "by the lake", "in a field of wheat", "at night", "in the desert", "on a boat"]
_ACTIONS = ["is sitting", "is standing", "is walking", "is running", "is looking at the camera", "is sleeping", "is eating",
            "is playing", "is reading a book", "is holding an umbrella", "is smiling", "is waiting", "is jumping",
            "is resting", "is drinking water"]
_ADJECTIVES = ["bright", "dark", "colorful", "quiet", "busy", "sunny", "foggy", "old", "modern", "small", "large", "beautiful",
               "simple", "detailed", "blurry", "sharp", "warm", "cold", "green", "white", "golden", "grey"]
_LIGHT = ["in the morning light", "at sunset", "under a cloudy sky", "on a rainy day", "in soft light", "in black and white",
          "with a blue sky behind", "with trees in the background", "seen from above", "in close-up"]
_STARTS = ["A photo of", "A picture of", "An image of", "A close-up photo of", "A painting of", "A wide shot of", "There is",
           "This is", "Here we see", "The image shows"]


def english_corpus(n: int = 400, seed: int = SEED) -> list[str]:
    """``n`` varied English sentences (image-caption style) from word lists, deterministic by seed."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 4
        subject = rng.choice(_PEOPLE + _ANIMALS) if kind < 2 else rng.choice(_THINGS)
        place, adj, light = rng.choice(_PLACES), rng.choice(_ADJECTIVES), rng.choice(_LIGHT)
        if kind == 0:
            s = f"{subject.capitalize()} {rng.choice(_ACTIONS)} {place}, {light}."
        elif kind == 1:
            s = f"{rng.choice(_STARTS)} {subject} {place}. The scene is {adj} and {rng.choice(_ADJECTIVES)}."
        elif kind == 2:
            s = f"{rng.choice(_STARTS)} {subject} {place} {light}; it looks {adj}."
        else:
            s = (f"In this {adj} photograph, {subject} stands {place}. Next to it {rng.choice(_PEOPLE + _ANIMALS)} "
                 f"{rng.choice(_ACTIONS)}. There are {rng.randint(2, 12)} of them in {rng.randint(1990, 2024)}!")
        out.append(s)
    return out


# ------------------------------------------------------------------------------- photos
# scikit-image's bundled photographs (they load offline), each with a plausible caption
_PHOTOS = [
    ("astronaut", "Portrait of a smiling astronaut in a NASA flight suit in front of the American flag."),
    ("coffee", "A cup of coffee with milk on a saucer with a spoon, seen from above on a red table."),
    ("chelsea", "Close-up of a tabby cat with green eyes looking to the side."),
    ("rocket", "A white rocket standing on its launch pad under a clear blue sky."),
    ("immunohistochemistry", "A microscope image of stained tissue with brown and blue cells."),
    ("hubble_deep_field", "The Hubble deep field: many distant colorful galaxies against the black of space."),
    ("retina", "A fundus photograph of a human retina with the optic disc and red blood vessels."),
    ("camera", "A black and white photo of a man in a coat looking through a camera on a tripod in a field."),
]
MAX_SIDE = 640  # the long side of the written photos (retina and hubble are larger)


def _photo_array(name: str):
    import numpy as np
    from skimage import data

    arr = getattr(data, name)()
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return arr[..., :3].astype("uint8")


def photographs(n: int) -> list[tuple[str, "PIL.Image.Image", str]]:  # noqa: F821
    """``n`` (name, RGB PIL image, caption) of real photographs. Beyond the eight bundled ones,
    mirrored and cropped variants (distinct pixels, same caption)."""
    from PIL import Image, ImageOps

    out = []
    for i in range(n):
        name, caption = _PHOTOS[i % len(_PHOTOS)]
        img = Image.fromarray(_photo_array(name))
        variant = i // len(_PHOTOS)
        if variant:
            if variant % 2:
                img = ImageOps.mirror(img)
            keep = max(0.6, 1.0 - 0.1 * ((variant + 1) // 2))
            w, h = img.size
            cw, ch = int(w * keep), int(h * keep)
            shift = (variant * 37) % max(1, w - cw + 1), (variant * 23) % max(1, h - ch + 1)
            img = img.crop((shift[0], shift[1], shift[0] + cw, shift[1] + ch))
            name = f"{name}_v{variant}"
        scale = MAX_SIDE / max(img.size)
        if scale < 1:
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
        out.append((name, img, caption))
    return out


def _jpeg(img, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def photo_folder(folder: Path, n: int = 3) -> Path:
    """``n`` photographs as JPEG files in ``folder`` (for ``vlv caption`` / ``vlv reconstruct``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, img, _) in enumerate(photographs(n)):
        (folder / f"{i:02d}_{name}.jpg").write_bytes(_jpeg(img))
    return folder


def write_webdataset(folder: Path, n: int, shard_size: int | None = None) -> Path:
    """LAION-style webdataset shards as img2dataset writes them: keys SSSSSIIII, and per key
    <key>.jpg, <key>.txt (the caption) and <key>.json (url, caption, size and LAION scores)."""
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED + 1)
    shard_size = shard_size or max(1, math.ceil(n / 2))
    items = photographs(n)
    for shard in range(math.ceil(n / shard_size)):
        with tarfile.open(folder / f"{shard:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for j, (name, img, caption) in enumerate(items[shard * shard_size:(shard + 1) * shard_size]):
                key = f"{shard:05d}{j:04d}"
                jpg = _jpeg(img)
                meta = {
                    "url": f"https://images.example.org/photos/{name}.jpg",
                    "caption": caption,
                    "key": key,
                    "status": "success",
                    "error_message": None,
                    "width": img.width,
                    "height": img.height,
                    "original_width": img.width,
                    "original_height": img.height,
                    "exif": "{}",
                    "sha256": hashlib.sha256(jpg).hexdigest(),
                    "similarity": round(rng.uniform(0.28, 0.42), 6),
                    "punsafe": round(rng.uniform(0.0, 0.05), 6),
                    "pwatermark": round(rng.uniform(0.0, 0.3), 6),
                    "aesthetic": round(rng.uniform(5.0, 7.0), 6),
                }
                for ext, payload in (("jpg", jpg), ("txt", caption.encode()), ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime, info.mode = len(payload), 1700000000, 0o644
                    tar.addfile(info, io.BytesIO(payload))
    return folder


def _corpus(extra: list[str] = ()) -> list[str]:
    """The tokenizers' training text: generated sentences, the photo captions and Florence-2's
    task prompts (as its processor's table spells them)."""
    captions = [c for _, c in _PHOTOS]
    prompts = ["What is the text in the image?", "What is the text in the image, with regions?", "What does the image describe?",
               "Describe in detail what is shown in the image.", "Describe with a paragraph what is shown in the image.",
               "Locate the objects with category name in the image.", "Locate the objects in the image, with their descriptions.",
               "Locate the region proposals in the image."]
    return english_corpus() + captions * 3 + prompts * 3 + list(extra)


# --------------------------------------------------------------------- stable diffusion
CLIP_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"


def write_clip_tokenizer(folder: Path, corpus: list[str], merges: int = 1500) -> None:
    """SD-2.1's tokenizer/ folder: CLIP byte-level BPE with "</w>" word ends, trained here.
    vocab.json is ordered as CLIP's: the 256 byte symbols ("!" is id 0, the pad token), the
    same with "</w>", the merges' results, then <|startoftext|> and <|endoftext|> last."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    symbols = _byte_symbols()
    pairs = train_bpe(tok, corpus, merges, suffix="</w>")
    vocab = _vocab_from_merges(symbols + [s + "</w>" for s in symbols], pairs, [CLIP_BOS, CLIP_EOS])
    _write_vocab_merges(folder, vocab, pairs)

    def added(content):
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}

    _write_json(folder / "special_tokens_map.json", {
        "bos_token": {k: v for k, v in added(CLIP_BOS).items() if k != "__type"},
        "eos_token": {k: v for k, v in added(CLIP_EOS).items() if k != "__type"},
        "pad_token": "!",
        "unk_token": {k: v for k, v in added(CLIP_EOS).items() if k != "__type"},
    })
    _write_json(folder / "tokenizer_config.json", {
        "add_prefix_space": False,
        "bos_token": added(CLIP_BOS),
        "do_lower_case": True,
        "eos_token": added(CLIP_EOS),
        "errors": "replace",
        "model_max_length": 77,
        "name_or_path": "stabilityai/stable-diffusion-2-1-base",
        "pad_token": "!",
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": added(CLIP_EOS),
    })


def write_stable_diffusion(folder: Path, corpus: list[str]) -> Path:
    import diffusers
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    write_clip_tokenizer(folder / "tokenizer", corpus)
    vocab = _read_json(folder / "tokenizer" / "vocab.json")
    hidden = 64

    _seed(10)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 32, 64, 64), layers_per_block=1, downsample_padding=1, mid_block_scale_factor=1,
        act_fn="silu", norm_num_groups=8, norm_eps=1e-5, cross_attention_dim=hidden, attention_head_dim=[2, 2, 4, 4],
        dual_cross_attention=False, use_linear_projection=True, upcast_attention=False, only_cross_attention=False,
        resnet_time_scale_shift="default",
    )
    _checkpoint_like(unet, 10).save_pretrained(folder / "unet", safe_serialization=True)

    _seed(11)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 32, 32), layers_per_block=1, act_fn="silu", latent_channels=4, norm_num_groups=8,
        sample_size=768, scaling_factor=0.18215,
    )
    _checkpoint_like(vae, 11).save_pretrained(folder / "vae", safe_serialization=True)

    _seed(12)
    text_cfg = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=4 * hidden, projection_dim=32, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, attention_dropout=0.0,
        dropout=0.0, initializer_range=0.02, initializer_factor=1.0,
        pad_token_id=vocab["!"], bos_token_id=vocab[CLIP_BOS], eos_token_id=vocab[CLIP_EOS],
    )
    text = _checkpoint_like(CLIPTextModel(text_cfg).to(torch.float32), 12)
    text.save_pretrained(folder / "text_encoder", safe_serialization=True)
    cfg = _read_json(folder / "text_encoder" / "config.json")
    cfg.pop("dtype", None)
    cfg.update(torch_dtype="float32", transformers_version="4.25.0.dev0")
    _write_json(folder / "text_encoder" / "config.json", dict(sorted(cfg.items())))

    _write_json(folder / "scheduler" / "scheduler_config.json", {  # the repo ships SD-2.1-base's PNDM settings
        "_class_name": "PNDMScheduler", "_diffusers_version": diffusers.__version__, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
        "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
        "trained_betas": None,
    })
    _write_json(folder / "feature_extractor" / "preprocessor_config.json", {
        "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True,
        "do_rescale": True, "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "CLIPImageProcessor", "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3,
        "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 224},
    })
    _write_json(folder / "model_index.json", {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })
    return folder


# ---------------------------------------------------------------------------- florence-2
BART_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
# the tokens Florence-2's processor adds to BART's 50265 (ids 50265..51288 in the real file)
FLORENCE_TOKENS = (["<od>", "</od>", "<ocr>", "</ocr>"] + [f"<loc_{i}>" for i in range(1000)]
                   + ["<cap>", "</cap>", "<ncap>", "</ncap>", "<dcap>", "</dcap>", "<grounding>", "</grounding>", "<seg>",
                      "</seg>", "<sep>", "<region_cap>", "</region_cap>", "<region_to_desciption>", "</region_to_desciption>",
                      "<proposal>", "</proposal>", "<poly>", "</poly>", "<and>"])
IMAGE_TOKEN = "<image>"
FLORENCE_SIZE = 768


def _florence_post_processor_config() -> dict:
    pronouns = ["it", "I", "me", "mine", "you", "your", "yours", "he", "him", "his", "she", "her", "hers", "they", "them",
                "their", "theirs", "we", "us", "our", "ours", "this", "that", "these", "those", "the image", "image",
                "images", "the", "a", "an", "a group", "other objects", "lots", "a set"]
    return {
        "ocr": {"pattern": r"(.+?)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>",
                "area_threshold": 0.0},
        "phrase_grounding": {"banned_grounding_tokens": pronouns},
        "pure_text": {}, "description_with_bboxes": {}, "description_with_polygons": {}, "polygons": {}, "bboxes": {},
        "description_with_bboxes_or_polygons": {},
    }


def bart_tokenizer(corpus: list[str], merges: int = 1500):
    """A BART (RoBERTa) byte-level BPE trained here: <s>=0 <pad>=1 </s>=2 <unk>=3, the byte
    symbols, the merges' results, <mask> last in vocab.json; then Florence-2's added tokens and
    "<image>" (a special token named ``image_token``)."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import BartTokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    symbols = _byte_symbols()
    pairs = train_bpe(tok, corpus, merges)
    vocab = _vocab_from_merges(BART_SPECIALS + symbols, pairs, ["<mask>"])
    with tempfile.TemporaryDirectory() as d:
        _write_vocab_merges(Path(d), vocab, pairs)
        bart = BartTokenizer(vocab=str(Path(d) / "vocab.json"), merges=str(Path(d) / "merges.txt"))
        bart.add_tokens([AddedToken(t, special=True, normalized=False) for t in FLORENCE_TOKENS + [IMAGE_TOKEN]],
                        special_tokens=True)
        bart.save_pretrained(Path(d) / "with_added")
        bart = BartTokenizer.from_pretrained(Path(d) / "with_added", extra_special_tokens={"image_token": IMAGE_TOKEN})
    return bart, vocab, pairs


def _padded(n: int, multiple: int = 64) -> int:
    return multiple * math.ceil(n / multiple)


def write_florence(folder: Path, corpus: list[str]) -> Path:
    import torch
    from transformers import (BartConfig, CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration,
                              Florence2Processor, Florence2VisionConfig)

    tokenizer, vocab, pairs = bart_tokenizer(corpus)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    d_model = 64
    vision = Florence2VisionConfig(
        in_channels=3, depths=[1, 1, 2, 1], patch_size=[7, 3, 3, 3], patch_stride=[4, 2, 2, 2], patch_padding=[3, 1, 1, 1],
        patch_prenorm=[False, True, True, True], embed_dim=[16, 32, 64, 128], num_heads=[1, 2, 4, 8],
        num_groups=[1, 2, 4, 8], window_size=12, drop_path_rate=0.1, mlp_ratio=4.0, qkv_bias=True,
        activation_function="gelu", projection_dim=d_model, max_temporal_embeddings=100, max_position_embeddings=50,
        initializer_range=0.02,
    )
    text = BartConfig(
        vocab_size=_padded(len(tokenizer)), d_model=d_model, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=4 * d_model, decoder_ffn_dim=4 * d_model, activation_function="gelu",
        max_position_embeddings=1024, dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, classifier_dropout=0.0,
        init_std=0.02, encoder_layerdrop=0.0, decoder_layerdrop=0.0, scale_embedding=False, use_cache=True,
        is_encoder_decoder=True, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
        forced_eos_token_id=2,
    )
    config = Florence2Config(vision_config=vision, text_config=text, image_token_id=image_token_id)
    _seed(20)
    model = _checkpoint_like(_quietly(Florence2ForConditionalGeneration, config), 20)
    image_tokens = florence_image_tokens(model, FLORENCE_SIZE)
    model.to(torch.float16).save_pretrained(folder, safe_serialization=True)  # the hub stores Florence-2 in float16

    size = {"height": FLORENCE_SIZE, "width": FLORENCE_SIZE}
    images = _quietly(CLIPImageProcessor, do_resize=True, size=size, resample=3, do_center_crop=False, crop_size=size,
                      do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225], do_convert_rgb=None,
                      image_seq_length=image_tokens)
    processor = Florence2Processor(image_processor=images, tokenizer=tokenizer, num_additional_image_tokens=0,
                                   post_processor_config=_florence_post_processor_config())
    processor.save_pretrained(folder)
    _ensure_florence_processor_files(folder, images)
    _write_florence_tokenizer_config(folder, tokenizer)
    _write_vocab_merges(folder, vocab, pairs)  # BART's vocab.json + merges.txt next to tokenizer.json
    return folder


def florence_image_tokens(model, side: int) -> int:
    """How many image tokens the model's DaViT + projector yield for a ``side`` x ``side`` image."""
    import torch

    with torch.no_grad():
        pixels = torch.zeros(1, 3, side, side, dtype=next(model.parameters()).dtype)
        return int(model.get_image_features(pixels).pooler_output.shape[1])


def _write_florence_tokenizer_config(folder: Path, tokenizer) -> None:
    """tokenizer_config.json as the hub's Florence-2 has it (written by transformers 4): the BART
    settings, every added token, Florence-2's tokens as additional special tokens, and the image
    token named only under ``extra_special_tokens`` (transformers 5 alone would write it as a
    top-level "image_token" plus "model_specific_special_tokens")."""
    decoder = {str(i): {k: v for k, v in t.__getstate__().items()} for i, t in sorted(tokenizer.added_tokens_decoder.items())}
    _write_json(folder / "tokenizer_config.json", {
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": FLORENCE_TOKENS,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "cls_token": "<s>",
        "eos_token": "</s>",
        "errors": "replace",
        "extra_special_tokens": {"image_token": IMAGE_TOKEN},
        "mask_token": "<mask>",
        "model_max_length": 1024,
        "pad_token": "<pad>",
        "processor_class": "Florence2Processor",
        "sep_token": "</s>",
        "tokenizer_class": "BartTokenizer",
        "trim_offsets": True,
        "unk_token": "<unk>",
    })


def _ensure_florence_processor_files(folder: Path, images) -> None:
    """The folder holds both preprocessor_config.json (the image processor) and
    processor_config.json (the processor), whichever transformers wrote."""
    pre, proc = folder / "preprocessor_config.json", folder / "processor_config.json"
    if not pre.is_file():
        settings = images.to_dict()
        settings.update(image_processor_type="CLIPImageProcessor", processor_class="Florence2Processor")
        _write_json(pre, dict(sorted(settings.items())))
    else:
        settings = _read_json(pre)
        settings["processor_class"] = "Florence2Processor"
        _write_json(pre, settings)
    if not proc.is_file():
        _write_json(proc, {"num_additional_image_tokens": 0, "post_processor_config": _florence_post_processor_config(),
                           "processor_class": "Florence2Processor"})


# -------------------------------------------------------------------------------- qwen2.5
QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
                "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                "<|image_pad|>", "<|video_pad|>"]
QWEN_ADDED = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
              "<|repo_name|>", "<|file_sep|>"]
QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def write_qwen_tokenizer(folder: Path, corpus: list[str], merges: int = 1500) -> int:
    """Qwen2.5's tokenizer files, trained here: byte-level BPE (NFC, Qwen2's split pattern), the
    22 added tokens after the vocabulary (14 special, 8 not, as in the real file). Returns its length."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    def pipeline(model):
        tok = Tokenizer(model)
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ])
        tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
        tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
        return tok

    symbols = _byte_symbols()
    pairs = train_bpe(pipeline(models.BPE()), corpus, merges)
    vocab = _vocab_from_merges(symbols, pairs, [])
    _write_vocab_merges(folder, vocab, pairs)

    tok = pipeline(models.BPE(vocab=vocab, merges=pairs, dropout=None, unk_token=None, continuing_subword_prefix="",
                              end_of_word_suffix="", fuse_unk=False, byte_fallback=False, ignore_merges=False))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_ADDED])
    tok.save(str(folder / "tokenizer.json"))

    def entry(t, special):
        return {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": special}

    base = len(vocab)
    decoder = {str(base + i): entry(t, t in QWEN_SPECIAL) for i, t in enumerate(QWEN_SPECIAL + QWEN_ADDED)}
    _write_json(folder / "tokenizer_config.json", {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": QWEN_SPECIAL[1:],
        "bos_token": None,
        "chat_template": QWEN_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    })
    return base + len(QWEN_SPECIAL) + len(QWEN_ADDED)


def _save_in_two_shards(model, folder: Path) -> None:
    """save_pretrained with the smallest max_shard_size that gives two shards (as Qwen2.5-3B has)."""
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    for share in range(50, 100, 5):
        with tempfile.TemporaryDirectory() as d:
            _quietly(model.save_pretrained, d, safe_serialization=True, max_shard_size=f"{math.ceil(total * share / 100_000)}KB")
            files = sorted(p.name for p in Path(d).iterdir())
            if "model-00001-of-00002.safetensors" in files and "model-00002-of-00002.safetensors" in files:
                for name in files:
                    shutil.move(str(Path(d) / name), str(folder / name))
                return
    raise RuntimeError("no max_shard_size gave two shards")


def write_qwen(folder: Path, corpus: list[str]) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    n_tokens = write_qwen_tokenizer(folder, corpus)
    eot = _read_json(folder / "tokenizer_config.json")["added_tokens_decoder"]
    eot_id = int(next(i for i, e in eot.items() if e["content"] == "<|endoftext|>"))
    layers, hidden = 2, 64
    shape = dict(vocab_size=_padded(n_tokens), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                 num_attention_heads=4, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=32768,
                 initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True, tie_word_embeddings=True,
                 use_sliding_window=False, sliding_window=32768, max_window_layers=layers, attention_dropout=0.0,
                 bos_token_id=eot_id, eos_token_id=eot_id)
    config = Qwen2Config(**shape, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    _seed(30)
    model = _checkpoint_like(Qwen2ForCausalLM(config), 30).to(torch.bfloat16)
    _save_in_two_shards(model, folder)
    index = _read_json(folder / "model.safetensors.index.json")  # the hub's index names only the total size
    _write_json(folder / "model.safetensors.index.json",
                {"metadata": {"total_size": index["metadata"]["total_size"]}, "weight_map": index["weight_map"]})

    # config.json as the hub file has it (written by transformers 4.40): top-level rope_theta, torch_dtype
    hub = {**shape, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "rope_theta": 1000000.0,
           "torch_dtype": "bfloat16", "transformers_version": "4.40.1", "use_mrope": False}
    _write_json(folder / "config.json", dict(sorted(hub.items())))
    _write_json(folder / "generation_config.json", {"bos_token_id": eot_id, "do_sample": False, "eos_token_id": eot_id,
                                                    "max_new_tokens": 2048, "transformers_version": "4.37.0"})
    return folder


# ------------------------------------------------------------------------------------ all
def write_paper_layouts(root: Path, photos: int = 8) -> dict[str, Path]:
    """Write the three model folders and the webdataset under ``root``; deterministic (seeded).
    Returns {"t2i", "vision", "llm", "webdataset"} -> folder."""
    root = Path(root)
    paths = {k: root / v for k, v in FOLDERS.items()}
    for p in paths.values():
        if p.exists():
            shutil.rmtree(p)
    corpus = _corpus()
    write_stable_diffusion(paths["t2i"], corpus)
    write_florence(paths["vision"], corpus)
    write_qwen(paths["llm"], corpus)
    write_webdataset(paths["webdataset"], photos)
    return paths


# ----------------------------------------------------------------------------- self-check
def check(paths: dict[str, Path]) -> list[str]:
    """Load every folder with the calls the project makes; returns lines describing what loaded."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from PIL import Image
    from safetensors import safe_open
    from transformers import (AutoModelForCausalLM, AutoProcessor, AutoTokenizer, CLIPTextModel,
                              Florence2ForConditionalGeneration, Florence2Processor, Qwen2ForCausalLM)

    lines = []
    sd = paths["t2i"]
    vae = AutoencoderKL.from_pretrained(sd, subfolder="vae", use_safetensors=True, local_files_only=True)
    unet = UNet2DConditionModel.from_pretrained(sd, subfolder="unet", use_safetensors=True, local_files_only=True)
    sched = _quietly(DDPMScheduler.from_pretrained, sd, subfolder="scheduler", local_files_only=True)
    text = CLIPTextModel.from_pretrained(sd / "text_encoder", use_safetensors=True, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(sd / "tokenizer", local_files_only=True)
    assert type(tok).__name__ == "CLIPTokenizer" and tok.pad_token == "!" and tok.pad_token_id == 0, (type(tok), tok.pad_token)
    assert tok.model_max_length == 77 and len(tok) == text.config.vocab_size
    assert (tok.bos_token_id, tok.eos_token_id) == (text.config.bos_token_id, text.config.eos_token_id)
    assert unet.config.cross_attention_dim == text.config.hidden_size and vae.config.latent_channels == unet.config.in_channels
    ids = tok(["A cat sitting on a beach at sunset."], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids[0, 0] == tok.bos_token_id and ids[0, -1] == tok.pad_token_id
    with torch.no_grad():
        states = text(ids).last_hidden_state
        latents = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.sample()
        noise = unet(latents, 10, encoder_hidden_states=states).sample
    assert latents.shape == (1, 4, 8, 8) and noise.shape == latents.shape
    pipe = _quietly(StableDiffusionPipeline.from_pretrained, sd, use_safetensors=True, local_files_only=True)
    image = pipe("a cat on a beach", num_inference_steps=2, height=64, width=64, output_type="np").images
    assert image.shape == (1, 64, 64, 3)
    assert type(pipe.scheduler).__name__ == "PNDMScheduler" and sched.config.beta_schedule == "scaled_linear"
    lines.append(f"t2i: unet {_params(unet)}, vae {_params(vae)}, text {_params(text)} params; tokenizer {len(tok)} "
                 f"(bos {tok.bos_token_id}, eos {tok.eos_token_id}, pad '!' {tok.pad_token_id})")

    fl = paths["vision"]
    model = Florence2ForConditionalGeneration.from_pretrained(fl, use_safetensors=True, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(fl, local_files_only=True)
    processor = AutoProcessor.from_pretrained(fl, local_files_only=True)
    assert isinstance(processor, Florence2Processor), type(processor)
    assert tok.image_token == IMAGE_TOKEN and tok.image_token_id == model.config.image_token_id
    with tempfile.TemporaryDirectory() as d:  # the image token is named in tokenizer_config.json's extra_special_tokens only
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(fl / name, d)
        cfg = _read_json(Path(d) / "tokenizer_config.json")
        cfg.pop("extra_special_tokens")
        _write_json(Path(d) / "tokenizer_config.json", cfg)
        assert getattr(AutoTokenizer.from_pretrained(d), "image_token", None) is None
    assert model.config.text_config.vocab_size >= len(tok) and model.config.text_config.vocab_size % 64 == 0
    with safe_open(str(fl / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    assert model.dtype == torch.float16, model.dtype  # transformers 5 keeps the stored dtype
    img = Image.fromarray(_photo_array("astronaut"))
    inputs = processor(text="<MORE_DETAILED_CAPTION>", images=img, return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape) == (1, 3, FLORENCE_SIZE, FLORENCE_SIZE)
    n_image = int((inputs["input_ids"] == tok.image_token_id).sum())
    assert n_image == processor.image_processor.image_seq_length
    prompt = [i for i in inputs["input_ids"][0].tolist() if i != tok.image_token_id]
    assert tok.decode(prompt, skip_special_tokens=True).strip() == "Describe with a paragraph what is shown in the image."
    model = model.float()
    with torch.no_grad():
        out = model(**inputs, decoder_input_ids=torch.tensor([[2, 0]]))
    assert tuple(out.logits.shape) == (1, 2, model.config.text_config.vocab_size)
    assert model.get_image_features(inputs["pixel_values"]).pooler_output.shape[1] == n_image
    lines.append(f"vision: {_params(model)} params (F16); tokenizer {len(tok)} (<image> {tok.image_token_id}, "
                 f"bos {tok.bos_token_id} pad {tok.pad_token_id} eos {tok.eos_token_id}), text vocab "
                 f"{model.config.text_config.vocab_size}, image_seq_length {n_image}")

    qw = paths["llm"]
    lm = AutoModelForCausalLM.from_pretrained(qw, use_safetensors=True, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(qw, local_files_only=True)
    assert isinstance(lm, Qwen2ForCausalLM) and lm.dtype == torch.bfloat16, (type(lm), lm.dtype)
    assert type(tok).__name__ == "Qwen2Tokenizer", type(tok)
    assert tok.eos_token == tok.pad_token == "<|endoftext|>" and tok.bos_token is None
    assert lm.config.vocab_size >= len(tok) and lm.config.vocab_size % 64 == 0
    assert lm.config.tie_word_embeddings and lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()
    assert lm.config.eos_token_id == tok.eos_token_id
    ids = tok("A cat on a beach.<|im_end|>", return_tensors="pt").input_ids
    assert ids[0, -1] == tok.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        lm(ids)
    lines.append(f"llm: {_params(lm)} params (BF16, 2 shards); tokenizer {len(tok)} (<|endoftext|> {tok.eos_token_id}, "
                 f"<|file_sep|> {tok.convert_tokens_to_ids('<|file_sep|>')}), vocab {lm.config.vocab_size}")

    keys = []
    for shard in sorted(paths["webdataset"].glob("*.tar")):
        with tarfile.open(shard) as tar:
            keys += [m.name for m in tar.getmembers()]
    assert len(keys) % 3 == 0
    lines.append(f"webdataset: {len(keys) // 3} samples in {len(list(paths['webdataset'].glob('*.tar')))} shards")
    return lines


def _params(module) -> str:
    n = sum(p.numel() for p in module.parameters())
    return f"{n / 1e6:.2f}M"


def _size(folder: Path) -> str:
    return f"{sum(f.stat().st_size for f in folder.rglob('*') if f.is_file()) / 1e6:.1f} MB"


if __name__ == "__main__":
    import time

    if len(sys.argv) != 2:
        sys.exit("usage: python tests/paper_layouts.py OUT_FOLDER")
    start = time.perf_counter()
    written = write_paper_layouts(Path(sys.argv[1]))
    took = time.perf_counter() - start
    for name, path in written.items():
        print(f"{name}: {path} ({_size(path)})")
    print(f"written in {took:.1f} s")
    for line in check(written):
        print(line)
    print("all folders load")
