"""Fixtures of the serving tests: a tiny trained model and a real Ray Serve HTTP server."""

from __future__ import annotations

from pathlib import Path

import pytest
from _serving_tools import free_port, train_tiny


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("serve-runs"), "tiny")


@pytest.fixture(scope="session")
def serve_http(local_ray):
    """Serve's HTTP proxy on a free loopback port; yields its base URL."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
