"""Facial expression classifier (mini-Xception, FER-2013's 7 classes), from a TF.js graph model.

Weights: ``emotion.json`` + ``.bin`` of npm ``@vladmandic/human@3.3.6`` (MIT), originally from
oarriaga/face_classification. Input: 64x64 grey face crops; the graph takes any batch, so all the
faces of a photo go through in one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from imgsvc.vision.base import Box, EmotionModel, model_file
from imgsvc.vision.graphs.compiler import Program, compile_graph
from imgsvc.vision.graphs.images import image_batch, resized
from imgsvc.vision.graphs.tfjs import load_tfjs

MODEL_FILE = "human/emotion.json"
INPUT_NODE, OUTPUT_NODE = "input_1", "Identity"
#: The model's output order.
EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_SIZE = 64
#: The crop is the face box enlarged this much around its centre (human's setting for this model:
#: the detector's box is tight, the classifier was trained on looser crops with some hair and chin).
CROP_SCALE = 1.2
#: ITU-R BT.601 luma weights: how human turns the crop grey for this model (FER-2013 is grey).
GREY = (0.2989, 0.5870, 0.1140)


def crop_box(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """The pixel region ``(left, top, right, bottom)`` to classify for a face ``box`` (may leave the
    photo; Pillow fills the outside black)."""
    cx, cy = (box.x1 + box.x2) / 2 * width, (box.y1 + box.y2) / 2 * height
    half_w, half_h = (box.x2 - box.x1) * width * CROP_SCALE / 2, (box.y2 - box.y1) * height * CROP_SCALE / 2
    return round(cx - half_w), round(cy - half_h), round(cx + half_w), round(cy + half_h)


def face_crops(image: Image.Image, boxes: Sequence[Box]) -> list[Image.Image]:
    """The 64x64 RGB crops the classifier sees, one per box."""
    image = image.convert("RGB")
    return [resized(image.crop(crop_box(box, image.width, image.height)), INPUT_SIZE) for box in boxes]


class EmotionClassifier(EmotionModel):
    """``classify(image, boxes)`` -> for each face box, its most likely expression and probability."""

    name = "emotion-mini-xception"

    def __init__(self, program: Program) -> None:
        self.program = program

    @classmethod
    def load(cls, models_dir: Path) -> EmotionClassifier:
        path = model_file(models_dir, MODEL_FILE, "emotion classifier")
        model_file(models_dir, "human/emotion.bin", "emotion classifier")
        return cls(compile_graph(load_tfjs(path), [INPUT_NODE], [OUTPUT_NODE]))

    def probabilities(self, crops: Sequence[Image.Image]) -> torch.Tensor:
        """``(N, 7)`` softmax over :data:`EMOTIONS` for 64x64 RGB crops."""
        rgb = image_batch(crops) / 255
        grey = (rgb * torch.tensor(GREY)).sum(-1, keepdim=True)
        with torch.inference_mode():
            (probabilities,) = self.program((grey - 0.5) * 2)
        return probabilities

    def classify(self, image: Image.Image, boxes: Sequence[Box]) -> list[tuple[str, float]]:
        if not boxes:
            return []
        best, index = self.probabilities(face_crops(image, boxes)).max(dim=1)
        return [(EMOTIONS[i], float(p)) for i, p in zip(index.tolist(), best.tolist(), strict=True)]
