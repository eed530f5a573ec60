"""VLV: Vision-Language-Vision auto-encoder, reproduced as a tracked pipeline."""

__version__ = "0.1.0"
