"""Where a model runs: one place that turns DEVICE into a torch device, for every backend."""

from __future__ import annotations

import torch

from imgsvc.vision.base import ModelLoadError


def resolve_device(device: str) -> torch.device:
    """``auto`` means the GPU when there is one; an unusable explicit device fails at load, not per job."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"unknown device {device!r}: use auto, cpu or cuda[:N]") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available")
    return resolved
