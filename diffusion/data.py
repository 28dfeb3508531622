"""Image data for the diffusion models: Fashion-MNIST (any MNIST-format IDX pair) and a
synthetic stand-in.

Raw files come either from a local folder (``root=PATH``: what tests and CI use, pointed
at ``../shared/data/fashion-mnist`` through ``GENREC_DATA_DIR``) or, when no folder is
given, from the dataset's public URL, downloaded once into a cache. Files may be stored
as shipped (``name.gz``) or already decompressed (``name``). Checksums are sha256 of the
decompressed content, so both forms verify against the same value; the published MD5 of
the ``.gz`` is checked on download. This mirrors ``recsys.data.sources`` (diffusion does
not import recsys, so the few helpers are repeated here). The download path cannot be
exercised on a machine without internet; everything after the download is the local path.

Images leave ``load_fashion_mnist`` as uint8 ``(N, 28, 28)``; models see float tensors in
[-1, 1] of shape ``(N, 1, H, W)`` (``to_model_range``, ``ImageDataset``), optionally
padded to 32x32 with the background value (patch sizes that need a power of two).
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import shutil
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

Split = Literal["train", "test"]
_CHUNK = 1 << 20


class DataError(Exception):
    """A dataset file is missing, damaged or not what was expected.

    The message names the file, says what is wrong and what to do; command-line entry
    points print it without a traceback (as ``recsys.data.DataError`` does).
    """


# ---------------------------------------------------------------------------
# Where the files live and what they must contain
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IdxFile:
    """One IDX file: its name, the sha256 of its decompressed bytes, the MD5 the publisher
    quotes for its ``.gz`` (checked on download) and the number of items it holds."""

    name: str
    sha256: str | None
    gz_md5: str | None
    count: int


@dataclass(frozen=True)
class IdxDataset:
    """An MNIST-format dataset: an images/labels IDX pair per split, and where to fetch it."""

    name: str
    splits: dict[str, tuple[IdxFile, IdxFile]]  # split -> (images, labels)
    mirrors: tuple[str, ...]  # base URLs, tried in order
    image_shape: tuple[int, int]
    num_classes: int


# Upstream (zalandoresearch/fashion-mnist) publishes the MD5s of the .gz files. The sha256
# values are of the decompressed IDX files in ../shared/data/fashion-mnist; that copy was
# recompressed by Debian, so its .gz bytes differ from upstream's, but the decompressed
# label files are byte-identical to upstream's (the image files could only be compared by
# structure), which is why checks are made on decompressed content.
FASHION_MNIST = IdxDataset(
    name="fashion-mnist",
    splits={
        "train": (
            IdxFile(
                "train-images-idx3-ubyte",
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                60_000,
            ),
            IdxFile(
                "train-labels-idx1-ubyte",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "25c81989df183df01b3e8a0aad5dffbe",
                60_000,
            ),
        ),
        "test": (
            IdxFile(
                "t10k-images-idx3-ubyte",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "bef4ecab320f06d8554ea6380940ec79",
                10_000,
            ),
            IdxFile(
                "t10k-labels-idx1-ubyte",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                "bb300cfdad3c16e7a12a480ee83cd310",
                10_000,
            ),
        ),
    },
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    image_shape=(28, 28),
    num_classes=len(FASHION_MNIST_CLASSES),
)


def default_cache_dir() -> Path:
    """Where downloads go: ``$GENREC_CACHE_DIR/raw`` (default ``~/.cache/genrec/raw``)."""
    return Path(os.environ.get("GENREC_CACHE_DIR", Path.home() / ".cache" / "genrec")) / "raw"


def find_file(directory: Path, name: str) -> Path | None:
    """Return ``directory/name`` or ``directory/name.gz``, whichever exists."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------------------
# Reading IDX files
# ---------------------------------------------------------------------------

_UBYTE = 0x08  # the only IDX element type MNIST-format datasets use


def _read_content(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:  # truncated or not really gzip
        raise DataError(
            f"{path}: cannot be read ({error}). The file is damaged (often a truncated "
            "download); replace it with the original."
        ) from error


def read_idx(path: str | Path, ndim: int, expected: IdxFile | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes with ``ndim`` dimensions (3: images, 1: labels).

    The structure is checked first (magic number, declared sizes against the actual
    length), then the item count and the sha256 of the decompressed bytes against
    ``expected`` when it is given: a truncated file is reported as truncated rather than
    as a checksum mismatch. Returns a writable uint8 numpy array.
    """
    path = Path(path)
    content = _read_content(path)
    magic = (_UBYTE << 8) | ndim  # 2049 for labels, 2051 for images
    header_size = 4 + 4 * ndim
    if len(content) < header_size:
        raise DataError(
            f"{path}: only {len(content)} bytes, shorter than an IDX header ({header_size} "
            "bytes). The file is truncated or empty; replace it with the original."
        )
    found_magic = int.from_bytes(content[:4], "big")
    if found_magic != magic:
        raise DataError(
            f"{path}: bad magic number {found_magic} (expected {magic}, an IDX file of "
            f"{ndim}-dimensional unsigned bytes). This is not the expected IDX file "
            "(images and labels swapped, or a different format); check the file name."
        )
    dims = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    want = header_size + math.prod(dims)
    if len(content) != want:
        problem = "truncated" if len(content) < want else "longer than its header says"
        raise DataError(
            f"{path}: {problem}: the header declares {'x'.join(map(str, dims))} items "
            f"({want} bytes with the header) but the content has {len(content)} bytes. "
            "Replace the file with the original."
        )
    if expected is not None:
        if dims[0] != expected.count:
            raise DataError(
                f"{path}: holds {dims[0]} items, expected {expected.count} for "
                f"{expected.name}. It is a different file or version; replace it with the "
                "original."
            )
        if expected.sha256 is not None:
            actual = hashlib.sha256(content).hexdigest()
            if actual != expected.sha256:
                raise DataError(
                    f"{path}: checksum mismatch (sha256 of its content is {actual}, expected "
                    f"{expected.sha256}). The file is damaged or a different version; "
                    "replace it with the original, or pass verify=False if you changed it "
                    "on purpose."
                )
    return np.frombuffer(content, dtype=np.uint8, offset=header_size).reshape(dims).copy()


def read_idx_pair(
    images_path: Path,
    labels_path: Path,
    images_file: IdxFile | None = None,
    labels_file: IdxFile | None = None,
    num_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read an images/labels IDX pair into (uint8 (N, H, W), int64 (N,)) and check they match."""
    images = read_idx(images_path, 3, images_file)
    labels = read_idx(labels_path, 1, labels_file)
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
            "labels. The two files come from different splits or versions; use a matching pair."
        )
    if num_classes is not None and len(labels) and int(labels.max()) >= num_classes:
        raise DataError(
            f"{labels_path}: label {int(labels.max())} is out of range (expected 0-"
            f"{num_classes - 1}). The file is damaged or belongs to another dataset."
        )
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def load_idx_dataset(
    dataset: IdxDataset,
    root: str | Path | None,
    split: Split,
    verify: bool = True,
    cache_dir: Path | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of an MNIST-format dataset from ``root`` or, when ``root`` is None,
    from the public copy (downloaded once into ``cache_dir``)."""
    if split not in dataset.splits:
        raise ValueError(f"split must be one of {sorted(dataset.splits)}, got {split!r}")
    images_file, labels_file = dataset.splits[split]
    if root is None:
        directory = download(dataset, split, cache_dir)
    else:
        directory = Path(root)
        if not directory.is_dir():
            raise DataError(
                f"data folder {directory} does not exist. Pass the folder that holds the "
                f"{dataset.name} IDX files, or none (root=None, or no --data) to download the public copy."
            )
    paths = []
    for file in (images_file, labels_file):
        path = find_file(directory, file.name)
        if path is None:
            raise DataError(
                f"{directory}: missing {file.name} (plain or .gz). Point root at the folder "
                f"that holds the {dataset.name} files, or none (root=None) to download the public copy."
            )
        paths.append(path)
    if not verify:
        images_file = IdxFile(images_file.name, None, None, images_file.count)
        labels_file = IdxFile(labels_file.name, None, None, labels_file.count)
    return read_idx_pair(paths[0], paths[1], images_file, labels_file, dataset.num_classes)


def load_fashion_mnist(
    root: str | Path | None,
    split: Split = "train",
    verify: bool = True,
    cache_dir: Path | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST ``split`` as (uint8 images (N, 28, 28), int64 labels (N,)).

    ``root`` is a folder with the four IDX files (plain or .gz), e.g.
    ``../shared/data/fashion-mnist``; None downloads the public copy into the cache
    (``$GENREC_CACHE_DIR``). ``verify`` checks each file's sha256; counts (60,000 train,
    10,000 test) and structure are always checked. Problems raise ``DataError``.
    """
    return load_idx_dataset(FASHION_MNIST, root, split, verify, cache_dir)


# ---------------------------------------------------------------------------
# Downloading (not exercised in tests: the build machines have no internet)
# ---------------------------------------------------------------------------


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _fetch(url: str, destination: Path) -> None:
    """Download ``url`` to ``destination`` via a temporary name (never half-written)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=destination.parent, delete=False, suffix=".part") as out:
        tmp = Path(out.name)
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                shutil.copyfileobj(response, out, _CHUNK)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    tmp.replace(destination)


def download(dataset: IdxDataset, split: Split, cache_dir: Path | None = None) -> Path:
    """Fetch the ``.gz`` files of ``split`` into ``cache_dir/<dataset>`` (once); return the folder.

    Mirrors are tried in order; a file whose MD5 differs from the published one is deleted
    and the next mirror tried. The decompressed content is checked again when read.
    """
    target = (cache_dir or default_cache_dir()) / dataset.name
    for file in dataset.splits[split]:
        if find_file(target, file.name) is not None:
            continue
        destination = target / f"{file.name}.gz"
        failures = []
        for mirror in dataset.mirrors:
            url = mirror + destination.name
            print(f"downloading {url} -> {destination}")
            try:
                _fetch(url, destination)
            except OSError as error:
                failures.append(f"{url}: {error}")
                continue
            if file.gz_md5 is not None and (actual := _md5_of(destination)) != file.gz_md5:
                destination.unlink()
                failures.append(f"{url}: md5 {actual}, expected {file.gz_md5}")
                continue
            break
        else:
            raise DataError(
                f"could not download {destination.name} ({'; '.join(failures)}). Check the "
                f"network, or download the {dataset.name} files by hand and pass their folder."
            )
    return target


# ---------------------------------------------------------------------------
# Model input: float in [-1, 1], (N, 1, H, W)
# ---------------------------------------------------------------------------


def to_model_range(images: torch.Tensor, pad_to: int | None = None) -> torch.Tensor:
    """uint8 images (..., H, W) -> float32 (..., 1, H', W') in [-1, 1].

    ``pad_to`` pads each side equally with -1 (the black background of Fashion-MNIST), so
    28x28 becomes 32x32 with a 2-pixel border; ``diffusion.evaluation`` crops it back.
    """
    x = images.to(torch.float32).div(127.5).sub(1.0).unsqueeze(-3)
    if pad_to is not None:
        height, width = x.shape[-2:]
        if pad_to < max(height, width) or (pad_to - height) % 2 or (pad_to - width) % 2:
            raise ValueError(f"cannot pad {height}x{width} evenly to {pad_to}x{pad_to}")
        ph, pw = (pad_to - height) // 2, (pad_to - width) // 2
        x = torch.nn.functional.pad(x, (pw, pw, ph, ph), value=-1.0)
    return x


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """The inverse of ``to_model_range`` (without the padding): [-1, 1] -> uint8, clamped."""
    return x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


class ImageDataset(Dataset):
    """(image, label) pairs; images float32 (1, H, W) in [-1, 1], labels int64.

    Keeps the uint8 tensor (47 MB for Fashion-MNIST train rather than 190 MB as float) and
    converts on access; indexing with a tensor of indices returns a whole batch at once,
    which is much faster than a DataLoader collating single items on a CPU.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, pad_to: int | None = None):
        if images.dtype != torch.uint8 or images.ndim != 3:
            raise ValueError(f"images must be uint8 (N, H, W), got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.pad_to = pad_to

    @classmethod
    def fashion_mnist(
        cls, root: str | Path | None, split: Split = "train", pad_to: int | None = None
    ) -> ImageDataset:
        return cls(*load_fashion_mnist(root, split), pad_to=pad_to)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        return to_model_range(self.images[index], self.pad_to), self.labels[index]


# ---------------------------------------------------------------------------
# Synthetic images: class-dependent shapes, for demos and tests without the dataset
# ---------------------------------------------------------------------------

_SHAPES = ("square", "disc", "horizontal bar", "vertical bar", "ring", "cross", "triangle")


def synthetic_images(
    num: int, num_classes: int = 10, size: int = 28, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` uint8 images (num, size, size) of simple shapes, and their int64 labels.

    The label picks the shape (cycling through square, disc, bars, ring, cross, triangle)
    and its scale (classes beyond the number of shapes get a smaller version); each image
    has a random position jitter, brightness and a little noise, so a model has something
    to learn but a classifier separates the classes easily. Deterministic given ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(num_classes, (num,), generator=generator)
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    row, col = coords[:, None], coords[None, :]
    shift = torch.randint(-(size // 8), size // 8 + 1, (num, 2), generator=generator)
    brightness = 0.6 + 0.4 * torch.rand(num, generator=generator)
    images = torch.empty(num, size, size)
    for i in range(num):
        label = int(labels[i])
        shape = _SHAPES[label % len(_SHAPES)]
        radius = size * (0.3 if label < len(_SHAPES) else 0.18)
        y, x = row - shift[i, 0], col - shift[i, 1]
        if shape == "square":
            mask = (y.abs() <= radius * 0.8) & (x.abs() <= radius * 0.8)
        elif shape == "disc":
            mask = y**2 + x**2 <= radius**2
        elif shape == "horizontal bar":
            mask = (y.abs() <= radius * 0.25) & (x.abs() <= radius)
        elif shape == "vertical bar":
            mask = (x.abs() <= radius * 0.25) & (y.abs() <= radius)
        elif shape == "ring":
            mask = ((y**2 + x**2).sqrt() - radius * 0.75).abs() <= radius * 0.2
        elif shape == "cross":
            mask = ((y.abs() <= radius * 0.2) | (x.abs() <= radius * 0.2)) & (
                (y.abs() <= radius) & (x.abs() <= radius)
            )
        else:  # triangle, apex up
            mask = (y <= radius * 0.8) & (x.abs() <= (y + radius) * 0.5)
        images[i] = mask.float() * brightness[i]
    images += 0.05 * torch.randn(images.shape, generator=generator)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels
