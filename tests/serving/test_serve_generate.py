"""POST /generate over real HTTP: PNG images from a tiny trained DiT, 4xx on bad input."""

from __future__ import annotations

import base64
import io

import pytest
import requests
from _serving_tools import wait_healthy
from PIL import Image

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def generator_url(serve_http, tmp_path_factory):
    from ray import serve

    from diffusion.config import DiffusionExperiment
    from diffusion.train import run
    from recsys.config import load_config
    from serving.diffusion_app import GeneratorService

    root = tmp_path_factory.mktemp("dit")
    overrides = [
        f"output_root={root}",
        "name=tiny-dit",
        "data.synthetic_count=64",
        "model.options={hidden_size: 32, depth: 2, num_heads: 2}",
        "train.steps=3",
        "train.batch_size=8",
        "sample.steps=2",
        "sample.per_class=1",
    ]
    run(load_config(DiffusionExperiment, "configs/diffusion/demo.yaml", overrides))
    deployment = GeneratorService.options(ray_actor_options={"num_cpus": 0})
    serve.run(deployment.bind(model=str(root / "tiny-dit")), name="generate", route_prefix="/gen")
    url = f"{serve_http}/gen"
    wait_healthy(url)
    yield url
    serve.delete("generate")


def _decode(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def test_generate_returns_png_images_reproducibly(generator_url):
    body = {"class_label": 3, "n": 2, "steps": 3, "guidance": 2.0, "seed": 5}
    first = requests.post(f"{generator_url}/generate", json=body, timeout=60)
    assert first.status_code == 200, first.text
    images = first.json()["images"]
    assert len(images) == 2
    assert all(_decode(image).size == (28, 28) for image in images)
    again = requests.post(f"{generator_url}/generate", json=body, timeout=60).json()["images"]
    assert again == images  # same seed, same pictures

    grid = requests.post(f"{generator_url}/generate", json={**body, "format": "grid"}, timeout=60)
    assert grid.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(grid.content)).size[0] > 28


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"class_label": 10}, "classes 0..9"),
        ({"class_label": -1}, "greater than or equal to 0"),
        ({"class_label": "3"}, "valid integer"),
        ({"class_label": 1, "n": 0}, "greater than or equal to 1"),
        ({"class_label": 1, "n": 17}, "less than or equal to 16"),
        ({"class_label": 1, "steps": 0}, "greater than or equal to 1"),
        ({"class_label": 1, "steps": 201}, "less than or equal to 200"),
        ({"class_label": 1, "guidance": "high"}, "guidance"),
        ({"class_label": 1, "scheduler": "euler"}, "ddpm"),
        ({"class_label": 1, "size": 64}, "Extra inputs"),
        ({}, "Field required"),
    ],
)
def test_bad_requests_get_a_422_and_the_server_keeps_serving(generator_url, body, message):
    response = requests.post(f"{generator_url}/generate", json=body, timeout=60)
    assert response.status_code == 422, response.text
    assert message in response.text
    good = {"class_label": 0, "n": 1, "steps": 1}
    assert requests.post(f"{generator_url}/generate", json=good, timeout=60).status_code == 200


def test_model_description(generator_url):
    info = requests.get(f"{generator_url}/model", timeout=10).json()
    assert info["num_classes"] == 10 and info["limits"] == {"n": 16, "steps": 200}
