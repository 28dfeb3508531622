"""Shared fixtures: where the datasets live, and prepared copies made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run in its interpreter. The flag is read when a
# kernel is decorated, and torchrec/fbgemm import Triton as a side effect, so it
# must be set here, before any test module is imported, not in the kernel tests.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GENREC_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


def shared_dataset(name: str) -> Path:
    """Folder of a dataset in ../shared/data (or $GENREC_DATA_DIR); skips the test when absent."""
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.skip(
            f"{folder} not found: set GENREC_DATA_DIR to the folder holding the shared datasets"
        )
    return folder


@pytest.fixture(scope="session")
def shared():
    """shared(name) -> folder of that dataset in ../shared/data; skips when absent."""
    return shared_dataset


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """prepared(name, **options) -> folder; each (name, options) is prepared once per session."""
    from recsys.data import prepare_dataset

    cache: dict = {}

    def get(name: str, **options) -> Path:
        key = (name, tuple(sorted(options.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp("prepared") / name
            source = None if name == "synthetic" else shared_dataset(name)
            prepare_dataset(name, out, source, options=options)
            cache[key] = out
        return cache[key]

    return get


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray instance (2 CPUs, small object store) for the tests that need one.

    Session-wide: the pipeline jobs join it and the Serve tests run on it; starting
    Ray twice in one process is not possible, and starting it per module is slow.
    """
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
