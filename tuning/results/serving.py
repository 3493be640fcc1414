"""The evaluated model as an MLflow pyfunc model: raw texts in, each text's label and the six
probabilities out, the same figures as `python -m tuning.predict` (it is the same Predictor).

MLflow's own clients can use it as they find it: `mlflow.pyfunc.load_model("models:/emotion-lstm/N")
.predict(pd.DataFrame({"text": [...]}))`, and `mlflow models serve -m models:/emotion-lstm/N
--env-manager local` (POST /invocations {"dataframe_records": [{"text": "..."}]}). The model
file (weights, vocabulary, labels) is the model's one artifact; the project's packages that read
it travel with it (`code_paths`), so loading needs no checkout of this repository.
"""
from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import pandas as pd

TEXT_COLUMN = "text"
# the packages Predictor imports (tuning/predict.py, and what it reads a model file with)
CODE_PACKAGES = ("dataprep", "model", "plumbing", "tuning")


class EmotionModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from tuning.predict import Predictor

        self.predictor = Predictor(Path(context.artifacts["model"]))

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        """A table with a `text` column (or a list of texts) -> one row per text: `label` and a
        probability column per label. A text with no token (empty, blank) gets no label and NaN
        probabilities rather than failing the whole batch; unknown words read as <unk>."""
        from dataprep.schema import LABELS

        texts = (list(model_input[TEXT_COLUMN]) if isinstance(model_input, pd.DataFrame)
                 else list(model_input))
        rows = [{"label": None, **dict.fromkeys(LABELS, float("nan"))} if prediction is None
                else {"label": prediction[0], **dict(zip(LABELS, prediction[1], strict=True))}
                for prediction in self.predictor.predict(texts)]
        return pd.DataFrame(rows, columns=["label", *LABELS])


def log_pyfunc(model_file: Path, registered_name: str) -> None:
    """Log `model_file` (evaluate_best's model.pt) as this run's pyfunc model `model`,
    registered as a version of `registered_name`."""
    import importlib

    import torch

    # each package's own folder (not a path relative to this file, which moves with the layout)
    folders = [Path(importlib.import_module(package).__file__).resolve().parent
               for package in CODE_PACKAGES]
    example = pd.DataFrame({TEXT_COLUMN: ["i feel so happy and grateful today"]})
    mlflow.pyfunc.log_model(
        name="model", python_model=EmotionModel(), artifacts={"model": str(model_file)},
        code_paths=[str(folder) for folder in folders],
        input_example=example, registered_model_name=registered_name,
        # named, not inferred (inference imports the model in a subprocess)
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "pandas", "numpy",
                          "pyarrow", f"mlflow=={mlflow.__version__}"])
