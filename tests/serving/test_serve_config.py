"""infra/serve.yaml is a valid Serve config whose args the app accepts."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

from serving.app import RecommenderService, ServiceArgs

CONFIG = Path(__file__).resolve().parents[2] / "infra" / "serve.yaml"


def test_serve_config_passes_rays_schema_and_the_apps_arguments():
    config = ServeDeploySchema(**yaml.safe_load(CONFIG.read_text()))
    assert config.http_options.host == "127.0.0.1"  # loopback unless someone opts out
    [application] = config.applications
    assert application.import_path == "serving.app:build_app"
    args = ServiceArgs(**application.args)
    assert args.model.startswith("models:/") and args.max_batch_size > 1
    [deployment] = application.deployments
    assert deployment.name == RecommenderService.name
    assert (
        deployment.autoscaling_config["max_replicas"]
        >= deployment.autoscaling_config["min_replicas"]
    )
