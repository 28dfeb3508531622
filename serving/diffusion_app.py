"""Ray Serve application for class-conditional image generation: POST /generate.

    serve run serving.diffusion_app:build_app model=runs/dit-fmnist
    curl -s localhost:8000/generate -H 'content-type: application/json' \\
         -d '{"class_label": 7, "n": 4, "steps": 25, "guidance": 2.0, "seed": 1}'
    # {"images": ["<base64 PNG>", ...], ...};  "format": "grid" returns one image/png instead

The model is a ``python -m diffusion.train`` run folder (its ``ema/`` weights in
diffusers layout and ``config.yaml``) or a registered model
(``models:/NAME@ALIAS``, as ``pipelines.diffusion`` logs them). Limits on ``n``
and ``steps`` bound the work one request can ask for; anything out of range is
a 422 naming the field, and the replica keeps serving.
"""

# No `from __future__ import annotations`: FastAPI must see the real route types (see app.py).
import base64
import copy
import tempfile
from pathlib import Path
from typing import Annotated, Literal

import torch
from fastapi import FastAPI, HTTPException
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt
from ray import serve

from diffusion.images import png_bytes, save_grid

MAX_IMAGES = 16
MAX_STEPS = 200

app = FastAPI(title="genrec image generation", description="Class-conditional DiT sampling.")


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    class_label: Annotated[StrictInt, Field(ge=0)]
    n: Annotated[StrictInt, Field(ge=1, le=MAX_IMAGES)] = 4
    steps: Annotated[StrictInt, Field(ge=1, le=MAX_STEPS)] = 50
    guidance: Annotated[StrictFloat | StrictInt, Field(ge=0, le=20)] = 1.5
    seed: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)] = 0
    scheduler: Literal["ddpm", "ddim", "dpm-solver"] = "ddim"
    format: Literal["json", "grid"] = "json"


def load_generator(source: str, tracking_uri: str | None = None):
    """(EMA transformer, DiffusionExperiment) from a run folder or a registry URI."""

    from serving.loading import parse_registry_uri, registered_model_files

    registry = parse_registry_uri(source)
    if registry is None:
        return _load_folder(Path(source))
    with registered_model_files(*registry, tracking_uri) as (_, _, files):
        return _load_folder(None, files["ema"], files["config"])


def _load_folder(folder: Path | None, ema: Path | None = None, config_file: Path | None = None):
    from diffusion.config import DiffusionExperiment
    from diffusion.models import load_pretrained
    from recsys.config import load_config

    ema, config_file = ema or folder / "ema", config_file or folder / "config.yaml"
    for needed in (config_file, ema):
        if not needed.exists():
            raise FileNotFoundError(
                f"{needed} does not exist: point model= at a finished `python -m diffusion.train` "
                "run folder or a registered diffusion model"
            )
    config = load_config(DiffusionExperiment, config_file)
    return load_pretrained(ema).eval(), config


@serve.deployment(max_ongoing_requests=8, ray_actor_options={"num_cpus": 1})
@serve.ingress(app)
class GeneratorService:
    def __init__(self, model: str, tracking_uri: str | None = None, torch_threads: int = 1):
        torch.set_num_threads(torch_threads)
        self.model, self.config = load_generator(model, tracking_uri)
        self.source = model
        self.num_classes = self.model.config.num_classes

    @app.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/model")
    def describe(self) -> dict:
        config = self.model.config
        return {
            "source": self.source,
            "kind": self.config.model.kind,
            "size": self.config.model.size,
            "num_classes": self.num_classes,
            "sample_size": config.sample_size,
            "limits": {"n": MAX_IMAGES, "steps": MAX_STEPS},
        }

    @app.post("/generate")
    def generate(self, request: GenerateRequest):
        # A plain def: FastAPI runs it in a worker thread, so sampling never blocks /healthz.
        from diffusion.train import sample

        if request.class_label >= self.num_classes:
            raise HTTPException(
                status_code=422,
                detail=f"class_label {request.class_label} is out of range: "
                f"this model has classes 0..{self.num_classes - 1}",
            )
        config = copy.deepcopy(self.config)  # requests run in parallel threads: no shared edits
        config.sample.scheduler = request.scheduler
        config.sample.steps = request.steps
        config.sample.guidance_scale = float(request.guidance)
        labels = torch.full((request.n,), request.class_label)
        images = sample(self.model, config, labels, seed=request.seed)
        if request.format == "grid":
            with tempfile.TemporaryDirectory() as folder:
                path = save_grid(images, 1, Path(folder) / "grid.png")
                return Response(content=path.read_bytes(), media_type="image/png")
        return {
            "images": [base64.b64encode(png_bytes(image)).decode() for image in images],
            "class_label": request.class_label,
            "seed": request.seed,
            "steps": request.steps,
        }


def build_app(args: dict):
    """``serve run serving.diffusion_app:build_app model=... [tracking_uri=...]``."""
    return GeneratorService.bind(**args)
