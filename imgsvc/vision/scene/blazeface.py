"""Face detector: MediaPipe BlazeFace (back-camera / full-range, 256x256), from a TF.js graph model.

Weights: ``blazeface.json`` + ``.bin`` of npm ``@vladmandic/human@3.3.6`` (MIT). The graph gives raw
per-anchor outputs: a logit and 16 regressors (box centre offset, width, height, then six
landmarks we do not use), for 512 anchors on a stride-16 grid and 384 on a stride-32 grid. The
anchors, decoding and NMS are here. It was exported for batch 1; its only batch-dependent ops are
four reshapes, which we open to any batch (:meth:`Graph.unbatch_reshapes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from imgsvc.vision.base import Detection, Detector, model_file
from imgsvc.vision.graphs.compiler import Program, compile_graph
from imgsvc.vision.graphs.images import image_batch, letterboxed, resized
from imgsvc.vision.graphs.tfjs import load_tfjs
from imgsvc.vision.scene.boxes import nms, normalised_box

MODEL_FILE = "human/blazeface.json"
INPUT_NODE = "input"
#: Logits for the stride-16 and stride-32 anchors, then their regressors (the graph's signature).
OUTPUTS = ("Identity", "Identity_1", "Identity_2", "Identity_3")
INPUT_SIZE = 256
#: (stride, anchors per cell): 16x16 cells x 2 + 8x8 cells x 6 = 896 anchors, centred in each cell.
ANCHOR_LAYOUT = ((16, 2), (32, 6))
#: Face probability from which we report a face (human's default for this model). On scikit-image
#: photos: astronaut 0.88, camera 0.77, but also chelsea's (cat) face 0.67, so the describer
#: should count only faces inside a person box.
SCORE_THRESHOLD = 0.6
#: Overlap above which a weaker box is the same face (human's default for this model).
NMS_IOU = 0.3


def face_anchors() -> torch.Tensor:
    """``(896, 2)`` anchor centres ``(x, y)`` in input pixels, in the order of the graph's outputs."""
    centres = []
    for stride, per_cell in ANCHOR_LAYOUT:
        cells = INPUT_SIZE // stride
        positions = (torch.arange(cells, dtype=torch.float32) + 0.5) * stride
        y, x = torch.meshgrid(positions, positions, indexing="ij")
        grid = torch.stack([x, y], dim=-1)[:, :, None, :].expand(cells, cells, per_cell, 2)
        centres.append(grid.reshape(-1, 2))
    return torch.cat(centres)


class FaceDetector(Detector):
    """``detect(images)`` -> for each image, its faces (label ``face``), best first."""

    name = "blazeface-back"

    def __init__(self, program: Program, threshold: float = SCORE_THRESHOLD) -> None:
        self.program = program
        self.threshold = threshold
        self.anchors = face_anchors()

    @classmethod
    def load(cls, models_dir: Path) -> FaceDetector:
        path = model_file(models_dir, MODEL_FILE, "face detector")
        model_file(models_dir, "human/blazeface.bin", "face detector")
        graph = load_tfjs(path)
        graph.unbatch_reshapes()
        return cls(compile_graph(graph, [INPUT_NODE], list(OUTPUTS)))

    def raw(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per anchor, for a batch: logits ``(N, 896)`` and regressors ``(N, 896, 16)``."""
        batch = image_batch([resized(letterboxed(image), INPUT_SIZE) for image in images]) / 127.5 - 1
        with torch.inference_mode():
            logits_16, logits_32, boxes_16, boxes_32 = self.program(batch)
        return torch.cat([logits_16, logits_32], 1)[..., 0], torch.cat([boxes_16, boxes_32], 1)

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        if not images:
            return []
        logits, regressors = self.raw(images)
        results = []
        for image, image_logits, image_regressors in zip(images, logits, regressors, strict=True):
            scores = torch.sigmoid(image_logits)
            keep = scores >= self.threshold
            scores, found, anchors = scores[keep], image_regressors[keep], self.anchors[keep]
            centre = anchors + found[:, :2]
            half = found[:, 2:4] / 2
            boxes = torch.cat([centre - half, centre + half], dim=1)
            # Input pixels -> pixels of the letterboxed square -> normalised to the photo.
            side = max(image.size) / INPUT_SIZE
            results.append(
                [
                    Detection(
                        "face",
                        float(scores[i]),
                        normalised_box(*(boxes[i] * side).tolist(), image.width, image.height),
                    )
                    for i in nms(boxes, scores, NMS_IOU).tolist()
                ]
            )
        return results
