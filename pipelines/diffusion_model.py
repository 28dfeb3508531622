"""A trained diffusion transformer as an MLflow pyfunc: class labels in, PNG images out.

    model = mlflow.pyfunc.load_model("models:/dit-fashion-mnist@champion")
    model.predict(pd.DataFrame({"class_label": [3, 7], "seed": [0, 1]}), params={"steps": 25})
    # -> DataFrame with "png": base64-encoded 28x28 PNG per row

The artifacts are the EMA weights in diffusers layout (``ema/``) and the
experiment config (``config.yaml``); ``serving.diffusion_app`` reads the same two.
"""

from __future__ import annotations

import base64
from pathlib import Path

import mlflow
import mlflow.pyfunc
import pandas as pd
import torch
from mlflow.models import infer_signature

from diffusion.images import png_bytes

EMA, CONFIG = "ema", "config"


class DiffusionTransformerModel(mlflow.pyfunc.PythonModel):
    _skip_type_hint_validation = True

    def load_context(self, context):
        from diffusion.config import DiffusionExperiment
        from diffusion.models import load_pretrained
        from recsys.config import load_config

        self.model = load_pretrained(context.artifacts[EMA]).eval()
        self.config = load_config(DiffusionExperiment, context.artifacts[CONFIG])

    def predict(self, context, model_input, params=None):
        from diffusion.train import sample

        params = params or {}
        self.config.sample.steps = int(params.get("steps", self.config.sample.steps))
        self.config.sample.guidance_scale = float(
            params.get("guidance", self.config.sample.guidance_scale)
        )
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        seeds = frame["seed"] if "seed" in frame else range(len(frame))
        pngs = []
        for label, seed in zip(frame["class_label"], seeds, strict=True):
            image = sample(self.model, self.config, torch.tensor([int(label)]), seed=int(seed))[0]
            pngs.append(base64.b64encode(png_bytes(image)).decode())
        return pd.DataFrame({"png": pngs})


def log_model(ema_folder: Path, config_file: Path):
    """Log the model as a pyfunc named "model" in the active run; returns its ModelInfo."""
    from .recsys_model import MODEL_CODE, MODEL_REQUIREMENTS

    example = pd.DataFrame({"class_label": [0, 1], "seed": [0, 1]})
    signature = infer_signature(
        example, pd.DataFrame({"png": ["", ""]}), params={"steps": 25, "guidance": 1.5}
    )
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=DiffusionTransformerModel(),
        artifacts={EMA: str(ema_folder), CONFIG: str(config_file)},
        code_paths=[*MODEL_CODE, str(Path(MODEL_CODE[0]).parent / "diffusion")],
        pip_requirements=[*MODEL_REQUIREMENTS, "diffusers==0.42.1", "scipy", "pillow"],
        signature=signature,
    )
