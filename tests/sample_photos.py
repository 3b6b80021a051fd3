"""Real photos that scikit-image ships, plus side-by-side composites, as RGB PIL images.

Shared by the detector tests, the benches and the reference-recording script
(``tests/fixtures/record_detector_reference.py``), so all of them see the same pixels.
Needs only numpy, Pillow and scikit-image.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image
from skimage import data


def _rgb(array: np.ndarray) -> Image.Image:
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    image = Image.fromarray(array)
    return image.convert("RGB")


def side_by_side(*images: Image.Image) -> Image.Image:
    """The images in a row, top-aligned on black (a two- or three-person "group photo")."""
    width = sum(i.width for i in images)
    height = max(i.height for i in images)
    canvas = Image.new("RGB", (width, height))
    x = 0
    for image in images:
        canvas.paste(image, (x, 0))
        x += image.width
    return canvas


PHOTOS: dict[str, Callable[[], Image.Image]] = {
    "astronaut": lambda: _rgb(data.astronaut()),
    "camera": lambda: _rgb(data.camera()),
    "chelsea": lambda: _rgb(data.chelsea()),
    "coffee": lambda: _rgb(data.coffee()),
    "motorcycle": lambda: _rgb(data.stereo_motorcycle()[0]),
    "horse": lambda: _rgb(data.horse()),
    "rocket": lambda: _rgb(data.rocket()),
    "moon": lambda: _rgb(data.moon()),
    "two_astronauts": lambda: side_by_side(*[_rgb(data.astronaut())] * 2),
    "three_astronauts": lambda: side_by_side(*[_rgb(data.astronaut())] * 3),
}


def photo(name: str) -> Image.Image:
    return PHOTOS[name]()
