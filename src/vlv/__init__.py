"""VLV: Vision-Language-Vision auto-encoder, reproduced as a tracked pipeline."""

import os

# Nothing is downloaded at run time: every model part comes from a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
