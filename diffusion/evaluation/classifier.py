"""A small CNN for 28x28 grayscale images: the feature extractor behind FID/KID and the
judge of conditional samples.

Inception-v3 features (the usual FID backbone) are trained on ImageNet photographs and
expect 299x299 RGB; for Fashion-MNIST a classifier trained on the dataset itself gives
features that actually separate its classes, and costs seconds rather than minutes per
evaluation on a CPU. Numbers computed with it are comparable only with numbers computed
with the same weights: the weights file's digest is kept with every reference statistic.

Inputs are float (N, 1, H, W) in [-1, 1] (``diffusion.data.to_model_range``), H = W = 28
or 32. A 32x32 input is center-cropped to 28x28, which exactly undoes the 2-pixel padding
``to_model_range(pad_to=32)`` adds; whatever a model draws in that border is ignored.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..data import to_model_range

WEIGHTS_FILE = "model.safetensors"
INFO_FILE = "classifier.json"
IMAGE_SIZE = 28


@dataclass(frozen=True)
class ClassifierConfig:
    num_classes: int = 10
    channels: tuple[int, int, int] = (16, 32, 128)  # per stage; the last is the feature size
    dropout: float = 0.3


def crop_to_classifier_size(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, 28|32, 28|32) -> (N, 1, 28, 28): center-crop 32x32 (drops the padding border)."""
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected images (N, 1, H, W), got shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    if (height, width) == (IMAGE_SIZE, IMAGE_SIZE):
        return x
    if (height, width) == (32, 32):
        return x[..., 2:30, 2:30]
    raise ValueError(f"the classifier takes 28x28 or 32x32 images, got {height}x{width}")


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class ImageClassifier(nn.Module):
    """Three conv stages (28 -> 14 -> 7), global average pooling -> features, linear -> logits.

    Like Inception's pool3, the features are the globally pooled activations just before
    the classification layer (``config.channels[-1]`` = 128 dims by default).
    """

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = config or ClassifierConfig()
        c1, c2, c3 = self.config.channels
        self.body = nn.Sequential(
            _conv_block(1, c1),
            _conv_block(c1, c1),
            nn.MaxPool2d(2),
            _conv_block(c1, c2),
            _conv_block(c2, c2),
            nn.MaxPool2d(2),
            _conv_block(c2, c3),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Dropout(self.config.dropout), nn.Linear(c3, self.config.num_classes)
        )

    @property
    def feature_dim(self) -> int:
        return self.config.channels[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28|32, 28|32) in [-1, 1] -> (N, feature_dim) penultimate embedding."""
        return self.body(crop_to_classifier_size(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes)."""
        return self.head(self.features(x))

    def digest(self) -> str:
        """Short sha256 of the weights: which classifier a set of statistics was made with."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


@torch.no_grad()
def extract(
    classifier: ImageClassifier, images: torch.Tensor, batch_size: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features float64 (N, D), logits float32 (N, C)) of float images in [-1, 1], eval mode.

    uint8 (N, H, W) images are accepted too and scaled like ``to_model_range``.
    """
    if images.dtype == torch.uint8:
        images = to_model_range(images)
    was_training = classifier.training
    classifier.eval()
    device = next(classifier.parameters()).device
    features, logits = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device, torch.float32)
        feats = classifier.features(batch)
        features.append(feats.double().cpu())
        logits.append(classifier.head(feats).cpu())
    classifier.train(was_training)
    dim, classes = classifier.feature_dim, classifier.config.num_classes
    if not features:
        return torch.empty(0, dim, dtype=torch.float64), torch.empty(0, classes)
    return torch.cat(features), torch.cat(logits)


def save_classifier(classifier: ImageClassifier, folder: str | Path, info: dict) -> Path:
    """Write ``model.safetensors`` and ``classifier.json`` (config, digest and ``info``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in classifier.state_dict().items()}, folder / WEIGHTS_FILE
    )
    record = {"config": asdict(classifier.config), "digest": classifier.digest(), **info}
    (folder / INFO_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return folder


def load_classifier(folder: str | Path, device: str | torch.device = "cpu") -> ImageClassifier:
    """Load a classifier written by ``save_classifier`` (by ``train_classifier``), in eval mode."""
    folder = Path(folder)
    info_path, weights_path = folder / INFO_FILE, folder / WEIGHTS_FILE
    if not info_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f"{folder}: no {INFO_FILE} + {WEIGHTS_FILE}. Train one with "
            f"`python -m diffusion.evaluation.train_classifier --data DATA --out {folder}`."
        )
    raw = json.loads(info_path.read_text())["config"]
    config = ClassifierConfig(**{**raw, "channels": tuple(raw["channels"])})
    classifier = ImageClassifier(config)
    classifier.load_state_dict(load_file(weights_path))
    return classifier.to(device).eval()
