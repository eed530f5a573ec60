"""The captioner as an MLflow pyfunc model, so ``mlflow models serve`` serves it.

``mlflow.pyfunc.load_model(uri).predict(pandas.DataFrame({"image": [...]}))`` returns a
DataFrame with one row per input: ``caption`` (None when the image could not be read) and
``error`` (None, or why that image was not captioned: nothing is dropped silently). An
``image`` entry is a base64 string (what a JSON request to the server carries) or a local
file path. Optional params ``num_beams`` and ``max_new_tokens`` (0 = the trained setting).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

import mlflow
import pandas as pd

ARTIFACT = "captioner"


def _raw(entry) -> tuple[bytes, str]:
    """(image bytes, file suffix) of one ``image`` entry."""
    if isinstance(entry, (bytes, bytearray, memoryview)):
        return bytes(entry), ""
    if isinstance(entry, str):
        if len(entry) < 4096:
            path = Path(entry)
            if path.is_file():
                return path.read_bytes(), path.suffix.lower()
        try:
            return base64.b64decode(entry, validate=True), ""
        except (binascii.Error, ValueError):
            raise ValueError("neither an existing file path nor base64 image bytes") from None
    raise ValueError(f"unsupported entry type {type(entry).__name__} (bytes, base64 str or path)")


class CaptionerModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: artifacts["captioner"] is a captioner folder (vlv.captioner)."""

    def load_context(self, context) -> None:
        from vlv.captioner import Captioner

        self.model = Captioner.load(context.artifacts[ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        import torch

        from vlv.data import image_tensor
        from vlv.errors import VLVError

        if "image" not in model_input.columns:
            raise VLVError(f"input needs an 'image' column (bytes, base64 or path); got columns {list(model_input.columns)}")
        cfg = self.model.config
        params = params or {}
        tensors, errors = [], []
        for i, entry in enumerate(model_input["image"].tolist()):
            try:
                raw, ext = _raw(entry)
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
        return pd.DataFrame({"caption": captions, "error": errors})


def log_captioner(folder: str | Path, registered_name: str | None, code_path: str | Path) -> str:
    """Log ``folder`` as a pyfunc model to the active run (and register it); returns its URI."""
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
        pip_requirements=["torch", "transformers", "diffusers", "safetensors", "pandas", "pillow", "numpy", "pydantic", "pyyaml", "tqdm"],
    )
    return info.model_uri
