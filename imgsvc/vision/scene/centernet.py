"""Object detector: CenterNet-MobileNetV3 over the 80 COCO classes, from a TF.js graph model.

Weights: ``centernet.json`` + ``centernet.bin`` of npm ``@vladmandic/human@3.3.6`` (MIT), float16.
The graph ends in its own decoder (peak picking, top 100, boxes) written for batch 1; we stop at
the two heads it decodes from, the class heat map ``tower_0/keypoints`` (sigmoid, stride 4) and the
box sizes ``tower_0/wh``, and decode them here the same way for a whole batch at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

import torch
from PIL import Image

from imgsvc.vision.base import Detection, Detector, model_file, packaged_labels
from imgsvc.vision.graphs.compiler import Program, compile_graph
from imgsvc.vision.graphs.images import image_batch, letterboxed, resized
from imgsvc.vision.graphs.tfjs import load_tfjs
from imgsvc.vision.scene.boxes import batched_nms, normalised_box

MODEL_FILE = "human/centernet.json"
INPUT_NODE = "tower_0/images"
HEATMAP, SIZES = "tower_0/keypoints", "tower_0/wh"
#: The graph's input: 512x512 RGB, values 0-255, no normalisation. Photos are letterboxed into it
#: (padded to a square, not squeezed): on scikit-image's photos that turns chelsea's "dog 0.47"
#: into "cat 0.47", lifts motorcycle 0.50 -> 0.71 and horse 0.35 -> 0.47, drops the rocket's
#: "clock", and finds the people of a two-astronaut composite that squeezing hid.
INPUT_SIZE = 512
#: Output stride of the heads (``tower_0/mul_3/y``..``mul_6/y`` in the graph's own decoder).
STRIDE = 4
#: Peaks kept before thresholding (``tower_0/TopKV2/k``).
TOP_K = 100
#: Lowest score we report. From the hand check on scikit-image photos: 0.3 keeps coffee cup 0.47,
#: motorcycle 0.49, horse 0.38, person ~0.6; at 0.2 junk appears (moon "kite" 0.40 was above even
#: that, so the describer must still weigh these against the classifier).
SCORE_THRESHOLD = 0.3
#: Per-class scores from which a box is reported, where the tuning half of the development set
#: (``python -m bench quality --set tuning``) and scikit-image's photos showed the default wrong.
#: Set by listing every CenterNet box from 0.12 on those photos with the classifier's verdict on its
#: crop: a box below SCORE_THRESHOLD is named only where the crop agrees (the scene describer's
#: rule), so a class goes lower only where the crop-agreeing boxes there were all right.
#: ``sports ball``: the real balls' boxes scored 0.20-0.45 (the footballer's ball, the round sweets),
#: the wrong ones with an agreeing crop 0.13 (a cartoon fish) and 0.17 (a speck in a stadium's stands).
#: Not lowered: ``motorcycle`` (crop-agreeing 0.12-0.17 boxes on parts of one motorbike would make
#: "three motorcycles"), ``bird`` (0.14 on a water drop), ``bottle`` (0.12-0.14 on a helmet, a shop).
#: Kite, bicycle, book and dining table: no box between 0.12 and 0.3 on these photos that a crop
#: agreed with, so nothing to tune on (a dining table is confirmed by the people at it instead).
CLASS_THRESHOLDS = {"sports ball": 0.2}
#: Overlap above which a weaker box of the same class is the same object (0.4 worked in the hand check).
NMS_IOU = 0.4


def class_threshold(label: str) -> float:
    """The lowest score at which a box of this COCO class is reported."""
    return min(SCORE_THRESHOLD, CLASS_THRESHOLDS.get(label, SCORE_THRESHOLD))


@cache
def coco_labels() -> list[str]:
    """The 80 COCO class names in the model's output order (``person``, ``bicycle``, ...)."""
    return packaged_labels("coco_labels.txt", 80)


def decode(
    heatmap: torch.Tensor, sizes: torch.Tensor, k: int = TOP_K, threshold: float = 0.0
) -> list[torch.Tensor]:
    """CenterNet decoding, as the graph's tail does it, for a batch: its top ``k`` peaks, less those
    scoring under ``threshold``.

    ``heatmap`` (N, H, W, C) class probabilities, ``sizes`` (N, H, W, 4) distances from the centre
    to the left, top, right and bottom edges in input pixels. Returns per image an (M, 6) tensor,
    M <= k: x1, y1, x2, y2 (input pixels), score, class index, best first.

    Only cells at or above ``threshold`` are tested for being a peak (a few hundred of the 1.3 M
    cells at the detector's threshold), rather than max-pooling and ranking the whole heat map:
    that took a quarter of the detector's time, for the same peaks.
    """
    _batch, height, width, _classes = heatmap.shape
    results = []
    for heat, edges in zip(heatmap, sizes, strict=True):
        y, x, c = torch.nonzero(heat >= threshold, as_tuple=True)
        scores = heat[y, x, c]
        # A peak is a cell equal to the max of its 3x3 neighbourhood (the graph's MaxPool + Equal);
        # clamping at the borders only repeats cells that are in the neighbourhood anyway.
        peak = torch.ones_like(scores, dtype=torch.bool)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy or dx:
                    ny, nx = (y + dy).clamp(0, height - 1), (x + dx).clamp(0, width - 1)
                    peak &= scores >= heat[ny, nx, c]
        y, x, c, scores = y[peak], x[peak], c[peak], scores[peak]
        scores, order = torch.topk(scores, min(k, len(scores)))
        y, x, c = y[order], x[order], c[order]
        row, col = (y * STRIDE).float(), (x * STRIDE).float()
        box = edges[y, x]
        results.append(
            torch.stack(
                [col - box[:, 0], row - box[:, 1], col + box[:, 2], row + box[:, 3], scores, c.float()],
                dim=-1,
            )
        )
    return results


class ObjectDetector(Detector):
    """``detect(images)`` -> for each image, COCO objects (``person``, ``cup``, ``cat``...), best first."""

    name = "centernet-mobilenet-v3"

    def __init__(self, program: Program, threshold: float = SCORE_THRESHOLD) -> None:
        self.program = program
        self.threshold = threshold
        self.labels = coco_labels()
        #: Each class's lowest reported score: ``threshold``, or CLASS_THRESHOLDS' where that is lower.
        self.thresholds = torch.tensor(
            [min(threshold, CLASS_THRESHOLDS.get(label, threshold)) for label in self.labels]
        )

    @classmethod
    def load(cls, models_dir: Path) -> ObjectDetector:
        path = model_file(models_dir, MODEL_FILE, "object detector")
        model_file(models_dir, "human/centernet.bin", "object detector")
        return cls(compile_graph(load_tfjs(path), [INPUT_NODE], [HEATMAP, SIZES]))

    def raw(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """The heads for a batch: heat map ``(N, 128, 128, 80)`` and edge distances ``(N, 128, 128, 4)``."""
        batch = image_batch([resized(letterboxed(image), INPUT_SIZE) for image in images])
        with torch.inference_mode():
            heatmap, sizes = self.program(batch)
        return heatmap, sizes

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        # One photo at a time: on CPU a batch of 512x512 inputs only adds memory traffic (a batch
        # of six cost 1.4x per photo what six single calls did, bench/results/2026-12-06-backends.txt).
        return [self.scan(image)[0] for image in images]

    def scan(self, image: Image.Image) -> tuple[list[Detection], float]:
        """One photo's objects, and the strongest "person" score anywhere in its heat map: a hint,
        below any box's threshold, of whether a person detector could find someone there."""
        heatmap, sizes = self.raw([image])
        (found,) = decode(heatmap, sizes, threshold=float(self.thresholds.min()))
        found = found[found[:, 4] >= self.thresholds[found[:, 5].long()]]
        keep = batched_nms(found[:, :4], found[:, 4], found[:, 5].long(), NMS_IOU)
        # Input pixels -> pixels of the letterboxed square (= the photo's) -> normalised.
        to_photo = max(image.size) / INPUT_SIZE
        detections = [
            Detection(
                self.labels[int(found[i, 5])],
                float(found[i, 4]),
                normalised_box(*(found[i, :4] * to_photo).tolist(), image.width, image.height),
            )
            for i in keep.tolist()
        ]
        return detections, float(heatmap[0, :, :, self.labels.index("person")].max())
