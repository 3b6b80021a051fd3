"""What a photo with no subject is of: the sky above it, grass filling it, from colour and texture.

Where the detectors find nobody and nothing and the classifier is sure of nothing, the sentence
used to give up ("no clearly recognisable subject"). Many such photos are of an open view or a
surface: a stormy sky over a road, a lawn, a field of grass under the sky. ImageNet has no "sky" and
no "grass" class, but they are plain in the pixels: sky is smooth and blue across the top of the
frame and ends lower down; a lawn or foliage fills the frame with textured green. The classifier
adds one thing colour cannot: its grain and field classes (ear, hay, corn, rapeseed), which it gives
grass of any colour, dry dune grass included. The sky is said plainly; grass, which a green wall of
leaves also looks like, only as a guess.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from imgsvc.vision.base import Tag

SKY = "sky"
GRASS = "grass"
#: Grass or leaves: a frame filled with textured green.
GREENERY = "greenery"

#: Side of the thumbnail the measures are taken on.
THUMB = 128
#: A sky pixel: blue (hue in degrees), some colour, not dark, and smooth (grey levels change by
#: less than SMOOTH per pixel): clouds and haze are smooth, blue clothing and signs have edges.
SKY_HUES = (180.0, 250.0)
SKY_SATURATION = 0.12
SKY_VALUE = 0.35
SMOOTH = 0.03
#: The sky covers this share of the top third and less than SKY_BELOW of the bottom third (the
#: ground below it): an all-blue frame (a wallpaper, a splash of water) is no sky.
SKY_SHARE = 0.5
SKY_BELOW = 0.25
#: A green pixel; the frame is greenery when GREEN_SHARE of it is green and textured: the mean
#: grey-level change over the green pixels is at least TEXTURE (blades and leaves; a flat green wall
#: or a smooth wallpaper has less). On the tuning half a lawn is 1.0 green at 0.06; a circuit board
#: 0.72 (its chips and solder are not green).
GREEN_HUES = (60.0, 170.0)
GREEN_SATURATION = 0.2
GREEN_VALUE = 0.15
GREEN_SHARE = 0.8
TEXTURE = 0.04
#: Straw: dry grass, hay, ripe grain.
STRAW_HUES = (20.0, 60.0)
STRAW_SATURATION = 0.25
STRAW_VALUE = 0.35
#: ImageNet's field classes: their summed probability from FIELD_MASS, with green or straw covering
#: FIELD_SHARE of the lower half, is grass (dune grass: ear 0.22, hay 0.03, corn 0.02; 0.95 straw).
FIELD_CLASSES = frozenset({"ear", "hay", "corn", "rapeseed"})
FIELD_MASS = 0.15
FIELD_SHARE = 0.5


def _within(values: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    return (values >= bounds[0]) & (values <= bounds[1])


def surfaces(image: Image.Image, tags: Sequence[Tag]) -> tuple[str, ...]:
    """The surfaces the photo shows (:data:`SKY`, :data:`GRASS`, :data:`GREENERY`), ground first.

    ``tags``: the classifier's list on the whole photo (the longer the better: the field classes
    are rarely its first).
    """
    thumb = image.convert("RGB")
    thumb.thumbnail((THUMB, THUMB))
    hsv = np.asarray(thumb.convert("HSV"), dtype=np.float32) / 255.0
    hue, sat, val = hsv[..., 0] * 360.0, hsv[..., 1], hsv[..., 2]
    grey = np.asarray(thumb.convert("L"), dtype=np.float32) / 255.0
    dy, dx = np.gradient(grey)
    change = np.hypot(dx, dy)
    rows = grey.shape[0]
    third = max(rows // 3, 1)

    sky = _within(hue, SKY_HUES) & (sat >= SKY_SATURATION) & (val >= SKY_VALUE) & (change < SMOOTH)
    green = _within(hue, GREEN_HUES) & (sat >= GREEN_SATURATION) & (val >= GREEN_VALUE)
    straw = _within(hue, STRAW_HUES) & (sat >= STRAW_SATURATION) & (val >= STRAW_VALUE)
    lower = slice(rows // 2, rows)

    found: list[str] = []
    field = sum(t.score for t in tags if t.label in FIELD_CLASSES)
    if green.mean() >= GREEN_SHARE and float(change[green].mean()) >= TEXTURE:
        found.append(GREENERY)
    elif field >= FIELD_MASS and (green | straw)[lower].mean() >= FIELD_SHARE:
        found.append(GRASS)
    if sky[:third].mean() >= SKY_SHARE and sky[rows - third :].mean() < SKY_BELOW:
        found.append(SKY)
    return tuple(found)
