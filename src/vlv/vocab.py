"""Tokenizers for the embedded world's pretrained parts, trained on its caption corpus.

The paper downloads SD-2.1's CLIP tokenizer and Qwen2.5's tokenizer; here ``pretrain``
trains the same kinds from the world's captions and saves them in the standard layouts:
- CLIP: byte-pair encoding with CLIP's ``</w>`` word ends and ``<|startoftext|>`` /
  ``<|endoftext|>``, loaded as ``CLIPTokenizer`` (max length 77, padded with end-of-text);
- Qwen2: byte-level BPE with ``<|endoftext|>`` as end and padding, loaded as ``Qwen2Tokenizer``.
Every word of the world becomes one token; any other text still encodes (characters/bytes).
"""

from __future__ import annotations

import string
import tempfile
from typing import Iterable


def clip_tokenizer(corpus: Iterable[str], max_length: int = 77, vocab_size: int = 512):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    alphabet = list(string.ascii_lowercase + string.digits + string.punctuation)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|startoftext|>", "<|endoftext|>"], end_of_word_suffix="</w>",
        initial_alphabet=alphabet, show_progress=False,
    )
    tok.train_from_iterator(list(corpus) + [" ".join(alphabet)], trainer)
    with tempfile.TemporaryDirectory() as d:
        tok.model.save(d)
        return CLIPTokenizer.from_pretrained(d, model_max_length=max_length)


def qwen2_tokenizer(corpus: Iterable[str], vocab_size: int = 512, max_length: int = 256):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer)
    with tempfile.TemporaryDirectory() as d:
        tok.model.save(d)
        return Qwen2Tokenizer.from_pretrained(
            d, eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token=None, bos_token=None,
            model_max_length=max_length,
        )


LOC_BINS = 1000  # Florence-2's location tokens <loc_0> .. <loc_999>: a coordinate quantised to 1/1000 of the side


def florence_tokenizer(lm_tokenizer, image_token: str = "<image>"):
    """The embedded Florence-2's tokenizer: the LM's vocabulary plus what Florence-2's processor
    needs of a tokenizer: a named image token, a begin token (end-of-text here, as the Qwen2
    vocabulary has no other) and Florence-2's location tokens <loc_0> .. <loc_999>, in which
    its region tasks (<OD>: "label<loc_x0><loc_y0><loc_x1><loc_y1>...") write boxes."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as d:
        lm_tokenizer.save_pretrained(d)
        tok = AutoTokenizer.from_pretrained(d, bos_token=lm_tokenizer.eos_token,
                                            extra_special_tokens={"image_token": image_token})
    tok.add_tokens([f"<loc_{i}>" for i in range(LOC_BINS)])
    return tok
