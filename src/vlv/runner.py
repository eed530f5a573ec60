"""The stage runner: stage 1 and stage 2 built and trained from params, in one place.

Everything that trains the real stage models goes through here: the DVC stages
(pipelines/stage1.py, pipelines/stage2.py; ablations are `dvc exp run` variants of them),
`vlv sweep` (vlv.sweep) and scripts/bench_overhead.py. This module holds:

- ``stage1(params, ckpt_dir, ...) -> (model, run)``: ``autoencoder.build(params)``, the
  ``images`` split (no captions) with its frozen-VAE latents from the cache (cache/latents,
  encoded once), ``train.spec_from(params.stage1)``, the checkpoint fingerprint, ``train.train``;
- ``stage2(params, ckpt_dir, ...) -> (captioner, run)``: ``captioner.build(params, ...)`` from
  the stage-1 folder (models/stage1, or the folder passed), from a stage-1 encoder in memory
  (a sweep trial), or from a fresh encoder (``stage2.init: random``); the ``pairs`` split
  (``stage2.num_pairs``); the spec, the fingerprint, ``train.train``;
- ``open_images`` / ``open_pairs``: the training data each stage reads when the caller passes none;
- ``checkpoint_fingerprint``: the one rule that names what a stage's checkpoints were made for.

Callers keep what is theirs: where checkpoints go, what is logged and written after training.

The checkpoint fingerprint rule (a checkpoint resumes only when it matches): sha256 of

1. ``params.components`` (the paths, the Florence-2 card and task) and the content hashes of
   the component folders the stage loads (stage 1: t2i, vision; stage 2: t2i, vision, llm): new
   weights in the same folder must not resume a checkpoint made from the old ones;
2. the stage's params section without its ``eval`` sub-section: evaluation settings do not
   change training, so changing them must not throw a half-trained run away;
3. the prepared data's manifest hash and ``params.seed``;
4. stage 2 only, what it starts from: the stage-1 section (without ``eval``) always, since stage
   2 reads its trainable encoder parts (and, for a fresh encoder, its width and token scale);
   and the encoder: a stage-1 FOLDER by its content hash, because a folder is whatever the
   last run (or a person) left there, and params do not say which weights it holds; an encoder
   IN MEMORY (a sweep trial hands over the one stage 1 just trained) by the stage-1 section
   above, because it was built and trained in this process from exactly these params,
   components, data and seed (all in the fingerprint), and hashing its weights would read
   every weight once per trial; ``random`` for ``stage2.init: random``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import autoencoder, captioner, config, data, fingerprints, latents
from .autoencoder import VLVAutoencoder, VLVEncoder
from .captioner import Captioner
from .errors import VLVError
from .train import Result, fingerprint, spec_from, train

DATA = Path("data/prepared")
LATENTS = Path("cache/latents")  # the frozen VAE's latents of the images split, encoded once
STAGE1 = Path("models/stage1")   # the stage-1 encoder folder stage 2 starts from by default
PARTS = {"stage1": ("t2i", "vision"), "stage2": ("t2i", "vision", "llm")}  # the component folders each stage loads


def open_images(data_dir: str | Path = DATA) -> data.ShardDataset:
    """Stage 1's training set: the ``images`` split, without captions (it trains on images only)."""
    return data.ShardDataset(data_dir, "images")


def open_pairs(params: config.Params, data_dir: str | Path = DATA) -> data.ShardDataset:
    """Stage 2's training set: the first ``stage2.num_pairs`` of the ``pairs`` split (all when null)."""
    n = params.stage2.num_pairs
    ds = data.ShardDataset(data_dir, "pairs", captions=True, limit=n)
    if n is not None and len(ds) < n:
        raise VLVError(f"stage2.num_pairs={n} but the pairs split holds {len(ds)}; lower it or raise prepare.splits.pairs")
    return ds


def checkpoint_fingerprint(params: config.Params, stage: str, data_hash: str, encoder: str | None = None) -> str:
    """What a checkpoint of ``stage`` ("stage1" | "stage2") is for; the rule is in the module
    docstring. ``encoder`` (stage 2): the stage-1 folder's content hash, "in memory" or "random"."""
    section = getattr(params, stage).model_dump(mode="json", exclude={"eval"})
    start = None
    if stage == "stage2":
        start = {"stage1": params.stage1.model_dump(mode="json", exclude={"eval"}), "encoder": encoder}
    return fingerprint(params.components, fingerprints.of_components(params, PARTS[stage]), section, data_hash,
                       params.seed, start)


def stage1(params: config.Params, ckpt_dir: str | Path, *, images: data.ShardDataset | None = None,
           latents_dir: str | Path | None = LATENTS, log: Callable[[int, dict], None] | None = None,
           on_step: Callable[[VLVAutoencoder, int], None] | None = None, progress: bool = True) -> tuple[VLVAutoencoder, Result]:
    """Build stage 1's model from params and train it for ``stage1.steps`` (resuming a matching
    checkpoint in ``ckpt_dir``). ``images``: the images to train on, without captions (default:
    ``open_images()``); their VAE latents are read from ``latents_dir`` or encoded there once
    (None: encoded, not cached). ``log(step, metrics)``: the loop's logger. ``on_step(model,
    done)``: after every step (one process only). Returns the trained model and the loop's Result."""
    model = autoencoder.build(params)
    if images is None:
        images = open_images()
    mean, std = latents.encode_cached(model.vae, images, latents_dir, desc="stage1: encode latents")
    train_set = latents.WithLatents(images, mean, std)
    fp = checkpoint_fingerprint(params, "stage1", data.manifest_hash(images.root))
    step_hook = None if on_step is None else (lambda done: on_step(model, done))
    run = train(model, train_set, spec_from(params.stage1, "stage1", params.seed), ckpt_dir, fp,
                log=log, progress=progress, on_step=step_hook)
    return model, run


def stage2(params: config.Params, ckpt_dir: str | Path, *, encoder: VLVEncoder | str | Path | None = None,
           pairs: data.ShardDataset | None = None, log: Callable[[int, dict], None] | None = None,
           on_step: Callable[[Captioner, int], None] | None = None, progress: bool = True) -> tuple[Captioner, Result]:
    """Build the captioner from params and train it for ``stage2.steps`` (resuming a matching
    checkpoint in ``ckpt_dir``). ``encoder``: where the VLV encoder comes from under
    ``stage2.init: stage1``: a stage-1 folder (default: models/stage1) or a VLVEncoder in memory
    (it is trained in place); under ``stage2.init: random`` none may be passed (a fresh encoder
    on components.vision). ``pairs``: the captioned images to train on (default:
    ``open_pairs(params)``). ``log``, ``on_step(model, done)``: as in ``stage1``."""
    if encoder is not None and params.stage2.init == "random":
        raise VLVError("stage2.init is random (a fresh encoder): pass no stage-1 encoder, or set stage2.init: stage1")
    if pairs is None:
        pairs = open_pairs(params)
    if isinstance(encoder, VLVEncoder):
        model = captioner.build(params, encoder=encoder)
        start = "in memory"
    elif params.stage2.init == "stage1":
        folder = Path(encoder) if encoder is not None else STAGE1
        model = captioner.build(params, stage1_dir=folder)
        start = fingerprints.content_hash(folder, "stage-1 encoder folder")
    else:
        model = captioner.build(params)
        start = "random"
    fp = checkpoint_fingerprint(params, "stage2", data.manifest_hash(pairs.root), start)
    step_hook = None if on_step is None else (lambda done: on_step(model, done))
    run = train(model, pairs, spec_from(params.stage2, "stage2", params.seed), ckpt_dir, fp,
                log=log, progress=progress, on_step=step_hook)
    return model, run
