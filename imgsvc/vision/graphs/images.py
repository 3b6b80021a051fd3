"""PIL images as the inputs the detector graphs take: resized, letterboxed, stacked NHWC."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def resized(image: Any, size: int | tuple[int, int]) -> Any:
    """``image`` (PIL) as RGB of ``size`` pixels (``(width, height)`` or a square side).

    Pillow's bicubic filter, antialiased: the detectors shrink photos a lot (512 -> 300 and more),
    and TF's ``ResizeBilinear`` would sample only 4 pixels per output pixel and skip the rest.
    Bicubic is Pillow's default resize, as used in the hand check of these models (astronaut
    person 0.95: 0.91 with plain bilinear).
    """
    from PIL import Image

    target = (size, size) if isinstance(size, int) else size
    image = image.convert("RGB")
    return image if image.size == target else image.resize(target, Image.Resampling.BICUBIC)


def letterboxed(image: Any) -> Any:
    """``image`` (PIL) on a black square canvas, top-left aligned, so things keep their shape when
    a model squeezes it to its square input; a box's pixels on the canvas are the photo's pixels."""
    from PIL import Image

    image = image.convert("RGB")
    if image.width == image.height:
        return image
    canvas = Image.new("RGB", (max(image.size),) * 2)
    canvas.paste(image, (0, 0))
    return canvas


def image_batch(images: Sequence[Any]) -> torch.Tensor:
    """Same-size PIL images as one ``(N, H, W, 3)`` float tensor of 0-255 RGB values."""
    return torch.from_numpy(
        np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    )
