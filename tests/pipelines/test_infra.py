"""The infra files: the cluster-launcher YAML against Ray's schema, the RayJob's shape
(and that its entrypoint is a valid pipeline command), the service scripts."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from pipelines.config import RecsysJobConfig
from recsys.config import load_config

INFRA = Path(__file__).resolve().parents[2] / "infra"


def _check_entrypoint(command: str) -> None:
    """``python -m pipelines.recsys CONFIG k=v ...`` must load as a RecsysJobConfig."""
    words = shlex.split(command)
    start = words.index("pipelines.recsys")
    config, *overrides = words[start + 1 :]
    load_config(RecsysJobConfig, INFRA.parent / config, overrides)


def test_cluster_launcher_config_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((INFRA / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(config))
    assert config["head_node_type"] in config["available_node_types"]


def test_rayjob_manifest_has_what_kuberay_requires():
    job = yaml.safe_load((INFRA / "kuberay-rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        (container, *_) = group["template"]["spec"]["containers"]
        assert container["name"] and container["image"]
        assert isinstance(group["rayStartParams"], dict)
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
    for worker in cluster["workerGroupSpecs"]:
        assert worker["minReplicas"] <= worker["replicas"] <= worker["maxReplicas"]
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert set(runtime_env) <= {"working_dir", "env_vars", "pip", "py_modules"}
    _check_entrypoint(spec["entrypoint"])


@pytest.mark.parametrize("script", ["ray_head.sh", "mlflow_server.sh"])
def test_service_scripts_parse_and_explain_themselves(script):
    subprocess.run(["bash", "-n", str(INFRA / script)], check=True)
    usage = subprocess.run(["bash", str(INFRA / script)], capture_output=True, text=True)
    assert usage.returncode == 2 and "start|stop|status" in usage.stderr
