"""Fashion-MNIST reading: exact counts, value range, padding, and clear errors for bad files."""

from __future__ import annotations

import gzip

import pytest
import torch

from diffusion.data import (
    FASHION_MNIST,
    FASHION_MNIST_CLASSES,
    DataError,
    ImageDataset,
    load_fashion_mnist,
    read_idx,
    synthetic_images,
    to_model_range,
    to_uint8,
)

IMAGES, LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


@pytest.fixture(scope="module")
def fmnist(shared):
    return shared("fashion-mnist")


def _idx(ndim: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    header = (0x0800 | ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return header + payload


@pytest.fixture
def test_split_copy(fmnist, tmp_path):
    """A writable folder with the test split: images linked, labels decompressed (plain)."""
    (tmp_path / f"{IMAGES}.gz").symlink_to(fmnist / f"{IMAGES}.gz")
    with gzip.open(fmnist / f"{LABELS}.gz", "rb") as src:
        (tmp_path / LABELS).write_bytes(src.read())
    return tmp_path


# --- the real files ----------------------------------------------------------------------


@pytest.mark.shared_data
def test_train_split_exact(fmnist):
    images, labels = load_fashion_mnist(fmnist, "train")
    assert images.shape == (60_000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (60_000,) and labels.dtype == torch.int64
    assert labels.bincount().tolist() == [6_000] * 10
    assert int(images.min()) == 0 and int(images.max()) == 255

    data = ImageDataset(images, labels)
    x, y = data[torch.arange(len(data))]
    assert x.shape == (60_000, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert torch.equal(y, labels)


@pytest.mark.shared_data
def test_test_split_exact(fmnist):
    images, labels = load_fashion_mnist(fmnist, "test")
    assert images.shape == (10_000, 28, 28)
    assert labels.bincount().tolist() == [1_000] * 10
    assert len(FASHION_MNIST_CLASSES) == 10 and FASHION_MNIST_CLASSES[9] == "Ankle boot"


@pytest.mark.shared_data
def test_plain_and_gz_read_alike(fmnist, test_split_copy):
    assert torch.equal(
        load_fashion_mnist(test_split_copy, "test")[1], load_fashion_mnist(fmnist, "test")[1]
    )


@pytest.mark.shared_data
def test_checksum_mismatch_names_the_file(test_split_copy):
    path = test_split_copy / LABELS
    content = bytearray(path.read_bytes())
    content[8] = (content[8] + 1) % 10  # still a valid label: only the checksum can tell
    path.write_bytes(bytes(content))
    with pytest.raises(DataError, match="checksum mismatch") as error:
        load_fashion_mnist(test_split_copy, "test")
    assert str(path) in str(error.value) and "replace it" in str(error.value)
    # verify=False is the way to load a file changed on purpose
    labels = load_fashion_mnist(test_split_copy, "test", verify=False)[1]
    assert int(labels[0]) == content[8]


@pytest.mark.shared_data
def test_truncated_files(fmnist, tmp_path, test_split_copy):
    path = test_split_copy / LABELS
    path.write_bytes(path.read_bytes()[:5_000])  # header says 10,000 labels
    with pytest.raises(DataError, match="truncated") as error:
        load_fashion_mnist(test_split_copy, "test")
    assert str(path) in str(error.value)

    gz = tmp_path / "cut" / f"{LABELS}.gz"  # a download that stopped half-way
    gz.parent.mkdir()
    gz.write_bytes((fmnist / f"{LABELS}.gz").read_bytes()[:2_000])
    with pytest.raises(DataError, match="damaged") as error:
        read_idx(gz, 1)
    assert str(gz) in str(error.value)


@pytest.mark.shared_data
def test_wrong_count_and_missing_file(test_split_copy):
    path = test_split_copy / LABELS
    path.write_bytes(_idx(1, (100,), bytes(100)))  # well-formed, but not 10,000 labels
    with pytest.raises(DataError, match="holds 100 items, expected 10000") as error:
        load_fashion_mnist(test_split_copy, "test")
    assert str(path) in str(error.value)

    path.unlink()
    with pytest.raises(DataError, match=f"missing {LABELS}"):
        load_fashion_mnist(test_split_copy, "test")


def test_bad_magic_and_header(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(_idx(3, (1, 2, 2), bytes(4)))  # an image file where labels belong
    with pytest.raises(DataError, match="bad magic number 2051 \\(expected 2049") as error:
        read_idx(path, 1)
    assert str(path) in str(error.value)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="shorter than an IDX header"):
        read_idx(path, 1)
    path.write_bytes(_idx(1, (3,), bytes(5)))
    with pytest.raises(DataError, match="longer than its header says"):
        read_idx(path, 1)


def test_missing_folder_and_split(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_fashion_mnist(tmp_path / "nowhere", "train")
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist(tmp_path, "validation")


def test_public_copy_is_described():
    """Download can't run here (no internet); check what it would fetch and verify."""
    for images, labels in FASHION_MNIST.splits.values():
        for file in (images, labels):
            assert len(file.sha256) == 64 and len(file.gz_md5) == 32
    assert all(url.startswith("http") and url.endswith("/") for url in FASHION_MNIST.mirrors)


# --- model input -------------------------------------------------------------------------


def test_scaling_and_padding():
    images = torch.tensor([[[0, 255], [128, 64]]], dtype=torch.uint8).repeat(3, 14, 14)  # 28x28
    x = to_model_range(images)
    assert x.shape == (3, 1, 28, 28) and float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert torch.equal(to_uint8(x), images.unsqueeze(1))

    padded = to_model_range(images, pad_to=32)
    assert padded.shape == (3, 1, 32, 32)
    assert torch.equal(padded[..., 2:30, 2:30], x)
    border = padded.clone()
    border[..., 2:30, 2:30] = -1.0
    assert bool((border == -1.0).all())
    with pytest.raises(ValueError, match="evenly"):
        to_model_range(images, pad_to=31)

    data = ImageDataset(images, torch.arange(3), pad_to=32)
    item, label = data[1]
    assert item.shape == (1, 32, 32) and int(label) == 1


def test_synthetic_images():
    images, labels = synthetic_images(200, num_classes=10, size=28, seed=3)
    assert images.shape == (200, 28, 28) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and set(labels.tolist()) == set(range(10))
    again, _ = synthetic_images(200, num_classes=10, size=28, seed=3)
    assert torch.equal(images, again)
    # classes differ on average: the per-class mean images are far apart
    means = torch.stack([images[labels == c].float().mean(0) for c in range(10)])
    distances = torch.cdist(means.flatten(1), means.flatten(1))
    assert float(distances[~torch.eye(10, dtype=torch.bool)].min()) > 100
    assert synthetic_images(4, size=32)[0].shape == (4, 32, 32)
