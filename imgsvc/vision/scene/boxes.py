"""Box arithmetic every detector shares: IoU, non-maximum suppression, containment, normalising.

Boxes here are ``(N, 4)`` float tensors of corners ``x1, y1, x2, y2`` in any one unit; detectors
turn their own encodings into that form first and into :class:`~imgsvc.vision.base.Box` last.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from imgsvc.vision.base import Box, Detection


def area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def intersection(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(len(a), len(b))`` areas of overlap."""
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    size = (bottom_right - top_left).clamp(min=0)
    return size[..., 0] * size[..., 1]


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(len(a), len(b))`` intersection over union; 0 where both boxes are empty."""
    inter = intersection(a, b)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes, highest score first.

    A box is dropped when its IoU with an already kept, higher-scoring box is *above* the
    threshold (TensorFlow's and torchvision's convention).
    """
    order = torch.argsort(scores, descending=True, stable=True)
    if order.numel() == 0:
        return order
    overlaps = iou(boxes[order], boxes[order])
    keep: list[int] = []
    suppressed = torch.zeros(order.numel(), dtype=torch.bool)
    for i in range(order.numel()):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlaps[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS within each class only (a person on a horse keeps both boxes): shift each class apart."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long)
    offset = classes.to(boxes.dtype)[:, None] * (boxes.max() - boxes.min() + 1)
    return nms(boxes + offset, scores, iou_threshold)


def drop_contained(detections: Sequence[Detection], fraction: float) -> list[Detection]:
    """Drop each detection whose box lies at least ``fraction`` inside a higher-scoring one of the
    same label: an SSD fires on a person and again on their torso, which NMS keeps (low IoU)."""
    ranked = sorted(detections, key=lambda d: d.score, reverse=True)
    kept: list[Detection] = []
    for detection in ranked:
        own = detection.box.area
        inside = any(
            other.label == detection.label and own > 0 and overlap(detection.box, other.box) >= fraction * own
            for other in kept
        )
        if not inside:
            kept.append(detection)
    return kept


def overlap(a: Box, b: Box) -> float:
    """Area of the intersection of two boxes."""
    return max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1)) * max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))


def normalised_box(x1: float, y1: float, x2: float, y2: float, width: float, height: float) -> Box:
    """A box in pixels of a ``width`` x ``height`` image as a :class:`Box` in 0-1, clipped to the image."""

    def clip(value: float) -> float:
        return min(1.0, max(0.0, value))

    return Box(clip(x1 / width), clip(y1 / height), clip(x2 / width), clip(y2 / height))
