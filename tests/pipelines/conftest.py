"""One small local Ray instance for the pipeline tests that run jobs in-process."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def local_ray():
    """A local Ray instance (2 CPUs, small object store) that ``pipelines.recsys`` joins."""
    import ray

    if not ray.is_initialized():
        ray.init(
            # A fresh instance even if /tmp/ray/ray_current_cluster names another one.
            address="local",
            num_cpus=2,
            object_store_memory=300 * 2**20,
            include_dashboard=False,
            log_to_driver=True,
        )
    yield ray
    ray.shutdown()
