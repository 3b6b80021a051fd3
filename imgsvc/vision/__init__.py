"""The model side: pick and load the describer named by VISION_MODEL.

``auto`` (the default) runs the transformers captioner when its weights are on this
machine, and otherwise the built-in offline scene describer, saying so loudly in the log.
An explicit value is obeyed or fails: no silent fallback. ``builtin`` is the scene describer;
``builtin:efficientnet-lite0`` / ``-lite2`` are the classifier-only describers it grew from.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from imgsvc.vision.base import Describer, Description, ModelLoadError, Tag, TextLine

if TYPE_CHECKING:
    from imgsvc.config import Settings

__all__ = ["Describer", "Description", "ModelLoadError", "Tag", "TextLine", "load_describer", "resolve_model"]

log = logging.getLogger("imgsvc.vision")

BUILTIN_PREFIX = "builtin:"
DEFAULT_BUILTIN = "builtin:scene"


def resolve_model(settings: Settings) -> str:
    """Turn VISION_MODEL (maybe ``auto``) into the concrete model spec to load."""
    spec = settings.vision_model.strip()
    if spec == "builtin":
        return DEFAULT_BUILTIN
    if spec != "auto":
        return spec
    from imgsvc.vision.captioners.hub import weights_available

    if weights_available(settings.caption_model):
        return settings.caption_model
    log.warning(
        "VISION_MODEL=auto: no local weights for the captioner %r (Hugging Face cache or directory); "
        "using the built-in offline scene describer %s (detectors, classifier, OCR). Run "
        "`imgsvc download-model` where the Hub is reachable, or set CAPTION_MODEL to a local "
        "directory, to use the captioner.",
        settings.caption_model,
        DEFAULT_BUILTIN,
    )
    return DEFAULT_BUILTIN


def load_describer(settings: Settings) -> Describer:
    """Load once, at start-up; raises :class:`ModelLoadError` with a message a person can act on."""
    _configure_torch(settings)
    spec = resolve_model(settings)
    if spec == DEFAULT_BUILTIN:
        from imgsvc.vision.scene.describer import SceneDescriber

        return SceneDescriber.load(settings.models_dir, ocr=settings.ocr, device=settings.device)
    if spec.startswith(BUILTIN_PREFIX):
        from imgsvc.vision.classifier.describer import BuiltinDescriber

        return BuiltinDescriber.load(
            spec.removeprefix(BUILTIN_PREFIX), ocr=settings.ocr, device=settings.device
        )
    from imgsvc.vision.captioners.captioner import TransformersCaptioner

    return TransformersCaptioner.load(
        spec,
        device=settings.device,
        max_new_tokens=settings.max_new_tokens,
        dtype=settings.dtype,
        quantize=settings.quantize or None,
    )


def _configure_torch(settings: Settings) -> None:
    """Threads matched to the cores this worker should use; oversubscription halves throughput."""
    import os

    import torch

    threads = settings.torch_threads or max(1, (os.cpu_count() or 1) // max(1, settings.worker_count))
    torch.set_num_threads(threads)
