"""Is the image a drawing (clip art, a cartoon, a logo) rather than a photo?

The detectors and the classifier were trained on photos: on a cartoon fish the classifier says
"mouse" and nothing else is sure, and "a photo of ..." would be wrong before the noun. A logistic
regression over the classifier's own pooled features (``data/drawing_head.txt``, trained by
``scripts/drawing_head.py`` on Debian's openclipart and opencv-doc drawings against package
photos, never on the development set) says when it is a drawing; the sentence then says so.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import numpy as np

#: The head's probability from which an image is called a drawing. On the tuning half the cartoon
#: scored 0.996 and no photo 0.05; scikit-image's checkerboard (drawn, but no drawing) 0.7.
DRAWING_SCORE = 0.9


@cache
def drawing_head() -> tuple[float, np.ndarray]:
    """(bias, 1280 weights) of the logistic regression."""
    text = resources.files("imgsvc.vision").joinpath("data/drawing_head.txt").read_text("utf-8")
    values = [float(line) for line in text.splitlines() if line and not line.startswith("#")]
    return values[0], np.asarray(values[1:], dtype=np.float64)


def drawing_scores(features: np.ndarray) -> np.ndarray:
    """The probability that each image (a row of pooled features, N x 1280) is a drawing."""
    bias, weights = drawing_head()
    return 1.0 / (1.0 + np.exp(-(features.astype(np.float64) @ weights + bias)))
