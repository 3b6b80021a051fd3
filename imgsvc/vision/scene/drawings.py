"""Is the image a drawing (clip art, a cartoon, a logo) or a painting rather than a photo?

The detectors and the classifier were trained on photos: on a cartoon fish the classifier says
"mouse" and nothing else is sure, and "a photo of ..." would be wrong before the noun. Two logistic
regressions over the classifier's own pooled features say when it is not a photo
(``data/drawing_head.txt``, ``data/painting_head.txt``), both trained by
``scripts/picture_heads.py`` on Debian packages' pictures, never on the development set: clip
art, cartoons and logos against photos; GCompris's public-domain paintings against every other
picture. Each threshold comes from the script's grouped cross-validation.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import numpy as np

#: The head's probability from which an image is called a drawing. Cross-validated, 347 of 362
#: drawings scored over it and 3 of 283 photos (product shots on white, a retina scan); on the
#: tuning half the cartoon fish 1.0 and no photo over 0.6.
DRAWING_SCORE = 0.9
#: The same for a painting: high, since "a painting" said of a photo is a confident wrong noun. In
#: the head's grouped cross-validation 18 of 21 paintings scored over it, and 1 of 1514 other
#: pictures (a filtered tutorial image); on the tuning half no photo over 0.2.
PAINTING_SCORE = 0.95


@cache
def head(name: str) -> tuple[float, np.ndarray]:
    """(bias, 1280 weights) of the logistic regression in ``data/{name}_head.txt``."""
    text = resources.files("imgsvc.vision").joinpath(f"data/{name}_head.txt").read_text("utf-8")
    values = [float(line) for line in text.splitlines() if line and not line.startswith("#")]
    return values[0], np.asarray(values[1:], dtype=np.float64)


def drawing_head() -> tuple[float, np.ndarray]:
    return head("drawing")


def scores(name: str, features: np.ndarray) -> np.ndarray:
    """The probability, per image (a row of pooled features, N x 1280), that the named head says yes."""
    bias, weights = head(name)
    return 1.0 / (1.0 + np.exp(-(features.astype(np.float64) @ weights + bias)))


def drawing_scores(features: np.ndarray) -> np.ndarray:
    """The probability that each image is a drawing."""
    return scores("drawing", features)


def painting_scores(features: np.ndarray) -> np.ndarray:
    """The probability that each image is a painting."""
    return scores("painting", features)
