"""Images in [0, 1] (N, C, H, W) to files and bytes: sample grids and PNG responses."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def save_grid(images: torch.Tensor, rows: int, path: Path) -> Path:
    """A PNG grid of images in [0, 1] (N, C, H, W), ``rows`` rows, 2-pixel white gaps."""
    count, channels, height, width = images.shape
    cols = math.ceil(count / rows)
    gap = 2
    canvas = np.ones((rows * (height + gap) + gap, cols * (width + gap) + gap, channels))
    for index, image in enumerate(images.float().cpu().permute(0, 2, 3, 1).numpy()):
        r, c = divmod(index, cols)
        top, left = gap + r * (height + gap), gap + c * (width + gap)
        canvas[top : top + height, left : left + width] = image
    pixels = (canvas * 255).round().clip(0, 255).astype(np.uint8)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(path)
    return path


def png_bytes(image: torch.Tensor) -> bytes:
    """One image in [0, 1], (C, H, W), as PNG bytes (grayscale for one channel)."""
    pixels = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, "PNG")
    return buffer.getvalue()
