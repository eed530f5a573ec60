"""VLV: Vision-Language-Vision auto-encoder, reproduced as a tracked pipeline."""

import os

# Nothing is downloaded at run time: every model part comes from a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# Third-party progress bars (transformers' "Loading weights" / "Writing model shards", the hub's)
# are clutter in vlv's commands and stages; the project's own tqdm bars stay. huggingface_hub reads
# this when first imported and transformers follows it; HF_HUB_DISABLE_PROGRESS_BARS=0 brings them
# back. diffusers has its own switch (evaluation.regenerate, the one diffusers pipeline loaded).
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

# Progress bars redraw every 0.1 s on a terminal; in a log (dvc repro > log, CI) that
# floods it, so off a terminal they update every 30 s (override with TQDM_MININTERVAL).
if not os.isatty(2):
    os.environ.setdefault("TQDM_MININTERVAL", "30")

__version__ = "0.1.0"
