"""The captioner as an MLflow pyfunc model, so ``mlflow models serve`` serves it.

``mlflow.pyfunc.load_model(uri).predict(pandas.DataFrame({"image": [...]}))`` returns a
DataFrame with one row per input: ``caption`` (None when the image could not be read) and
``error`` (None, or why that image was not captioned: nothing is dropped silently); missing
values are None, so the server's JSON answer has ``null``, never a bare ``NaN``. An ``image``
entry is the image's bytes, base64-encoded (what a JSON request to the server carries).
The model reads no file on the server unless its model config names a folder,
``image_root`` (``mlflow.pyfunc.load_model(uri, model_config={"image_root": "/srv/images"})``,
or ``log_captioner(..., image_root=...)``): then an entry may also be a path inside that folder
(relative to it, or absolute), and nothing outside it is opened. A path that is outside, missing
or not a file gets the same error as bad base64, so the answer never says whether a path exists.
Optional params ``num_beams`` and ``max_new_tokens`` (0 = the trained setting).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

import mlflow
import pandas as pd

ARTIFACT = "captioner"
IMAGE_ROOT = "image_root"  # the model-config key of the folder the model may read images from


def _raw(entry, image_root: Path | None) -> tuple[bytes, str]:
    """(image bytes, file suffix) of one ``image`` entry; ValueError with one message for anything
    that is neither base64 nor (with ``image_root``) a file inside it."""
    if isinstance(entry, (bytes, bytearray, memoryview)):
        return bytes(entry), ""
    if not isinstance(entry, str):
        raise ValueError(f"unsupported entry type {type(entry).__name__} (base64 string or bytes)")
    if image_root is not None and len(entry) < 4096:
        try:
            path = (image_root / entry).resolve()  # an absolute entry stays absolute; links are followed
            if path.is_relative_to(image_root) and path.is_file():
                return path.read_bytes(), path.suffix.lower()
        except (OSError, ValueError):  # a name the OS refuses (NUL, too long), unreadable: same answer as any
            pass
    try:
        return base64.b64decode(entry, validate=True), ""
    except (binascii.Error, ValueError):
        if image_root is None:
            raise ValueError("not base64 image bytes; send the image's bytes base64-encoded") from None
        raise ValueError("neither base64 image bytes nor a readable file inside the model's image folder") from None


class CaptionerModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: artifacts["captioner"] is a captioner folder (vlv.captioner); model config
    ``image_root`` (optional) is the one folder whose files requests may name."""

    def load_context(self, context) -> None:
        from vlv.captioner import Captioner
        from vlv.errors import VLVError

        self.model = Captioner.load(context.artifacts[ARTIFACT])
        root = (context.model_config or {}).get(IMAGE_ROOT)
        self.image_root = Path(root).resolve() if root else None
        if self.image_root is not None and not self.image_root.is_dir():
            raise VLVError(f"model config {IMAGE_ROOT}: {root} is not a folder; point it at the folder of images "
                           "requests may name, or leave it unset (base64 only)")

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        import torch

        from vlv.data import image_tensor
        from vlv.errors import VLVError

        if "image" not in model_input.columns:
            raise VLVError(f"input needs an 'image' column (base64 image bytes); got columns {list(model_input.columns)}")
        cfg = self.model.config
        params = params or {}
        tensors, errors = [], []
        for i, entry in enumerate(model_input["image"].tolist()):
            try:
                raw, ext = _raw(entry, self.image_root)
                tensors.append(image_tensor(raw, self.model.resolution, ext))
                errors.append(None)
            except Exception as err:  # one bad row must not fail the others; it is reported in its row
                tensors.append(None)
                errors.append(f"row {i}: {err}")
        ok = [i for i, t in enumerate(tensors) if t is not None]
        captions: list[str | None] = [None] * len(tensors)
        if ok:
            from vlv.captioner import caption_batches

            x = torch.stack([tensors[i] for i in ok])
            # 0 (the signature's default) = the setting the model was trained with
            out = caption_batches(self.model, x, int(params.get("num_beams") or cfg.get("num_beams", 1)),
                                  int(params.get("max_new_tokens") or cfg.get("max_new_tokens", 32)))
            for i, c in zip(ok, out):
                captions[i] = c
        # object columns keep None as None (a string dtype would hold NaN, which JSON writes as bare NaN)
        return pd.DataFrame({"caption": pd.Series(captions, dtype=object), "error": pd.Series(errors, dtype=object)})


def log_captioner(folder: str | Path, registered_name: str | None, code_path: str | Path,
                  image_root: str | Path | None = None) -> str:
    """Log ``folder`` as a pyfunc model to the active run (and register it); returns its URI.
    ``image_root``: the folder the served model may read images from (None: base64 only)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "image")]),
        outputs=Schema([ColSpec("string", "caption"), ColSpec("string", "error")]),
        params=ParamSchema([ParamSpec("num_beams", "long", 0), ParamSpec("max_new_tokens", "long", 0)]),
    )
    info = mlflow.pyfunc.log_model(
        name="captioner", python_model=str(Path(__file__).with_name("pyfunc_model.py")), artifacts={ARTIFACT: str(folder)},
        code_paths=[str(code_path)], signature=signature, registered_model_name=registered_name,
        model_config={IMAGE_ROOT: str(image_root or "")},  # logged even when empty: load_model(model_config=...) can set it
        pip_requirements=["torch", "transformers", "diffusers", "safetensors", "pandas", "pillow", "numpy", "pydantic", "pyyaml", "tqdm"],
    )
    return info.model_uri
