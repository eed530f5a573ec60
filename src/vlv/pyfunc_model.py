"""The captioner pyfunc, logged as "model from code" (MLflow executes this file when the
model is loaded: no pickled Python object). See vlv.serving."""

import mlflow

from vlv.serving import CaptionerModel

mlflow.models.set_model(CaptionerModel())
